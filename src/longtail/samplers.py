"""Which training examples an epoch visits, as index tensors (no DataLoader).

A sampler turns an explicit :class:`torch.Generator` into an int64 tensor of ``num_samples``
indices into the data set, on the device of the labels. ``num_samples`` defaults to the data set
size, so an epoch has the same number of steps whatever the sampler.

* ``instance``: a random permutation, every example once (plain training).
* ``class-balanced``: pick a class uniformly, then one of its examples uniformly, with replacement
  (Kang et al., ICLR 2020).
* ``sqrt``: pick class ``c`` with probability ``∝ sqrt(n_c)``, then an example uniformly (Kang et
  al. 2020; Mahajan et al. 2018).
* ``effective-number``: each example with its class's weight ``(1 - beta) / (1 - beta^n_c)``,
  beta 0.9999 (Cui et al. 2019's effective number): the "Resample" rule of the imbalanced-semi-self
  code, the seed's "CE(Balanced)". Class ``c`` is drawn ``∝ n_c (1 - beta) /
  (1 - beta^n_c)``, between ``instance`` and ``class-balanced`` (1.27 : 1 head to tail on CIFAR-10-LT).

The generator may live on the CPU while the labels live on a GPU: random numbers are drawn on the
generator's device (so a seed gives the same epoch whatever device the data is on) and moved.

>>> labels = torch.tensor([0, 0, 0, 1])
>>> make_sampler("class-balanced", labels, 2).epoch_indices(torch.Generator().manual_seed(0)).shape
torch.Size([4])
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor

from .errors import LongtailError

__all__ = [
    "SAMPLERS",
    "SAMPLER_PARAMS",
    "ClassBalanced",
    "ClassWeighted",
    "EffectiveNumber",
    "InstanceBalanced",
    "Sampler",
    "SquareRoot",
    "make_sampler",
]


class Sampler(Protocol):
    """Draws the indices one epoch visits."""

    num_samples: int

    def epoch_indices(self, generator: torch.Generator) -> Tensor:
        """int64 ``(num_samples,)`` indices into the data set, on the labels' device."""
        ...


def _check_labels(labels: Tensor, num_classes: int | None) -> Tensor:
    if labels.dim() != 1 or labels.numel() == 0 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise LongtailError(
            f"a sampler needs a non-empty 1-D integer label tensor, got shape {tuple(labels.shape)} "
            f"and dtype {labels.dtype}",
            "pass the training labels as an int64 tensor",
        )
    labels = labels.long()
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise LongtailError(
            f"labels must lie in 0..{num_classes - 1}, got values from {labels.min().item()} to {labels.max().item()}",
            "check num_classes against the data set's class list",
        )
    return labels


def _check_num_samples(num_samples: int | None, default: int) -> int:
    n = default if num_samples is None else int(num_samples)
    if n < 1:
        raise LongtailError(f"num_samples must be >= 1, got {n}", "leave it unset to use the data set size")
    return n


class InstanceBalanced:
    """Every example equally likely: a random permutation of the data set.

    With ``num_samples`` larger than the data set, whole permutations are chained (then cut), so
    every example is still seen equally often up to one.
    """

    def __init__(self, labels: Tensor, num_classes: int | None = None, *, num_samples: int | None = None) -> None:
        self.labels = _check_labels(labels, num_classes)
        self.num_samples = _check_num_samples(num_samples, len(self.labels))

    def to(self, device: torch.device | str) -> "InstanceBalanced":
        """Move the labels (and so the returned indices) to ``device``; returns ``self``."""
        self.labels = self.labels.to(device)
        return self

    def epoch_indices(self, generator: torch.Generator) -> Tensor:
        n = len(self.labels)
        rounds = -(-self.num_samples // n)  # ceil
        perms = [torch.randperm(n, generator=generator, device=generator.device) for _ in range(rounds)]
        return torch.cat(perms)[: self.num_samples].to(self.labels.device)


class ClassWeighted:
    """Draw a class with probability ``class_probs[c]``, then one of its examples uniformly, with replacement.

    ``class_probs`` is ``(C,)``, non-negative, any scale; classes with no examples get probability 0
    and the rest are renormalised. Vectorised: indices are sorted by class once, so class ``c``
    owns the block ``order[start_c : start_c + n_c]`` and a draw is ``order[start_y + floor(u n_y)]``.
    """

    def __init__(
        self, labels: Tensor, num_classes: int, class_probs: Tensor, *, num_samples: int | None = None
    ) -> None:
        self.labels = _check_labels(labels, num_classes)
        self.num_samples = _check_num_samples(num_samples, len(self.labels))
        probs = torch.as_tensor(class_probs, dtype=torch.float64).detach().cpu()
        if probs.shape != (num_classes,) or not torch.isfinite(probs).all() or (probs < 0).any():
            raise LongtailError(
                f"class_probs must be {num_classes} finite non-negative numbers, got shape {tuple(probs.shape)}",
                "pass one weight per class",
            )
        self.class_counts = torch.bincount(self.labels, minlength=num_classes)  # (C,), labels' device
        # An empty class has no block to draw from: its probability goes to the others.
        probs = torch.where(self.class_counts.cpu() > 0, probs, torch.zeros_like(probs))
        if probs.sum() <= 0:
            raise LongtailError(
                "every class with examples has probability 0", "give at least one non-empty class a positive weight"
            )
        self.class_probs = probs / probs.sum()  # (C,) float64 on the CPU, moved to the generator per epoch
        self.order = torch.argsort(self.labels, stable=True)  # (N,) indices grouped by class
        self.starts = torch.cumsum(self.class_counts, 0) - self.class_counts  # (C,) first position of each block

    def to(self, device: torch.device | str) -> "ClassWeighted":
        """Move the label-derived tensors (and so the returned indices) to ``device``; returns ``self``."""
        self.labels, self.order = self.labels.to(device), self.order.to(device)
        self.class_counts, self.starts = self.class_counts.to(device), self.starts.to(device)
        return self

    def epoch_indices(self, generator: torch.Generator) -> Tensor:
        g_device = generator.device
        cls = torch.multinomial(
            self.class_probs.to(g_device), self.num_samples, replacement=True, generator=generator
        )  # (S,)
        u = torch.rand(self.num_samples, generator=generator, device=g_device, dtype=torch.float64)
        cls, u = cls.to(self.labels.device), u.to(self.labels.device)
        n = self.class_counts[cls]
        # floor(u * n) < n for u < 1 in exact arithmetic; clamp guards the float rounding.
        offset = torch.minimum((u * n).long(), n - 1)
        return self.order[self.starts[cls] + offset]


class ClassBalanced(ClassWeighted):
    """Class-balanced sampling (Kang et al. 2020): every non-empty class equally likely."""

    def __init__(self, labels: Tensor, num_classes: int, *, num_samples: int | None = None) -> None:
        super().__init__(labels, num_classes, torch.ones(num_classes, dtype=torch.float64), num_samples=num_samples)


class SquareRoot(ClassWeighted):
    """Square-root sampling (Kang et al. 2020): class ``c`` drawn with probability ``∝ sqrt(n_c)``."""

    def __init__(self, labels: Tensor, num_classes: int, *, num_samples: int | None = None) -> None:
        labels = _check_labels(labels, num_classes)
        sqrt_n = torch.bincount(labels, minlength=num_classes).double().sqrt().cpu()
        super().__init__(labels, num_classes, sqrt_n, num_samples=num_samples)


class EffectiveNumber(ClassWeighted):
    """Each example drawn with its class's effective-number weight ``(1 - beta) / (1 - beta^n_c)``, with
    replacement (Cui et al., CVPR 2019, for the weight).

    This is ``ImbalancedDatasetSampler`` of the LDAM-DRW code (kaidic/LDAM-DRW, utils.py) that the
    seed (YyzHarry/imbalanced-semi-self, utils.py) reuses for ``train.py --train_rule Resample``, its
    "CE(Balanced)". (LDAM-DRW's own ``cifar_train.py`` builds that sampler inside its epoch loop, after its
    DataLoader was made with ``sampler=None``, so its "Resample" trains with instance sampling; only the
    seed wires the sampler in.) Its
    "CE(Balanced)": per-example weights ``w_{y_i}``, beta fixed at 0.9999, ``torch.multinomial`` over the
    examples. So class ``c`` is drawn with probability ``∝ n_c w_c = n_c (1 - beta) / (1 - beta^n_c)``:
    ``beta -> 0`` is instance sampling (with replacement), ``beta -> 1`` class-balanced. At beta 0.9999 it
    is mild: on CIFAR-10-LT rho=100 the head class (5,000 images) is still drawn 1.27 times as often as
    the tail (50). We draw a class, then one of its examples uniformly: the source's distribution, not
    its random stream.
    """

    def __init__(self, labels: Tensor, num_classes: int, *, num_samples: int | None = None,
                 beta: float = 0.9999) -> None:
        if not 0.0 <= beta < 1.0:
            raise LongtailError(f"effective-number sampling needs beta in [0, 1), got {beta}",
                                "the source uses beta=0.9999")
        labels = _check_labels(labels, num_classes)
        n = torch.bincount(labels, minlength=num_classes).double().cpu()
        # float64: 1 - beta^n with beta = 0.9999 is a small difference; empty classes get 0 (never drawn).
        per_example = (1.0 - beta) / (1.0 - beta ** n.clamp_min(1))
        super().__init__(labels, num_classes, torch.where(n > 0, n * per_example, 0.0), num_samples=num_samples)
        self.beta = float(beta)


#: Sampler name (as used in configs and on the command line) -> class ``cls(labels, num_classes, *, num_samples)``.
SAMPLERS: dict[str, Callable[..., InstanceBalanced | ClassWeighted]] = {
    "instance": InstanceBalanced,
    "class-balanced": ClassBalanced,
    "class-aware": ClassBalanced,  # Shen et al. 2016's name for the same draw (ImageNet-LT cRT papers)
    "sqrt": SquareRoot,
    "effective-number": EffectiveNumber,  # the seed's "CE(Balanced)" on CIFAR (train.py --train_rule Resample)
}


#: the parameters a sampler takes beyond the labels (``train.cb_beta`` is the effective-number sampler's beta)
SAMPLER_PARAMS: dict[str, tuple[str, ...]] = {"effective-number": ("beta",)}


def make_sampler(name: str, labels: Tensor, num_classes: int, num_samples: int | None = None, *,
                 beta: float = 0.9999) -> Sampler:
    """Build the registered sampler ``name`` over ``labels`` ``(N,)`` with ``num_classes`` classes; ``beta``
    reaches the samplers that declare it in :data:`SAMPLER_PARAMS` (the effective-number sampler)."""
    if name not in SAMPLERS:
        raise LongtailError(f"unknown sampler {name!r}", f"use one of {', '.join(SAMPLERS)}")
    params = {"beta": beta} if "beta" in SAMPLER_PARAMS.get(name, ()) else {}
    return SAMPLERS[name](labels, num_classes, num_samples=num_samples, **params)
