"""How good is a representation? k-NN and linear probes on frozen features, per class and shot group.

* k-nearest neighbours (Wu et al. 2018, "InstDisc"): cosine similarity to every training
  feature, the ``k`` most similar vote for their class with weight ``exp(sim / T)``::

      score_c(x) = sum_{j in topk(x)} exp(cos(f(x), f_j) / T) [y_j = c]

  The normalised scores are class probabilities; their log is passed to ``summarize`` as logits.
* linear probe: one linear layer trained with cross-entropy on the frozen, precomputed (and by
  default standardised) features of the training set (mini-batch SGD with momentum, cosine rate),
  evaluated on the balanced test set. ``balanced=True`` weights the loss by inverse class frequency,
  the stand-in for a probe trained on balanced data when only the long-tailed set is used.

The probes and the k-NN learn from the long-tailed training set, or from another labelled set
(``probe_set``): Liu et al. (ICLR 2022, ``Liuhong99/Imbalanced-SSL`` ``cifar/main_lincls.py``) train
their probe on the full balanced CIFAR-10 training set, 100 epochs, batch 256, lr 30, momentum 0.9,
no weight decay, x0.1 at epochs 60 and 80, on raw (not standardised) features
(``schedule="step"``, ``standardize=False``).

Both report ``longtail.metrics.summarize`` (top-1, per class, many/medium/few from the training
counts). Features come from ``backbone`` in eval mode on un-augmented images, except, with
``probe_augment``, the probes' training features: ``main_lincls.py`` (commit 9783c43, lines 260-267
and 350) trains its probe on freshly augmented images every epoch, ``RandomResizedCrop(32, scale=(0.8, 1),
ratio=(3/4, 4/3), bicubic)`` and ``RandomHorizontalFlip()``, through the frozen model in eval mode (BatchNorm
statistics untouched). Here each probe epoch draws that crop (``PROBE_CROP_MIN_SCALE``; bilinear, or with
``probe_interpolation="bicubic"`` PIL's bicubic on a whole-pixel box as theirs, see
``longtail.ssl.augment.random_resized_crop``) and flip on the device from a generator seeded by
(seed, epoch), runs the backbone once over the probe set in eval mode under ``torch.no_grad``, and the
plain and class-balanced probes train on the same features at once. The k-NN and the test features stay
un-augmented. Their test images go through ``Resize(int(32 * 8 / 7), BICUBIC)`` (36 px) and
``CenterCrop(32)`` (lines 268-273); with ``probe_test_resize=36`` the test features of the k-NN and of
both probes are of images so resized (PIL's bicubic, ``longtail.ssl.augment.resize_center_crop``) and
centre-cropped back to their size (:func:`scored_features`), else of the images as they are. The k-NN's
training features stay those of the images as they are (main_lincls.py has no k-NN; the pre-training's
k-NN monitor on the validation split is unchanged too).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..counts import ClassCounts
from ..data.augment import eval_batches
from ..data.imageset import ImageSet
from ..devices import autocast_for
from ..loop import epoch_seed, extract_features
from ..metrics import summarize
from ..weights import class_weights
from .augment import random_resized_crop, resize_center_crop
from .tasks import rotate

#: the probe's crop with ``probe_augment``: ``RandomResizedCrop(32, scale=(0.8, 1.0))`` of main_lincls.py
PROBE_CROP_MIN_SCALE = 0.8
# Offset so the probe's augmentation stream never coincides with the pre-training loop's (seed, epoch) generator.
_PROBE_STREAM = 0x50524F4245  # "PROBE"


@torch.no_grad()
def knn_probabilities(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                      num_classes: int, *, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Weighted k-NN class probabilities (M, C) of each test row (see the module docstring)."""
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(train.device).long()
    k = min(k, train.shape[0])
    out = []
    for start in range(0, test_features.shape[0], chunk):
        test = F.normalize(test_features[start:start + chunk].float().to(train.device), dim=1)
        sim, idx = (test @ train.t()).topk(k, dim=1)  # (m, k)
        votes = torch.zeros(test.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, labels[idx], (sim / temperature).exp())
        out.append(votes / votes.sum(dim=1, keepdim=True))
    return torch.cat(out)


def _as_logits(probs: torch.Tensor) -> torch.Tensor:
    return probs.clamp_min(1e-12).log()


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 num_classes: int, *, balanced: bool = False, epochs: int = 100, lr: float = 0.1,
                 batch_size: int = 256, weight_decay: float = 0.0, seed: int = 0, schedule: str = "cosine",
                 standardize: bool = True,
                 epoch_features: Callable[[int], torch.Tensor] | None = None) -> torch.Tensor:
    """Train a linear classifier on frozen features; returns the test logits (M, C), float32.

    ``standardize``: features are standardised with the training mean and std (else used as they
    are). ``balanced`` weights the cross-entropy by ``1 / n_c`` (normalised to mean 1 over classes).
    ``schedule``: ``cosine`` (set every step) or ``step`` (x0.1 from 60 % and 80 % of the epochs, set
    every epoch: ``main_lincls.py``'s ``--schedule 60 80`` of 100 epochs).
    ``epoch_features``: when given, epoch ``e`` trains on ``epoch_features(e)`` (N, D), rows in the order of
    ``train_labels`` (e.g. :func:`augmented_features`), instead of ``train_features``; ``train_features`` then
    only gives the standardisation statistics and the width.
    """
    return linear_probes(train_features, train_labels, test_features, num_classes, balanced=(balanced,),
                         epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed,
                         schedule=schedule, standardize=standardize, epoch_features=epoch_features)[0]


def linear_probes(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                  num_classes: int, *, balanced: Sequence[bool] = (False, True), epochs: int = 100, lr: float = 0.1,
                  batch_size: int = 256, weight_decay: float = 0.0, seed: int = 0, schedule: str = "cosine",
                  standardize: bool = True,
                  epoch_features: Callable[[int], torch.Tensor] | None = None) -> list[torch.Tensor]:
    """:func:`linear_probe` for each entry of ``balanced``, trained side by side on the same batches: the test
    logits of each. Every probe gets what its own :func:`linear_probe` call would (the same initial weights,
    batch order and steps), so features that cost a backbone pass per epoch (``epoch_features``) are made
    once for all of them."""
    if schedule not in ("cosine", "step"):
        raise ValueError(f"schedule must be cosine or step, got {schedule!r}")
    dev = train_features.device
    mean, std = train_features.mean(dim=0), train_features.std(dim=0).clamp_min(1e-6)
    if not standardize:
        mean, std = torch.zeros_like(mean), torch.ones_like(std)
    x = (train_features - mean) / std
    y = train_labels.to(dev).long()
    n = x.shape[0]
    heads: list[tuple[nn.Linear, torch.optim.SGD, Any, torch.Tensor | None]] = []
    for is_balanced in balanced:
        weight = None
        if is_balanced:
            counts = ClassCounts.from_labels(y, num_classes)
            inverse = cast(torch.Tensor, class_weights("inverse", counts))  # not "none"
            weight = inverse.to(dev)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layer = nn.Linear(x.shape[1], num_classes).to(dev)
        opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
        steps_per_epoch = -(-n // batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
        heads.append((layer, opt, sched, weight))
    g = torch.Generator().manual_seed(seed)
    milestones = (round(0.6 * epochs), round(0.8 * epochs))  # 60 and 80 of 100 epochs
    with torch.enable_grad():
        for epoch in range(epochs):
            if schedule == "step":
                for _, opt, _, _ in heads:
                    for group in opt.param_groups:
                        group["lr"] = lr * 0.1 ** sum(epoch >= m for m in milestones)
            xe = x
            if epoch_features is not None:
                fresh = epoch_features(epoch).to(dev)
                if fresh.shape != x.shape:
                    raise ValueError(f"epoch_features({epoch}) has shape {tuple(fresh.shape)}, "
                                     f"the training features {tuple(x.shape)}")
                xe = (fresh - mean) / std
            order = torch.randperm(n, generator=g).to(dev)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                for layer, opt, sched, weight in heads:
                    loss = F.cross_entropy(layer(xe[idx]), y[idx], weight=weight)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if schedule == "cosine":
                        sched.step()
    with torch.no_grad():
        test = (test_features.to(dev) - mean) / std
        return [layer(test).float() for layer, _, _, _ in heads]


def probe_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The generator of probe epoch ``epoch``'s augmentation: a function of (seed, epoch) alone, a stream apart
    from the pre-training loop's ``longtail.loop.epoch_generator``; on ``device`` so the draws stay there."""
    g = torch.Generator(device=device)
    g.manual_seed(epoch_seed(seed, epoch) ^ _PROBE_STREAM)
    return g


def _images(data: ImageSet, what: str) -> torch.Tensor:
    images = getattr(data, "images", None)
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{what} need the images as a tensor (an ImageSet), got {type(data).__name__}")
    return images


def _eval_features(backbone: nn.Module, data: ImageSet, images: torch.Tensor,
                   transform: Callable[[torch.Tensor], torch.Tensor], device: torch.device, amp: str,
                   batch_size: int) -> torch.Tensor:
    """Backbone features (N, D) float32 of ``transform`` (a batch in [0, 1] -> the same) applied to ``images``
    batch by batch, then ``data``'s normalisation; the backbone in eval mode without gradients, its mode restored."""
    was_training = backbone.training
    backbone.eval()
    m = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = (transform(images[start:start + batch_size].to(device).float() / 255.0) - m) / s
            with autocast_for(device, amp):
                out.append(backbone(x).float())
    finally:
        backbone.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def augmented_features(backbone: nn.Module, data: ImageSet, generator: torch.Generator, device: torch.device,
                       amp: str = "auto", *, min_scale: float = PROBE_CROP_MIN_SCALE, interpolation: str = "bilinear",
                       batch_size: int = 512) -> torch.Tensor:
    """Backbone features (N, D) float32 of freshly augmented images of ``data``, in its own order.

    Each image gets a random resized crop (area ``U(min_scale, 1)``, aspect ``3/4..4/3``; ``interpolation``, see
    ``random_resized_crop``) back to its size and a coin-flip mirror, drawn on the device from ``generator`` batch
    by batch, then the set's normalisation. The backbone runs in eval mode (BatchNorm uses, and never updates, its
    running statistics; its mode is restored) without gradients. ``data`` must hold its images as a tensor
    (pre-training decodes image files once).
    """
    def crop(x: torch.Tensor) -> torch.Tensor:
        return random_resized_crop(x, generator, min_scale=min_scale, flip=True, interpolation=interpolation)
    return _eval_features(backbone, data, _images(data, "augmented probe features"), crop, device, amp, batch_size)


@torch.no_grad()
def scored_features(backbone: nn.Module, data: ImageSet, device: torch.device, amp: str = "auto", *, resize: int = 0,
                    batch_size: int = 512) -> torch.Tensor:
    """Backbone features (N, D) float32 of the images of ``data`` as the probes and the k-NN score them.

    ``resize`` 0: ``longtail.loop.extract_features`` of the images as they are. ``resize`` N: every image resized
    so its shorter side is N (PIL's bicubic) and centre-cropped back to its size
    (:func:`longtail.ssl.augment.resize_center_crop`), then the set's normalisation: main_lincls.py's
    ``Resize(36, BICUBIC)``, ``CenterCrop(32)`` for N = 36 on CIFAR. The backbone runs in eval mode (its mode is
    restored) without gradients; ``data`` must then hold its images as a tensor.
    """
    if resize == 0:
        return extract_features(backbone, data, device, amp)
    return _eval_features(backbone, data, _images(data, "resized test features"),
                          lambda x: resize_center_crop(x, resize), device, amp, batch_size)


def representation_report(backbone: nn.Module, train: ImageSet, test: ImageSet, device: torch.device, *,
                          amp: str = "auto", knn_k: int = 200, knn_temperature: float = 0.1, probe_epochs: int = 100,
                          probe_lr: float = 0.1, probe_batch_size: int = 256, seed: int = 0,
                          probe_set: ImageSet | None = None, probe_schedule: str = "cosine",
                          probe_standardize: bool = True, probe_augment: bool = False,
                          probe_interpolation: str = "bilinear", probe_test_resize: int = 0) -> dict[str, Any]:
    """k-NN, linear probe and class-balanced linear probe on ``test``, each a ``summarize`` dict.

    The k-NN and the probes learn from ``probe_set`` (e.g. the balanced training set of the same
    source), by default from ``train``. Shot groups always come from the training counts of ``train``
    (the long-tailed set the features were learned on). ``probe_augment``: the two probes train on the
    features of freshly augmented images every epoch (:func:`augmented_features`, generators from
    :func:`probe_generator`), side by side so the backbone runs once per epoch, the crop resampled as
    ``probe_interpolation`` says; the k-NN and the test features stay un-augmented. ``probe_test_resize``: the
    test features of the k-NN and of both probes are of images resized to it and centre-cropped back
    (:func:`scored_features`; 0: the images as they are).
    """
    counts = train.class_counts()
    fit_set = train if probe_set is None else probe_set
    f_train = extract_features(backbone, fit_set, device, amp)
    f_test = scored_features(backbone, test, device, amp, resize=probe_test_resize)
    c = train.num_classes
    labels = test.labels.cpu()
    knn = knn_probabilities(f_train, fit_set.labels, f_test, c, k=knn_k, temperature=knn_temperature)
    out: dict[str, Any] = {"knn": summarize(_as_logits(knn).cpu(), labels, counts, class_names=test.class_names)}
    names = ("linear_probe", "linear_probe_balanced")
    if probe_augment:
        def epoch_features(epoch: int) -> torch.Tensor:
            return augmented_features(backbone, fit_set, probe_generator(seed, epoch, device), device, amp,
                                      interpolation=probe_interpolation)

        both = linear_probes(f_train, fit_set.labels, f_test, c, balanced=(False, True), epochs=probe_epochs,
                             lr=probe_lr, batch_size=probe_batch_size, seed=seed, schedule=probe_schedule,
                             standardize=probe_standardize, epoch_features=epoch_features)
        for name, logits in zip(names, both):
            out[name] = summarize(logits.cpu(), labels, counts, class_names=test.class_names)
        return out
    for name, balanced in zip(names, (False, True)):
        logits = linear_probe(f_train, fit_set.labels, f_test, c, balanced=balanced, epochs=probe_epochs, lr=probe_lr,
                              batch_size=probe_batch_size, seed=seed, schedule=probe_schedule,
                              standardize=probe_standardize)
        out[name] = summarize(logits.cpu(), labels, counts, class_names=test.class_names)
    return out


@torch.no_grad()
def rotation_accuracy(model: nn.Module, data: ImageSet, device: torch.device, amp: str = "auto",
                      batch_size: int = 256) -> float:
    """Pretext accuracy (%) of a rotation model: every image of ``data`` in all four rotations."""

    was_training = model.training
    model.eval()
    hits, total = 0, 0
    try:
        for b in eval_batches(data, batch_size):
            images, k, _ = rotate(b.images.to(device), None, "all")
            with autocast_for(device, amp):
                pred = model(images).argmax(dim=1)
            hits += int((pred == k).sum())
            total += k.numel()
    finally:
        model.train(was_training)
    return 100.0 * hits / max(total, 1)
