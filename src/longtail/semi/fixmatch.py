"""FixMatch consistency training for imbalanced data, as one more task for the one loop.

FixMatch (Sohn et al., NeurIPS 2020): for each unlabeled image a weakly augmented view gives a
pseudo-label ``q = argmax p(y | weak(u))`` when ``max p >= tau``; the model is trained to predict
``q`` on a strongly augmented view::

    loss = L_s(labeled) + lambda_u * mean_u( 1[max p_u >= tau] * CE(strong_logits_u, q_u) )

(the mean is over all ``mu * B`` unlabeled rows of the batch, masked ones count as 0, as in
FixMatch). ``L_s`` is any supervised loss of :mod:`longtail.losses`, with the per-class
(DRW/class-balanced) weights of the epoch.

On imbalanced data the confident pseudo-labels lean to the head classes; two documented fixes
(``alignment``):

* ``"da"``, distribution alignment (ReMixMatch, Berthelot et al. 2020; used by DARP/ABC
  baselines): ``p <- normalise(p * target / running_mean(p))`` with ``running_mean`` an EMA
  (``da_momentum``) of the batch-mean weak-view probabilities, started at ``target``; ``target`` the
  labeled class prior (``da_target="labeled"``) or uniform.
* ``"la"``, logit adjustment of the pseudo-label logits (after Menon et al. 2021):
  ``z <- z - la_tau * log(prior_labeled)`` before the softmax, which removes the labeled
  prior's bias from the pseudo-labels.

Augmentation runs on the device as batched tensor ops from the loop's generator: weak = the
run's crop + flip. Strong, by default (``strong=None``), the simplified :func:`strong_augment`: weak +
per-image brightness, contrast and saturation jitter, solarisation with probability 0.2, and one
cutout square. With ``strong`` an :class:`~longtail.data.augment.Augment` carrying RandAugment (the config's
``augment.randaugment``, ``augment.randaugment_magnitude``, ``augment.cutout``, ``augment.policy``), the
strong view is FixMatch's own: crop + flip, RandAugment (FixMatch: 2 ops at magnitudes drawn from 1..9,
kekmodel/FixMatch-pytorch ``RandAugmentMC``; USB: 3 ops, ``augment.policy=usb``) and Cutout
(:mod:`longtail.data.randaugment`). The simplified view stays the default so that the recipes written
before RandAugment existed keep their numbers; a FixMatch recipe that follows the papers sets
``augment.randaugment``.

Limits: the DA running mean is not saved in checkpoints (a resumed run starts it afresh), and a
two-pass optimizer (SAM) updates it twice per step.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..data.augment import Augment, normalize
from ..data.imageset import ImageSet
from ..data.pools import UnlabeledSet
from ..errors import LongtailError
from ..samplers import Sampler
from ..tasks import _Permutation
from ..weights import Weighting
from .task import cycled_draw

ALIGNMENTS = ("none", "da", "la")


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device, lo: float = 0.0,
             hi: float = 1.0) -> Tensor:
    # drawn on the generator's device so a seed gives the same views wherever the data lives
    return (lo + (hi - lo) * torch.rand(shape, generator=generator, device=generator.device)).to(device)


def strong_augment(images: Tensor, generator: torch.Generator, *, weak: Augment | None = None, jitter: float = 0.5,
                   solarize_p: float = 0.2, cutout: float = 0.5) -> Tensor:
    """Strong view of a uint8 (B, C, H, W) batch as float (B, C, H, W) in [0, 1] (not normalised).

    ``weak`` first (crop + flip), then brightness ``x * b``, contrast ``m + c (x - m)`` (``m`` the
    image mean), saturation ``g + s (x - g)`` (``g`` the grey image; 3 channels only), with
    ``b, c, s ~ U(1 - jitter, 1 + jitter)`` per image; solarisation ``x -> 1 - x`` above a
    threshold ``U(0.5, 1)`` with probability ``solarize_p``; one square of side
    ``cutout * min(H, W)`` at a uniform centre set to grey 0.5. Always the same draws in the same
    order, whatever the values.
    """
    if weak is not None:
        images = weak(images, generator)
    b, ch, h, w = images.shape
    dev = images.device
    x = images.float() / 255.0
    bright = _uniform((b, 1, 1, 1), generator, dev, 1 - jitter, 1 + jitter)
    contrast = _uniform((b, 1, 1, 1), generator, dev, 1 - jitter, 1 + jitter)
    sat = _uniform((b, 1, 1, 1), generator, dev, 1 - jitter, 1 + jitter)
    sol_on = _uniform((b, 1, 1, 1), generator, dev) < solarize_p
    sol_at = _uniform((b, 1, 1, 1), generator, dev, 0.5, 1.0)
    cy = _uniform((b,), generator, dev, 0, h).long()
    cx = _uniform((b,), generator, dev, 0, w).long()
    x = (x * bright).clamp(0, 1)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (m + contrast * (x - m)).clamp(0, 1)
    if ch == 3:
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (grey + sat * (x - grey)).clamp(0, 1)
    x = torch.where(sol_on & (x >= sol_at), 1.0 - x, x)
    half = int(cutout * min(h, w)) // 2
    if half > 0:
        rows = torch.arange(h, device=dev)[None, :, None]  # (1, H, 1)
        cols = torch.arange(w, device=dev)[None, None, :]  # (1, 1, W)
        box = ((rows - cy[:, None, None]).abs() < half) & ((cols - cx[:, None, None]).abs() < half)  # (B, H, W)
        x = torch.where(box[:, None], torch.full_like(x, 0.5), x)
    return x


def _normalize_float(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def pseudo_targets(weak_logits: Tensor, *, threshold: float, logit_shift: Tensor | None = None,
                   align: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Hard pseudo-labels from weak-view logits (B, C): ``(labels (B,), mask (B,) bool, probs (B, C))``.

    ``logit_shift`` (C,) is subtracted from the logits first (logit adjustment); ``align`` (C,)
    multiplies the probabilities, which are then renormalised (distribution alignment).
    ``mask``: the (adjusted, aligned) top probability is at least ``threshold``. No gradient.
    """
    z = weak_logits.detach().float()
    if logit_shift is not None:
        z = z - logit_shift.to(z.device)
    p = z.softmax(dim=1)
    if align is not None:
        p = p * align.to(p.device)
        p = p / p.sum(dim=1, keepdim=True)
    conf, labels = p.max(dim=1)
    return labels, conf >= threshold, p


def consistency_loss(strong_logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """``mean_i 1[mask_i] CE(strong_logits_i, labels_i)`` over all rows (masked rows count 0)."""
    ce = F.cross_entropy(strong_logits.float(), labels, reduction="none")
    return (ce * mask.float()).mean()


class FixMatchBatch(NamedTuple):
    """Normalised labeled images (weak view) with labels, and the unlabeled weak and strong views."""

    images: Tensor
    labels: Tensor
    index: Tensor  # type: ignore[assignment]  # a field named like tuple.index, which it hides
    u_weak: Tensor
    u_strong: Tensor


class FixMatchTask:
    """FixMatch over a labeled set and an unlabeled pool (``mu`` unlabeled per labeled row in a batch).

    An epoch is one pass of the sampler over the labeled set in batches of ``batch_size``; each
    batch gets ``mu`` times as many unlabeled rows, drawn as chained permutations of the pool.
    ``last_mask_rate`` holds the share of unlabeled rows above the threshold in the last batch.
    """

    multi_process = False  # it keeps per-process state (distribution alignment)
    image_files = False  # it draws its own batches from tensors
    graphable = False

    def __init__(
        self,
        train: ImageSet,
        unlabeled: UnlabeledSet,
        criterion: nn.Module,
        *,
        batch_size: int,
        mu: int = 7,
        threshold: float = 0.95,
        lambda_u: float = 1.0,
        alignment: str = "none",
        da_target: str = "labeled",
        da_momentum: float = 0.999,
        la_tau: float = 1.0,
        augment: Augment | None = None,
        strong: Augment | None = None,
        jitter: float = 0.5,
        cutout: float = 0.5,
        sampler: Sampler | None = None,
        weighting: Weighting | None = None,
        full_batches: bool = False,
    ) -> None:
        if alignment not in ALIGNMENTS:
            raise LongtailError(f"unknown FixMatch alignment {alignment!r}",
                                "use none, da (distribution alignment) or la (logit adjustment)")
        if da_target not in ("labeled", "uniform"):
            raise LongtailError(f"unknown distribution-alignment target {da_target!r}", "use labeled or uniform")
        if not 0.0 <= threshold <= 1.0 or mu < 1 or lambda_u < 0:
            raise LongtailError(f"FixMatch needs 0 <= threshold <= 1, mu >= 1, lambda_u >= 0; got {threshold}, {mu}, "
                                f"{lambda_u}", "FixMatch uses threshold 0.95, mu 7, lambda_u 1")
        if len(unlabeled) == 0:
            raise LongtailError("FixMatch needs unlabeled images but the pool is empty",
                                "use data.protocol=darp or give an unlabeled pool")
        if unlabeled.class_names != train.class_names or unlabeled.image_shape != train.image_shape:
            raise LongtailError("the unlabeled pool does not match the labeled data (classes or image shape)")
        self.train, self.unlabeled, self.criterion = train, unlabeled, criterion
        self.batch_size, self.mu, self.threshold, self.lambda_u = batch_size, int(mu), float(threshold), float(lambda_u)
        self.alignment, self.da_momentum, self.la_tau = alignment, float(da_momentum), float(la_tau)
        self.weak = augment if augment is not None else Augment()
        self.strong = strong  # None: the simplified strong_augment (jitter, cutout)
        self.jitter, self.cutout = jitter, cutout
        self.sampler = sampler if sampler is not None else _Permutation(len(train))
        self.weighting = weighting
        # every labeled batch full: the epoch's last batch is topped up from the head of a second draw of the
        # sampler (USB's labeled sampler draws an endless stream of full batches); False: the last batch is partial
        self.full_batches = bool(full_batches)
        self.class_weight: Tensor | None = None
        prior = train.class_counts().prior()  # (C,) labeled prior
        C = train.num_classes
        self.da_target = prior if da_target == "labeled" else torch.full((C,), 1.0 / C)
        self.running_mean = self.da_target.clone()  # EMA of weak-view probabilities (DA); starts aligned
        # log prior of an empty class is -inf: clamp so its logits are shifted by a large finite amount
        self.logit_shift = self.la_tau * prior.clamp_min(1e-12).log()
        self.last_mask_rate: Tensor | None = None

    def to(self, device: torch.device | str) -> "FixMatchTask":
        self.train, self.unlabeled = self.train.to(device), self.unlabeled.to(device)
        self.criterion = self.criterion.to(device)
        if hasattr(self.sampler, "to"):
            self.sampler = self.sampler.to(device)
        self.da_target, self.running_mean = self.da_target.to(device), self.running_mean.to(device)
        self.logit_shift = self.logit_shift.to(device)
        return self

    def on_epoch_start(self, epoch: int) -> None:
        w = self.weighting.weight_at(epoch) if self.weighting is not None else None
        self.class_weight = None if w is None else w.to(self.train.device)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train) // self.batch_size)

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[FixMatchBatch]:
        order = self.sampler.epoch_indices(generator).to(self.train.device)
        n_steps = -(-order.numel() // self.batch_size)
        while self.full_batches and order.numel() < n_steps * self.batch_size:
            more = self.sampler.epoch_indices(generator).to(self.train.device)
            order = torch.cat([order, more[:n_steps * self.batch_size - order.numel()]])
        u_rows = torch.arange(len(self.unlabeled), device=self.unlabeled.device)
        u_order = cycled_draw(u_rows, order.numel() * self.mu, generator)
        tr, un = self.train, self.unlabeled
        for s in range(n_steps):
            idx = order[s * self.batch_size:(s + 1) * self.batch_size]
            u_idx = u_order[s * self.batch_size * self.mu:(s * self.batch_size + idx.numel()) * self.mu]
            x = self.weak(tr.images[idx], generator)
            u = un.images[u_idx]
            u_weak = self.weak(u, generator)
            if self.strong is not None:  # crop + flip + RandAugment + Cutout, uint8
                u_strong = normalize(self.strong(u, generator), un.mean, un.std)
            else:
                u_strong = _normalize_float(strong_augment(u, generator, weak=self.weak, jitter=self.jitter,
                                                           cutout=self.cutout), un.mean, un.std)
            yield FixMatchBatch(normalize(x, tr.mean, tr.std), tr.labels[idx], idx,
                                normalize(u_weak, un.mean, un.std), u_strong)

    def loss(self, model: nn.Module, batch: FixMatchBatch) -> Tensor:
        b, bu = batch.images.shape[0], batch.u_weak.shape[0]
        # one forward pass over all views, as FixMatch does (BatchNorm sees labeled and unlabeled together)
        logits = model(torch.cat([batch.images, batch.u_weak, batch.u_strong])).float()
        logits_l, weak_l, strong_l = logits[:b], logits[b:b + bu], logits[b + bu:]
        sup = self.criterion(logits_l, batch.labels, weight=self.class_weight)
        align = shift = None
        if self.alignment == "da":
            with torch.no_grad():
                p = weak_l.detach().softmax(dim=1)
                if model.training:
                    self.running_mean = self.da_momentum * self.running_mean + (1 - self.da_momentum) * p.mean(0)
                align = self.da_target / self.running_mean
        elif self.alignment == "la":
            shift = self.logit_shift
        labels, mask, _ = pseudo_targets(weak_l, threshold=self.threshold, logit_shift=shift, align=align)
        self.last_mask_rate = mask.float().mean().detach()
        return sup + self.lambda_u * consistency_loss(strong_l, labels, mask)
