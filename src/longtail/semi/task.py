"""Training on labeled + pseudo-labeled data with any supervised remedy.

The reference (Yang & Xu 2020) merges both into one data set and trains as usual; that is
:class:`~longtail.tasks.SupervisedTask` on the merged set, and :class:`SemiSupervisedTask` with
``pseudo_weight=1`` and no ``labeled_fraction`` is exactly that. Two knobs go further:

* ``pseudo_weight`` ``w``: every pseudo-labeled example counts ``w`` times in the loss, on top
  of the per-class weight ``a_y`` (DRW, class-balanced weighting)::

      loss = sum_i g_i a_{y_i} l_i / sum_i g_i a_{y_i},    g_i = w if row i is pseudo-labeled else 1

  computed with the unmodified loss on each group (labeled, pseudo-labeled) as
  ``(A_L mean_L + w A_P mean_P) / (A_L + w A_P)``, where ``A`` is the group's sum of ``a_y``
  (its size when unweighted): every loss of :mod:`longtail.losses` is a per-example mean, so
  this is exact and needs no per-example API.
* ``labeled_fraction`` ``f``: each batch holds ``round(f * B)`` labeled rows and the rest
  pseudo-labeled, each part drawn as chained random permutations of its rows (every row seen
  equally often, up to one) from the loop's generator; an epoch keeps ``ceil(N / B)`` steps.
  A fixed composition replaces the sampler, so only the instance sampler is allowed with it.
"""

from __future__ import annotations

from typing import Iterator, cast

import torch
import torch.nn as nn
from torch import Tensor

from ..data.augment import Augment, iterate_batches
from ..data.imageset import ImageSet
from ..errors import LongtailError
from ..samplers import InstanceBalanced
from ..tasks import Sampler, SupervisedTask, TrainBatch, Weighting, _Permutation


def cycled_draw(rows: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` of ``rows`` as chained random permutations (then cut), on the rows' device."""
    if n == 0:
        return rows[:0]
    rounds = -(-n // rows.numel())
    perms = [torch.randperm(rows.numel(), generator=generator, device=generator.device) for _ in range(rounds)]
    return rows[torch.cat(perms)[:n].to(rows.device)]


def group_weighted_loss(criterion: nn.Module, logits: Tensor, targets: Tensor, is_pseudo: Tensor, pseudo_weight: float,
                        class_weight: Tensor | None = None) -> Tensor:
    """The loss with pseudo-labeled rows weighted ``pseudo_weight`` (see the module docstring)."""
    num = logits.new_zeros(())
    den = logits.new_zeros(())
    for mask, w in ((~is_pseudo, 1.0), (is_pseudo, float(pseudo_weight))):
        if w == 0.0 or not bool(mask.any()):
            continue
        y = targets[mask]
        # what the loss divided its weighted sum by: the rows' weight (CE, LDAM) or their number (focal)
        if class_weight is not None and getattr(criterion, "normalisation", "weight-sum") == "weight-sum":
            mass = class_weight.to(logits.device, logits.dtype)[y].sum()
        else:
            mass = logits.new_tensor(float(y.numel()))
        num = num + w * mass * criterion(logits[mask], y, weight=class_weight)
        den = den + w * mass
    # den == 0 only when the batch holds nothing with weight: a zero loss that still has a graph
    return num / den if bool(den > 0) else logits.sum() * 0.0


class SemiSupervisedTask(SupervisedTask):
    """``SupervisedTask`` over labeled + pseudo-labeled rows (``is_pseudo`` (N,) bool marks the latter)."""

    image_files = False
    graphable = False  # its loss reads per-step state: eager steps only

    def __init__(
        self,
        train: ImageSet,
        criterion: nn.Module,
        *,
        is_pseudo: Tensor,
        batch_size: int,
        pseudo_weight: float = 1.0,
        labeled_fraction: float | None = None,
        augment: Augment | None = None,
        sampler: Sampler | None = None,
        weighting: Weighting | None = None,
    ) -> None:
        super().__init__(train, criterion, batch_size=batch_size, augment=augment, sampler=sampler, weighting=weighting)
        is_pseudo = torch.as_tensor(is_pseudo).bool()
        if is_pseudo.shape != (len(train),):
            raise LongtailError(f"is_pseudo has shape {tuple(is_pseudo.shape)} for {len(train)} training rows",
                                "pass one flag per row of the merged training set (SemiSplits.is_pseudo)")
        if not (pseudo_weight >= 0 and pseudo_weight < float("inf")):
            raise LongtailError(f"semi.pseudo_weight must be a finite number >= 0, got {pseudo_weight}",
                                "1 treats pseudo-labels like labels (the reference); 0 ignores them")
        self.is_pseudo = is_pseudo.to(train.device)
        self.pseudo_weight = float(pseudo_weight)
        self.labeled_fraction = labeled_fraction
        self.labeled_rows = (~self.is_pseudo).nonzero().squeeze(1)
        self.pseudo_rows = self.is_pseudo.nonzero().squeeze(1)
        self.labeled_per_batch = 0
        if labeled_fraction is not None:
            if not 0.0 <= labeled_fraction <= 1.0:
                raise LongtailError(f"semi.labeled_fraction must lie in [0, 1], got {labeled_fraction}",
                                    "e.g. 0.5 for half labeled, half pseudo-labeled; none merges (the reference)")
            if sampler is not None and not isinstance(sampler, (InstanceBalanced, _Permutation)):
                raise LongtailError("semi.labeled_fraction fixes each batch's make-up, so it cannot be combined "
                                    f"with the {type(sampler).__name__} sampler",
                                    "use train.sampler=instance, or leave semi.labeled_fraction unset")
            self.labeled_per_batch = int(round(labeled_fraction * batch_size))
            for rows, n, what in ((self.labeled_rows, self.labeled_per_batch, "labeled"),
                                  (self.pseudo_rows, batch_size - self.labeled_per_batch, "pseudo-labeled")):
                if n > 0 and rows.numel() == 0:
                    raise LongtailError(f"semi.labeled_fraction={labeled_fraction} asks for {what} rows in every "
                                        f"batch but there are none", "check the pseudo-label threshold, or unset "
                                        "semi.labeled_fraction")

    def to(self, device: torch.device | str) -> "SemiSupervisedTask":
        super().to(device)
        self.is_pseudo = self.is_pseudo.to(device)
        self.labeled_rows, self.pseudo_rows = self.labeled_rows.to(device), self.pseudo_rows.to(device)
        return self

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[TrainBatch]:
        if self.labeled_fraction is None:
            return super().batches(epoch, generator)
        steps, n_l = self.steps_per_epoch, self.labeled_per_batch
        n_p = self.batch_size - n_l
        lab = cycled_draw(self.labeled_rows, steps * n_l, generator).view(steps, n_l)
        pse = cycled_draw(self.pseudo_rows, steps * n_p, generator).view(steps, n_p)
        order = torch.cat([lab, pse], dim=1).reshape(-1)  # (steps * B,): each chunk of B is one batch
        train = cast(ImageSet, self.train)  # image_files = False: never image files
        return iterate_batches(train, order, self.batch_size, augment=self.augment, generator=generator, epoch=epoch)

    def loss(self, model: nn.Module, batch: TrainBatch) -> Tensor:  # never mixed (build_task)
        if self.pseudo_weight == 1.0:
            return super().loss(model, batch)  # the merged set, exactly the reference
        logits = model(batch.images).float()
        return group_weighted_loss(self.criterion, logits, batch.labels, self.is_pseudo[batch.index],
                                   self.pseudo_weight, self.class_weight)
