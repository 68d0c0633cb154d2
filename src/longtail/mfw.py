"""Major Feature Weakening (MFW): slow the majority classes down so all classes learn at one pace.

Ye, Zhan & Chao, "Procrustean Training for Imbalanced Deep Learning", ICCV 2021
(arXiv:2104.01769). The paper observes that a network trained on imbalanced data first
*under-fits* the minority classes (it files most of their examples under the majority classes),
then has to push minority features across the major/minor boundaries with large gradients, and
ends up over-fitting them. Its remedy equalises the training progress of the classes: "we mix
features of the major class data with those of other data in a mini-batch, intentionally
weakening their features to prevent a neural network from fitting them first". The mixed
feature keeps the label of the original example (unlike mixup, the label is not mixed), and
nothing changes at test time.

No code was published, so this module is our reading, with its choices named as knobs:

* **where**: the penultimate features, ``Classifier.features(x)`` (B, D), just before the head.
  (The paper's idea is layer-agnostic; the classifier seam is the one every model here has.)
* **which examples**: each example of class ``c`` is weakened independently with probability

      p_c = strength * (n_c - n_min) / (n_max - n_min)

  so the rarest class is never weakened and the head class is weakened with probability
  ``strength``; a balanced training set (``n_max == n_min``) is never weakened.
* **how**: a weakened row ``f_i`` becomes the convex combination

      f_i <- lam_i * f_i + (1 - lam_i) * f_j,    lam_i ~ Uniform(lam_min, 1),

  with ``j != i`` another row of the batch drawn uniformly (of any class), and the label ``y_i``
  kept. ``lam_min >= 0.5`` keeps the original example dominant. Gradients flow through both
  rows, as for any mixing in feature space.
* **randomness**: from an explicit ``torch.Generator``; :class:`MFWTask` owns one and re-seeds it
  from ``(seed, epoch)`` at the start of every epoch, so a resumed run is identical to an
  uninterrupted one. (With a two-pass optimizer such as SAM the two loss evaluations of a step
  draw different mixes.)
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, cast

import torch
import torch.nn as nn

from .counts import ClassCounts
from .data.augment import Augment
from .data.imageset import ImageSet
from .errors import LongtailError
from .loop import epoch_seed
from .samplers import Sampler
from .tasks import SupervisedTask, TrainBatch
from .weights import Weighting


def weakening_probabilities(counts: ClassCounts, strength: float) -> torch.Tensor:
    """``p_c = strength * (n_c - n_min) / (n_max - n_min)`` as a (C,) float tensor (0 when balanced).

    >>> weakening_probabilities(ClassCounts((100, 55, 10)), 0.5).tolist()
    [0.5, 0.25, 0.0]
    """
    n = counts.tensor(dtype=torch.float64)
    span = float(n.max() - n.min())
    if span == 0:
        return torch.zeros(counts.num_classes)
    return (strength * (n - n.min()) / span).float()


class WeakeningDraw(NamedTuple):
    """The random choices of one batch: which rows, with which partner, with which weight."""

    mask: torch.Tensor  # (B,) bool: rows that are weakened
    partner: torch.Tensor  # (B,) long: the other row j != i mixed into row i
    lam: torch.Tensor  # (B,) float in [lam_min, 1): weight of the row's own feature


class MajorFeatureWeakening(nn.Module):
    """Mix majority-class features with other features of the batch (training only).

    ``forward(features (B, D), labels (B,))`` returns ``(features (B, D), mask (B,) bool)``; rows
    not in ``mask`` are returned unchanged, and in eval mode the module is the identity.
    ``select_prob`` (a buffer, (C,)) holds the per-class weakening probabilities.
    """

    select_prob: torch.Tensor

    def __init__(self, counts: ClassCounts, *, strength: float = 0.5, lam_min: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= strength <= 1.0:
            raise LongtailError(f"MFW strength must be in [0, 1], got {strength}",
                                "it is the weakening probability of the largest class; 0 turns MFW off")
        if not 0.0 <= lam_min <= 1.0:
            raise LongtailError(f"MFW lam_min must be in [0, 1], got {lam_min}",
                                "a weakened feature keeps a share lam ~ Uniform(lam_min, 1) of itself; e.g. 0.5")
        self.strength = float(strength)
        self.lam_min = float(lam_min)
        self.register_buffer("select_prob", weakening_probabilities(counts, strength))

    def draw(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> WeakeningDraw:
        """The random choices for a batch with these labels, on the labels' device.

        Always the same three draws in the same order, whatever is selected, so a seeded
        generator gives the same stream on every call.
        """
        b, device = labels.shape[0], labels.device
        gen_device = generator.device if generator is not None else device

        def uniform() -> torch.Tensor:
            return torch.rand(b, generator=generator, device=gen_device).to(device)

        # Partner j = i + k (mod B) with k uniform in 1..B-1: uniform over the other rows.
        shift = torch.randint(1, max(b, 2), (b,), generator=generator, device=gen_device).to(device)
        partner = (torch.arange(b, device=device) + shift) % max(b, 1)
        u = uniform()
        lam = self.lam_min + (1.0 - self.lam_min) * uniform()
        mask = u < self.select_prob.to(device)[labels.long()]  # u in [0, 1): p = 0 is never selected
        if b < 2:  # no other example to mix with
            mask = torch.zeros_like(mask)
        return WeakeningDraw(mask, partner, lam)

    def forward(self, features: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if features.ndim != 2 or labels.shape != features.shape[:1]:
            raise LongtailError(f"MFW needs (B, D) features and (B,) labels, got {tuple(features.shape)} "
                                f"and {tuple(labels.shape)}")
        if not self.training or self.strength == 0.0:
            return features, torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
        mask, partner, lam = self.draw(labels, generator)
        lam = lam.to(features.dtype)[:, None]  # (B, 1)
        mixed = lam * features + (1.0 - lam) * features[partner]
        # where() (not lam = 1) so unselected rows are bit-for-bit the input.
        return torch.where(mask[:, None], mixed, features), mask

    def extra_repr(self) -> str:
        return f"strength={self.strength}, lam_min={self.lam_min}"


# Offset so the MFW stream never coincides with the loop's own (seed, epoch) generator.
_STREAM = 0x4D4657  # "MFW"


class _FeatureSeam(Protocol):
    """The ``features()`` / ``forward_head()`` seam of :class:`longtail.models.Classifier`."""

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, features: torch.Tensor) -> torch.Tensor: ...


class MFWTask(SupervisedTask):
    """Supervised classification with Major Feature Weakening on the penultimate features.

    ``loss = criterion(head(MFW(features(x), y)), y, weight)``; the model must have the
    ``features()`` / ``forward_head()`` seam of :class:`longtail.models.Classifier`. Everything
    else (sampler, weighting, DRW, augmentation) is that of :class:`SupervisedTask`.
    ``counts`` defaults to the training set's class counts.
    """

    multi_process = False  # it calls features() / forward_head(), which DDP does not see
    graphable = False  # its loss draws per-step state: eager steps only

    def __init__(
        self,
        train: ImageSet,
        criterion: nn.Module,
        *,
        batch_size: int,
        counts: ClassCounts | None = None,
        strength: float = 0.5,
        lam_min: float = 0.5,
        seed: int = 0,
        augment: Augment | None = None,
        sampler: Sampler | None = None,
        weighting: Weighting | None = None,
    ) -> None:
        super().__init__(train, criterion, batch_size=batch_size, augment=augment, sampler=sampler,
                         weighting=weighting)
        counts = counts if counts is not None else train.class_counts()
        self.mfw = MajorFeatureWeakening(counts, strength=strength, lam_min=lam_min).to(train.device)
        self.seed = int(seed)
        self.generator = torch.Generator(device=train.device)
        self._seed_generator(0)

    def _seed_generator(self, epoch: int) -> None:
        self.generator.manual_seed(epoch_seed(self.seed, epoch) ^ _STREAM)

    def to(self, device: torch.device | str) -> "MFWTask":
        super().to(device)
        self.mfw = self.mfw.to(device)
        self.generator = torch.Generator(device=self.train.device)
        self._seed_generator(0)
        return self

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._seed_generator(epoch)

    def loss(self, model: nn.Module, batch: TrainBatch) -> torch.Tensor:  # never mixed (build_task)
        if not (hasattr(model, "features") and hasattr(model, "forward_head")):
            raise LongtailError(f"MFW needs a model with features() and forward_head(), got {type(model).__name__}",
                                "use a longtail Classifier (longtail.models.make_model)")
        net = cast(_FeatureSeam, model)
        feats = net.features(batch.images)  # (B, D)
        # Follow the model's mode: the loop calls model.train(); eval-mode losses see no weakening.
        self.mfw.train(model.training)
        feats, _ = self.mfw(feats, batch.labels, self.generator)
        logits = net.forward_head(feats)
        return self.criterion(logits.float(), batch.labels, weight=self.class_weight)


__all__ = ["MFWTask", "MajorFeatureWeakening", "WeakeningDraw", "weakening_probabilities"]
