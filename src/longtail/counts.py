"""Per-class training counts: the core value of long-tailed learning.

LDAM margins, class-balanced weights, deferred re-weighting, the balanced-softmax prior,
samplers and the many/medium/few-shot split all derive from the number of training images
per class. ``ClassCounts`` is that one typed value.

Profiles (Cao et al. 2019; Yang & Xu 2020):

* exponential: ``n_i = int(n_max * (1/rho) ** (i / (C - 1)))``
* step: the first ``C // 2`` classes keep ``n_max``, the rest ``int(n_max / rho)``

where ``rho = n_max / n_min`` is the imbalance ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from .errors import LongtailError

#: Shot groups (Liu et al. 2019): many > 100, medium 20..100, few < 20 training images.
MANY_SHOT_ABOVE = 100
FEW_SHOT_BELOW = 20
SHOT_GROUPS = ("many", "medium", "few")

PROFILES = ("exp", "step")


def profile_counts(n_max: int, num_classes: int, imbalance_ratio: float, profile: str = "exp") -> list[int]:
    """Per-class counts of a long-tailed profile.

    >>> profile_counts(5000, 10, 100)
    [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    >>> profile_counts(100, 4, 10, "step")
    [100, 100, 10, 10]
    """
    if imbalance_ratio < 1:
        raise LongtailError(
            f"imbalance_ratio must be >= 1 (n_max / n_min), got {imbalance_ratio}",
            "pass e.g. imbalance_ratio=100; longtail uses n_max/n_min, not the reference's inverse imb_factor",
        )
    if num_classes < 1:
        raise LongtailError(f"num_classes must be >= 1, got {num_classes}")
    if profile == "exp":
        if num_classes == 1:
            return [int(n_max)]
        return [int(n_max * (1.0 / imbalance_ratio) ** (i / (num_classes - 1))) for i in range(num_classes)]
    if profile == "step":
        half = num_classes // 2
        return [int(n_max)] * half + [int(n_max / imbalance_ratio)] * (num_classes - half)
    raise LongtailError(f"unknown imbalance profile {profile!r}", f"use one of {', '.join(PROFILES)}")


@dataclass(frozen=True)
class ClassCounts:
    """Training-set size of each class, with the quantities derived from it.

    ``counts[c]`` is the number of training examples of class ``c``. Every count-aware
    component (losses, samplers, reports) takes this value.
    """

    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        counts = tuple(int(c) for c in self.counts)
        object.__setattr__(self, "counts", counts)
        if len(counts) == 0:
            raise LongtailError("class counts are empty", "a data set needs at least one class")
        if any(c < 0 for c in counts):
            raise LongtailError(f"class counts must be non-negative, got {counts}")

    # construction -------------------------------------------------------------------
    @classmethod
    def from_labels(cls, labels: Iterable[int] | torch.Tensor, num_classes: int) -> "ClassCounts":
        labels = torch.as_tensor(labels if isinstance(labels, torch.Tensor) else list(labels), dtype=torch.long)
        labels = labels.cpu()
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
            raise LongtailError(
                f"label {bad} is out of range for {num_classes} classes",
                "labels must be integers in 0..num_classes-1; check the label column or the class list",
            )
        return cls(tuple(torch.bincount(labels, minlength=num_classes).tolist()))

    @classmethod
    def from_profile(cls, n_max: int, num_classes: int, imbalance_ratio: float, profile: str = "exp") -> "ClassCounts":
        return cls(tuple(profile_counts(n_max, num_classes, imbalance_ratio, profile)))

    # derived quantities -------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.counts)

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def imbalance_ratio(self) -> float:
        """n_max / n_min (infinite when a class is empty)."""
        lo = min(self.counts)
        return float("inf") if lo == 0 else max(self.counts) / lo

    def tensor(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Counts as a ``(C,)`` tensor."""
        return torch.tensor(self.counts, dtype=dtype, device=device)

    def prior(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Class prior ``pi_c = n_c / N`` as a ``(C,)`` float tensor."""
        t = self.tensor(device, torch.float64)
        return (t / t.sum()).float()

    def log_prior(self) -> torch.Tensor:
        """``log pi_c = log(n_c / N)`` as a ``(C,)`` float32 tensor (computed in float64); every class
        needs examples."""
        self.require_nonempty()
        t = self.tensor(dtype=torch.float64)
        return torch.log(t / t.sum()).float()

    def group_of(self, c: int) -> str:
        n = self.counts[c]
        if n > MANY_SHOT_ABOVE:
            return "many"
        if n < FEW_SHOT_BELOW:
            return "few"
        return "medium"

    def groups(self) -> dict[str, list[int]]:
        """Class indices of each shot group; a group may be empty."""
        out: dict[str, list[int]] = {g: [] for g in SHOT_GROUPS}
        for c in range(self.num_classes):
            out[self.group_of(c)].append(c)
        return out

    def require_nonempty(self, class_names: Sequence[str] | None = None, *, because: str = "",
                         alternative: str = "") -> None:
        """Stop with a clear message when a class has no training examples (the one check of it).

        ``because``: what cannot be computed then (e.g. "the LDAM margin n_c^(-1/4) is undefined");
        ``alternative``: another way out, added to the fix."""
        empty = [c for c, n in enumerate(self.counts) if n == 0]
        if empty:
            names = [class_names[c] if class_names else str(c) for c in empty]
            raise LongtailError(
                f"class(es) {', '.join(names)} have no training examples" + (f", so {because}" if because else ""),
                "every class needs at least one training example: lower the imbalance ratio, add data, "
                "or remove the class from the class list" + (f"; or {alternative}" if alternative else ""),
            )

    def __repr__(self) -> str:
        rho = self.imbalance_ratio
        return f"ClassCounts(C={self.num_classes}, N={self.total}, rho={rho:.4g})"
