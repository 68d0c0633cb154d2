"""GLMC: Global and Local Mixture Consistency cumulative learning (Du, Yang, Jia, Nan, Chen & Yang, CVPR 2023).

What is followed: ynu-yangpeng/GLMC at commit 2c0261cc50c12483cba1c6be9659218f9d42676d (2023-07-18, the newest),
``GLMC-2023/Trainer.py`` (``Trainer.train``: the loss and its cumulative weight; ``update_weight``; ``SimSiamLoss``),
``GLMC-2023/utils/util.py`` (``GLMC_mixed``, ``rand_bbox``), ``GLMC-2023/main.py`` (the two loaders, argparse
defaults), ``GLMC-2023/model/ResNet_cifar.py`` (``ResNet_modify``; here :mod:`longtail.models.glmc`) and the
README's CIFAR commands. One step, with ``n_c`` the training count of class ``c``:

* a batch ``x`` (B images, labels ``y``) of the run's sampler (theirs: a shuffled pass) and a batch ``x'`` of
  *partners* (labels ``y'``) drawn with replacement, each image with weight ``n_c^-q``, ``q`` =
  ``glmc.resample_weighting`` (their ``--resample_weighting``; 0 draws every image alike); each batch is
  augmented twice (two views: ``x1, x2``, ``x'1, x'2``; crop + flip, the run's ``Augment``);
* one share ``lam ~ Beta(a, a)`` per step (``a`` = ``glmc.mix_alpha``) and two mixed views:
  the *global* one, mixup ``g = lam x1 + (1 - lam) x'1``, and the *local* one, CutMix ``l`` = ``x2`` with a box
  of ``x'2`` (the box of :func:`longtail.data.mix.cutmix_box` for ``lam``). Both take the soft label
  ``t = lam e_y + (1 - lam) e_y'`` with the *same* ``lam`` (theirs does not correct it to the box's area);
* the network (:class:`~longtail.models.glmc.GLMCClassifier`) gives for each view the standard head's logits,
  the re-balanced head's logits, ``z`` (projector) and ``p`` (predictor); the loss is ::

      L = alpha (CE(fc(g), t) + CE(fc(l), t)) + (1 - alpha) (CE(head(g), t_w) + CE(head(l), t_w))
          + contrast_weight * (-cos(p_g, sg(z_l)) - cos(p_l, sg(z_g)))

  with ``CE(z, t) = -mean_i sum_c t_ic log softmax(z_i)_c`` (a plain batch mean), ``t_w`` the soft label with
  each one-hot scaled by the class weight ``w_c = n_c^-k / sum_j n_j^-k * C`` (``k`` =
  ``glmc.label_weighting``, their ``--label_weighting``), ``sg`` stop-gradient, ``cos`` averaged over the
  batch (their ``SimSiamLoss``, "simplified"), ``contrast_weight`` = ``glmc.contrast_weight``;
* the cumulative weight: ``alpha = 1 - (epoch / epochs)^2`` with ``epoch`` 0-based (:func:`cumulative_alpha`),
  so the re-balanced head's share ``(epoch / epochs)^2`` grows from 0 to ``((E - 1) / E)^2`` (in epoch 0 the
  re-balanced head gets no gradient at all, as theirs);
* evaluated: the re-balanced head (their ``forward(train=False)`` returns ``fc_cb``): the model's ``forward``.

Deviations: the randomness (one ``torch.Generator`` per epoch, as every longtail task, for NumPy's and the
DataLoaders' global state); the partner batches are drawn by :class:`~longtail.samplers.ClassWeighted` (a
class with probability ``∝ n_c^(1-q)``, then an image of it uniformly: the distribution of their
``WeightedRandomSampler``, not its stream), one epoch's worth, so batch ``i`` meets partner batch ``i`` (theirs
restarts the partner loader if it runs out, which equal lengths never do); the box is drawn as
:func:`longtail.data.mix.cutmix_box` draws it, ``floor(H sqrt(1 - lam))`` high where theirs takes the ceiling
(a box at most one pixel smaller per side), and is pasted from the partners' second view as theirs; their
``--beta`` (0.5 in every command) is drawn in ``Trainer.train`` and never used (``GLMC_mixed`` keeps its default
``alpha=1``), so ``glmc.mix_alpha`` defaults to 1; the report is the last epoch's, theirs is the best epoch on
the test set. Their fix (commit a2c7d5e, 2023-05-23; README "Update 2023/5/23") drew each class's images of
the long-tailed subset without replacement (``np.random.choice(..., replace=False)``; before it, duplicates,
and the test set too was drawn with replacement): longtail's subsets never repeat an image, so their numbers
after the fix are the comparable ones.

The task composes with the run's sampler (the first batch), its augmentation (``augment.*`` apply to all four
views), ``optim.*`` (``optim.maxnorm`` caps the re-balanced head, as their
``utils/regularizers.py`` ``MaxNorm_via_PGD``, which their released ``Trainer`` never calls) and the model
settings; it refuses what it cannot keep (:func:`check_glmc`): its own re-weighting replaces
``train.weighting`` / ``train.drw_start``, its soft-label CE replaces ``loss.name``, its mixing replaces
``augment.mix``; no FixMatch, pseudo-labels, major feature weakening, frozen backbone, image files, several
processes (``multi_process``) or stacked seeds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .counts import ClassCounts
from .data.augment import Augment, iterate_batches
from .data.imageset import ImageSet
from .data.mix import cutmix_box, sample_beta
from .errors import LongtailError
from .samplers import ClassWeighted, Sampler
from .tasks import _Permutation

if TYPE_CHECKING:
    from .config import RunConfig

#: the outputs of one view: (standard head logits (B, C), re-balanced head logits (B, C), z (B, P), p (B, P))
Outputs = tuple[Tensor, Tensor, Tensor, Tensor]


class GLMCBatch(NamedTuple):
    """One GLMC step's inputs. ``lam`` (B,) holds the step's one share in every row (as ``MixedBatch``)."""

    images: Tensor  # (B, C, H, W) float: the global view, mixup of x1 with the partners' x'1
    cut: Tensor  # (B, C, H, W) float: the local view, x2 with a box of the partners' x'2
    labels: Tensor  # y (B,)
    labels_b: Tensor  # y' (B,): the partners' labels
    lam: Tensor  # (B,) float32, all equal: the weight of y in both views' soft labels
    index: Tensor  # type: ignore[assignment]  # (B,) rows of x in the training set


def cumulative_alpha(epoch: int, epochs: int) -> float:
    """GLMC's weight of the standard head's loss in epoch ``epoch`` (0-based) of ``epochs``: ``1 - (epoch/epochs)^2``;
    the re-balanced head's is ``1 - alpha``.

    >>> [cumulative_alpha(e, 4) for e in range(4)]
    [1.0, 0.9375, 0.75, 0.4375]
    """
    return 1.0 - (epoch / epochs) ** 2


def glmc_class_weights(counts: ClassCounts, power: float) -> Tensor:
    """``w_c = n_c^-power / sum_j n_j^-power * C`` as (C,) float32 (computed in float64): their ``update_weight``."""
    counts.require_nonempty(because=f"the GLMC label weight n_c^-{power:g} is infinite")
    w = counts.tensor(dtype=torch.float64) ** -power
    return (w / w.sum() * counts.num_classes).float()


def partner_sampler(labels: Tensor, num_classes: int, counts: ClassCounts, power: float,
                    num_samples: int | None = None) -> ClassWeighted:
    """Each image drawn with weight ``n_c^-power``, with replacement: class ``c`` with probability ``∝ n_c^(1-power)``
    (their ``WeightedRandomSampler`` over ``cls_weight[y]``, main.py)."""
    n = counts.tensor(dtype=torch.float64)
    probs = torch.where(n > 0, n.clamp_min(1) ** (1.0 - power), torch.zeros_like(n))
    return ClassWeighted(labels, num_classes, probs, num_samples=num_samples)


def soft_label_ce(logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: Tensor,
                  weight: Tensor | None = None) -> Tensor:
    """``-mean_i sum_c t_ic log softmax(logits_i)_c`` for ``t_i = lam w_{a_i} e_{a_i} + (1 - lam) w_{b_i} e_{b_i}``
    (``w`` = 1 without ``weight``): the batch mean, not divided by the weights (their loss). ``lam`` 0-dim or (B,)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    share = (lam.reshape(-1)[0] if lam.numel() else lam.new_ones(())).to(log_p.dtype)
    la = log_p.gather(1, labels_a[:, None]).squeeze(1)
    lb = log_p.gather(1, labels_b[:, None]).squeeze(1)
    if weight is not None:
        w = weight.to(device=log_p.device, dtype=log_p.dtype)
        la, lb = la * w[labels_a], lb * w[labels_b]
    return -(share * la + (1 - share) * lb).mean()


def consistency(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's negative cosine similarity ``-mean_i cos(p_i, sg(z_i))`` (their ``SimSiamLoss``)."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def glmc_loss(global_out: Outputs, local_out: Outputs, labels_a: Tensor, labels_b: Tensor, lam: Tensor, *,
              class_weight: Tensor, alpha: float | Tensor, contrast_weight: float,
              rest: float | Tensor | None = None) -> Tensor:
    """GLMC's loss of one step from both views' outputs (see the module docstring). ``rest`` is ``1 - alpha``
    (computed here when not given); the task passes both as device tensors that a CUDA graph reads."""
    std_g, cb_g, z_g, p_g = global_out
    std_l, cb_l, z_l, p_l = local_out
    balance = soft_label_ce(std_g, labels_a, labels_b, lam) + soft_label_ce(std_l, labels_a, labels_b, lam)
    rebalance = (soft_label_ce(cb_g, labels_a, labels_b, lam, class_weight)
                 + soft_label_ce(cb_l, labels_a, labels_b, lam, class_weight))
    contrast = consistency(p_g, z_l) + consistency(p_l, z_g)
    return alpha * balance + ((1 - alpha) if rest is None else rest) * rebalance + contrast_weight * contrast


class GLMCTask:
    """GLMC training (module docstring) on an in-memory ``ImageSet``; the model is a ``GLMCClassifier``."""

    multi_process = False  # partners and views are drawn for the whole batch; not tested under torchrun
    image_files = False  # four batched views of in-memory tensors per step
    # the loss reads alpha, which changes every epoch, from a device tensor refilled in place (``shares``), and
    # its fixed class weights: a CUDA graph of the step reads the epoch's alpha (longtail.graphs)
    graphable = True

    def __init__(self, train: ImageSet, counts: ClassCounts, *, epochs: int, batch_size: int,
                 augment: Augment | None = None, sampler: Sampler | None = None, resample_weighting: float = 0.0,
                 label_weighting: float = 1.2, contrast_weight: float = 4.0, mix_alpha: float = 1.0) -> None:
        if not mix_alpha > 0:
            raise LongtailError(f"GLMC draws lam from Beta(alpha, alpha), which needs alpha > 0, got {mix_alpha}",
                                "e.g. --set glmc.mix_alpha=1")
        self.train, self.counts, self.epochs, self.batch_size = train, counts, epochs, batch_size
        self.augment = augment
        self.sampler = sampler if sampler is not None else _Permutation(len(train))
        self.partners = partner_sampler(train.labels, train.num_classes, counts, resample_weighting,
                                        num_samples=getattr(self.sampler, "num_samples", len(train)))
        self.class_weight = glmc_class_weights(counts, label_weighting).to(train.device)
        self.contrast_weight, self.mix_alpha = float(contrast_weight), float(mix_alpha)
        self.alpha = 1.0
        self.shares = torch.tensor([1.0, 0.0], device=train.device)  # alpha and 1 - alpha, as float32

    def to(self, device: torch.device | str) -> "GLMCTask":
        self.train = self.train.to(device)
        self.class_weight = self.class_weight.to(device)
        self.partners = self.partners.to(device)
        self.shares = self.shares.to(device)
        if hasattr(self.sampler, "to"):
            self.sampler = self.sampler.to(device)
        return self

    def on_epoch_start(self, epoch: int) -> None:
        self.alpha = cumulative_alpha(epoch, self.epochs)
        self.shares.copy_(torch.tensor([self.alpha, 1 - self.alpha]))  # in place: where a graph reads them

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[GLMCBatch]:
        order = self.sampler.epoch_indices(generator)
        partners = self.partners.epoch_indices(generator)  # as many as the sampler draws
        # two augmented views of the batch and of its partners, each drawn for the whole epoch in one pass
        views = [iterate_batches(self.train, rows, self.batch_size, augment=self.augment, generator=generator,
                                  epoch=epoch)
                 for rows in (order, order, partners, partners)]
        for x1, x2, p1, p2 in zip(*views):
            yield self._mix(x1.images, x2.images, p1.images, p2.images, x1.labels, p1.labels, x1.index, generator)

    def _mix(self, x1: Tensor, x2: Tensor, p1: Tensor, p2: Tensor, labels: Tensor, labels_b: Tensor, index: Tensor,
             generator: torch.Generator) -> GLMCBatch:
        b, _, h, w = x1.shape
        lam = sample_beta(self.mix_alpha, 1, generator, x1.device)[0]  # 0-dim float64
        share = lam.to(x1.dtype)
        mixed = share * x1 + (1 - share) * p1  # global: mixup with the partners
        y0, y1, c0, c1 = cutmix_box(lam, (h, w), generator)
        rows = torch.arange(h, device=x1.device).view(h, 1)
        cols = torch.arange(w, device=x1.device).view(1, w)
        box = (rows >= y0) & (rows < y1) & (cols >= c0) & (cols < c1)  # (H, W)
        cut = torch.where(box, p2, x2)  # local: CutMix with the partners
        return GLMCBatch(mixed, cut, labels, labels_b, lam.float().expand(b).contiguous(), index)

    def loss(self, model: nn.Module, batch: GLMCBatch) -> Tensor:
        outputs = getattr(model, "train_outputs", None)
        if outputs is None:
            raise LongtailError(f"GLMC trains a model with two heads and a projector, got {type(model).__name__}",
                                "build the model from a config with train.task=glmc (longtail.models.build_model)")
        return glmc_loss(outputs(batch.images), outputs(batch.cut), batch.labels, batch.labels_b, batch.lam,
                         class_weight=self.class_weight, alpha=self.shares[0], rest=self.shares[1],
                         contrast_weight=self.contrast_weight)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train) // self.batch_size)


def check_glmc(cfg: RunConfig, train: Any = None, splits: Any = None) -> None:
    """Refuse the settings a GLMC run cannot keep, each with its fix (cheap: builds nothing)."""
    t, fix_task = cfg.train, "or train with --set train.task=supervised"
    refuse: list[tuple[bool, str, str]] = [
        (t.weighting != "none" or t.drw_start is not None,
         f"GLMC re-weights its second head itself; train.weighting={t.weighting}, train.drw_start={t.drw_start} "
         "would weight it twice", "set --set train.weighting=none --set train.drw_start=none (GLMC's weights: "
         "glmc.label_weighting)"),
        (cfg.loss.name != "ce", f"GLMC's loss is its own soft-label cross-entropy on two heads, not loss.name="
         f"{cfg.loss.name}", f"set --set loss.name=ce, {fix_task}"),
        (cfg.augment.mix != "none", f"GLMC mixes every batch itself (mixup and CutMix with re-sampled partners); "
         f"augment.mix={cfg.augment.mix} would mix it again", "set --set augment.mix=none (GLMC's share: "
         "glmc.mix_alpha)"),
        (cfg.semi.method != "none", f"GLMC with semi.method={cfg.semi.method} is not supported",
         f"set --set semi.method=none, {fix_task}"),
        (getattr(splits, "is_pseudo", None) is not None or cfg.data.pseudo_labels is not None,
         "GLMC with pseudo-labels is not supported", f"train without data.pseudo_labels, {fix_task}"),
        (cfg.mfw.strength > 0, "GLMC with major feature weakening is not supported",
         "set --set mfw.strength=0"),
        (t.freeze_backbone, "GLMC trains the backbone through its consistency loss; train.freeze_backbone "
         "freezes it", f"set --set train.freeze_backbone=false, {fix_task}"),
    ]
    for bad, problem, fix in refuse:
        if bad:
            raise LongtailError(problem, fix)
    if train is not None and not isinstance(train, ImageSet):
        raise LongtailError(f"GLMC draws four batched views of images held in memory; the image files of "
                            f"data.dataset={cfg.data.dataset} are decoded per batch", f"use a data set held in "
                            f"memory (cifar10, cifar100, svhn, digits), {fix_task}")


def glmc_task(cfg: RunConfig, train: Any, counts: ClassCounts, splits: Any = None, *,
              augment: Augment | None = None, sampler: Sampler | None = None) -> GLMCTask:
    """The GLMC task of a run (``train.task=glmc``), after :func:`check_glmc`."""
    check_glmc(cfg, train, splits)
    t, g = cfg.train, cfg.glmc
    return GLMCTask(cast(ImageSet, train), counts, epochs=t.epochs, batch_size=t.batch_size, augment=augment,
                    sampler=sampler, resample_weighting=g.resample_weighting,
                    label_weighting=g.label_weighting, contrast_weight=g.contrast_weight,
                    mix_alpha=g.mix_alpha)


__all__ = ["GLMCBatch", "GLMCTask", "check_glmc", "consistency", "cumulative_alpha", "glmc_class_weights",
           "glmc_loss", "glmc_task", "partner_sampler", "soft_label_ce"]
