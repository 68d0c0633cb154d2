"""mixup and CutMix: train on pairs of images of a batch and their two labels.

* **mixup** (Zhang, Cisse, Dauphin & Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018;
  facebookresearch/mixup-cifar10 ``mixup_data``): ``x = lam * x + (1 - lam) * x[perm]``.
* **CutMix** (Yun et al., "CutMix", ICCV 2019; clovaai/CutMix-PyTorch ``train.py``, ``rand_bbox``): the box
  ``[cy - cut_h // 2, cy + cut_h // 2) x [cx - cut_w // 2, cx + cut_w // 2)`` (clipped to the image) of every
  image is replaced by that of image ``perm``, with ``cut_h = int(H sqrt(1 - lam))``, ``cut_w = int(W
  sqrt(1 - lam))`` and the centre uniform over the pixels; ``lam`` is then corrected to the share of the
  image left unpasted, ``1 - box area / (H W)``.

Both draw ``lam ~ Beta(alpha, alpha)`` and one permutation ``perm`` per batch, and the loss is
``lam * L(logits, y) + (1 - lam) * L(logits, y[perm])`` (:func:`mixed_loss`) with the run's loss and its
per-class weights. ``prob`` is the share of batches mixed (CutMix's ``cutmix_prob``): a batch left alone
gets ``lam = 1``, which leaves its images and its loss exactly as they were.

Everything is drawn from an explicit ``torch.Generator`` on the data's device, always the same draws in the
same order, and without host synchronisation: ``lam`` stays a tensor and the box is a mask, so a batch can
be mixed inside a stream of CUDA work. Differences from the sources: the randomness (NumPy's and PyTorch's
global generators there); CutMix's code takes its box "width" from dimension 2 of an (N, C, H, W) batch, i.e.
the height (the same for square images), where here ``cut_h`` follows H and ``cut_w`` W; and the draws are
made for every batch, mixed or not (the sources draw ``lam`` only when they mix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import LongtailError
from .augment import Batch

MIXES = ("none", "mixup", "cutmix")
#: candidates per Gamma draw (Marsaglia-Tsang accepts each with probability > 0.95; all 16 fail < 1e-20)
_CANDIDATES = 16


class MixedBatch(NamedTuple):
    """A mixed training batch: the images, both labels of every row and the share of the first.

    ``lam`` (B,) float32 holds the batch's one share in every row, so that slicing the rows of a batch (one
    process's share under ``torchrun``) keeps it, and a CUDA graph reads it from the batch.
    """

    images: Tensor
    labels: Tensor  # y_a (B,): the labels of the images as drawn
    index: Tensor  # type: ignore[assignment]  # rows of the data set, as Batch.index
    labels_b: Tensor  # y_b (B,): the labels of the images mixed in, labels[perm]
    lam: Tensor  # (B,) float32, all equal: the weight of y_a in the loss


def _log_gamma_draw(alpha: float, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """log of ``n`` draws of Gamma(alpha, 1) (float64): Marsaglia & Tsang (2000) for shape ``a = max(alpha, 1)``
    (or ``alpha + 1``), ``_CANDIDATES`` candidates per draw, the first accepted kept; for ``alpha < 1``,
    ``Gamma(alpha) = Gamma(alpha + 1) U^(1 / alpha)`` (in logs, so a small alpha does not underflow)."""
    gdev = generator.device
    a = alpha if alpha >= 1 else alpha + 1.0
    d = a - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    x = torch.randn((n, _CANDIDATES), generator=generator, device=gdev, dtype=torch.float64).to(device)
    u = torch.rand((n, _CANDIDATES), generator=generator, device=gdev, dtype=torch.float64).to(device)
    boost = torch.rand((n,), generator=generator, device=gdev, dtype=torch.float64).to(device)
    v = (1.0 + c * x) ** 3
    log_v = v.clamp_min(1e-300).log()
    accept = (v > 0) & (u.clamp_min(1e-300).log() < 0.5 * x * x + d - d * v + d * log_v)
    first = accept.int().argmax(dim=1, keepdim=True)  # the first accepted candidate (0 if none: < 1e-20)
    log_g = (d * v.clamp_min(1e-300)).log().gather(1, first).squeeze(1)
    if alpha < 1:
        log_g = log_g + boost.clamp_min(1e-300).log() / alpha
    return log_g


def sample_beta(alpha: float, n: int, generator: torch.Generator, device: torch.device | None = None) -> Tensor:
    """``n`` draws of Beta(alpha, alpha), float64 on ``device`` (default: the generator's): ``X / (X + Y)`` with
    X, Y ~ Gamma(alpha), computed as ``sigmoid(log X - log Y)``."""
    if not alpha > 0:
        raise LongtailError(f"the mixing share is drawn from Beta(alpha, alpha), which needs alpha > 0, got {alpha}",
                            "use e.g. --set augment.mix_alpha=1")
    device = torch.device(device) if device is not None else generator.device
    return torch.sigmoid(_log_gamma_draw(alpha, n, generator, device) - _log_gamma_draw(alpha, n, generator, device))


def _share(alpha: float, prob: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """The batch's ``lam`` (a 0-dim float64 tensor): Beta(alpha, alpha) with probability ``prob``, else 1."""
    mixed = torch.rand((), generator=generator, device=generator.device).to(device) < prob
    lam = sample_beta(alpha, 1, generator, device)[0]
    return torch.where(mixed, lam, torch.ones_like(lam))


def _perm(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def mixup(images: Tensor, labels: Tensor, generator: torch.Generator, *, alpha: float = 1.0, prob: float = 1.0
          ) -> tuple[Tensor, Tensor, Tensor]:
    """mixup of a float batch (B, ...): ``(images, labels_b (B,), lam (B,) float32)``."""
    if not images.is_floating_point():
        raise LongtailError(f"mixup averages images, so it needs floating-point images, got {images.dtype}",
                            "mix the normalised batch")
    lam = _share(alpha, prob, generator, images.device)
    perm = _perm(images.shape[0], generator, images.device)
    share = lam.to(images.dtype)
    mixed = share * images + (1 - share) * images[perm]  # lam = 1: exactly the images
    return mixed, labels[perm], lam.float().expand(images.shape[0]).contiguous()


def cutmix_box(lam: Tensor, size: tuple[int, int], generator: torch.Generator) -> Tensor:
    """CutMix's ``rand_bbox``: (4,) long ``y0, y1, x0, x1`` (ends exclusive, clipped) for the share ``lam``."""
    h, w = size
    device = lam.device
    cut = (1.0 - lam).clamp_min(0).sqrt()
    cut_h, cut_w = (h * cut).floor().long(), (w * cut).floor().long()
    cy = torch.randint(h, (), generator=generator, device=generator.device).to(device)
    cx = torch.randint(w, (), generator=generator, device=generator.device).to(device)
    return torch.stack([(cy - cut_h // 2).clamp(0, h), (cy + cut_h // 2).clamp(0, h),
                        (cx - cut_w // 2).clamp(0, w), (cx + cut_w // 2).clamp(0, w)])


def cutmix(images: Tensor, labels: Tensor, generator: torch.Generator, *, alpha: float = 1.0, prob: float = 1.0
           ) -> tuple[Tensor, Tensor, Tensor]:
    """CutMix of a batch (B, C, H, W), any dtype: ``(images, labels_b (B,), lam (B,) float32)``, ``lam`` the
    share of each image that is still its own (the box's real area, after clipping)."""
    if images.ndim != 4:
        raise LongtailError(f"CutMix pastes boxes of (B, C, H, W) images, got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    lam = _share(alpha, prob, generator, images.device)
    perm = _perm(b, generator, images.device)
    y0, y1, x0, x1 = cutmix_box(lam, (h, w), generator)
    rows = torch.arange(h, device=images.device).view(h, 1)
    cols = torch.arange(w, device=images.device).view(1, w)
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)  # (H, W)
    mixed = torch.where(box, images[perm], images)
    lam = 1.0 - ((y1 - y0) * (x1 - x0)).double() / (h * w)
    return mixed, labels[perm], lam.float().expand(b).contiguous()


@dataclass(frozen=True)
class Mix:
    """mixup or CutMix of every batch (``mode``), ``lam ~ Beta(alpha, alpha)``, a share ``prob`` of the batches."""

    mode: str = "mixup"
    alpha: float = 1.0
    prob: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ("mixup", "cutmix"):
            raise LongtailError(f"unknown augment.mix {self.mode!r}", "use mixup or cutmix (none: no mixing)")
        if not self.alpha > 0:
            raise LongtailError(f"augment.mix_alpha must be > 0, got {self.alpha}", "e.g. --set augment.mix_alpha=1")
        if not 0.0 <= self.prob <= 1.0:
            raise LongtailError(f"augment.mix_prob must be in [0, 1], got {self.prob}",
                                "e.g. --set augment.mix_prob=1 (every batch)")

    def __call__(self, batch: Batch, generator: torch.Generator) -> MixedBatch:
        fn = mixup if self.mode == "mixup" else cutmix
        images, labels_b, lam = fn(batch.images, batch.labels, generator, alpha=self.alpha, prob=self.prob)
        return MixedBatch(images, batch.labels, batch.index, labels_b, lam)

    def batches(self, batches: Iterable[Batch], generator: torch.Generator) -> Iterator[MixedBatch]:
        """Each batch of ``batches`` mixed, drawing from ``generator`` after the batch is made."""
        for batch in batches:
            yield self(batch, generator)


def mixed_loss(criterion: nn.Module, logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: Tensor,
               weight: Tensor | None = None) -> Tensor:
    """``lam * L(logits, y_a) + (1 - lam) * L(logits, y_b)``, ``L = criterion(logits, targets, weight=weight)``
    (any loss of :mod:`longtail.losses`); ``lam`` a 0-dim tensor or (B,) of one value. With ``lam = 1`` it is
    exactly ``L(logits, y_a)``."""
    share = lam.reshape(-1)[0] if lam.numel() else lam.new_ones(())
    share = share.to(logits.dtype)
    return share * criterion(logits, labels_a, weight=weight) + (1 - share) * criterion(logits, labels_b,
                                                                                        weight=weight)


__all__ = ["MIXES", "Mix", "MixedBatch", "cutmix", "cutmix_box", "mixed_loss", "mixup", "sample_beta"]
