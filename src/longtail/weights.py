"""Per-class loss weights and when to apply them (constant, or deferred re-weighting).

Every scheme returns a ``(C,)`` float32 tensor normalised to sum to ``C`` (so a balanced data set
gets all ones and the loss scale stays comparable to plain training), or ``None`` for no weighting.
The weights are passed to any loss in :mod:`longtail.losses` as ``weight=``.

Schemes, with ``n_c`` the training count of class ``c``:

* ``none``: no weights.
* ``inverse``: ``w_c ∝ 1 / n_c``.
* ``sqrt-inverse``: ``w_c ∝ 1 / sqrt(n_c)``.
* ``class-balanced``: ``w_c ∝ (1 - beta) / (1 - beta^n_c)``, the inverse "effective number" of
  samples (Cui et al., CVPR 2019); ``beta -> 0`` is uniform, ``beta -> 1`` is ``inverse``.

Deferred re-weighting (DRW, Cao et al. 2019) trains unweighted first and switches the weights on
late, once the features are learned::

    >>> drw = DeferredReweighting(ClassCounts((100, 10)), start_epoch=160)
    >>> drw.weight_at(159) is None, drw.weight_at(160).sum().item()
    (True, 2.0)
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor

from .counts import ClassCounts
from .errors import LongtailError

__all__ = [
    "SCHEMES",
    "WEIGHTINGS",
    "WEIGHTING_PARAMS",
    "ConstantWeighting",
    "DeferredReweighting",
    "Weighting",
    "class_weights",
    "make_weighting",
]

def _inverse(n: Tensor) -> Tensor:
    return 1.0 / n


def _sqrt_inverse(n: Tensor) -> Tensor:
    return n.rsqrt()


def _class_balanced(n: Tensor, *, beta: float = 0.9999) -> Tensor:
    """Cui et al. 2019: ``(1 - beta) / (1 - beta^n_c)``, one over the effective number of examples."""
    if not 0.0 <= beta < 1.0:
        raise LongtailError(
            f"class-balanced beta must be in [0, 1), got {beta}",
            "the reference uses beta=0.9999 (beta -> 1 approaches inverse frequency)",
        )
    return (1.0 - beta) / (1.0 - beta**n)  # n >= 1, so beta = 0 gives 1 / 1: uniform


#: weighting scheme (as in configs: ``train.weighting``) -> its per-class weights of the counts ``n`` (C,) float64,
#: before :func:`class_weights` scales them to sum to C. A new scheme is one function and one entry here (and its
#: parameters in :data:`WEIGHTING_PARAMS`; ``config.WEIGHTINGS`` lists the names for validation).
WEIGHTINGS: dict[str, Callable[..., Tensor]] = {
    "inverse": _inverse,
    "sqrt-inverse": _sqrt_inverse,
    "class-balanced": _class_balanced,
}
#: the parameters a scheme takes beyond the counts (``train.cb_beta`` is the class-balanced weighting's beta)
WEIGHTING_PARAMS: dict[str, tuple[str, ...]] = {"class-balanced": ("beta",)}
SCHEMES = ("none", *WEIGHTINGS)


def class_weights(scheme: str, counts: ClassCounts, *, beta: float = 0.9999) -> Tensor | None:
    """Per-class weights of ``scheme`` for ``counts``: ``(C,)`` float32 summing to ``C``, or ``None``.

    ``beta`` reaches the schemes that declare it in :data:`WEIGHTING_PARAMS` (class-balanced, where it must lie
    in ``[0, 1)``).

    >>> class_weights("inverse", ClassCounts((30, 10))).tolist()
    [0.5, 1.5]
    """
    if scheme not in SCHEMES:
        raise LongtailError(f"unknown weighting scheme {scheme!r}", f"use one of {', '.join(SCHEMES)}")
    if scheme == "none":
        return None
    counts.require_nonempty(because=f"the {scheme!r} weight (which grows as n_c shrinks) is infinite")
    # float64: with beta = 0.9999, 1 - beta^n is a small difference that float32 rounds badly.
    params = {"beta": beta} if "beta" in WEIGHTING_PARAMS.get(scheme, ()) else {}
    w = WEIGHTINGS[scheme](counts.tensor(dtype=torch.float64), **params)
    return (w * (counts.num_classes / w.sum())).float()


class Weighting(Protocol):
    """When the training loop should use which per-class weights (``None``: unweighted)."""

    def weight_at(self, epoch: int) -> Tensor | None: ...


class ConstantWeighting:
    """The same weights (or ``None``) at every epoch."""

    def __init__(self, counts: ClassCounts, scheme: str = "none", *, beta: float = 0.9999) -> None:
        self.scheme = scheme
        self._weight = class_weights(scheme, counts, beta=beta)

    def weight_at(self, epoch: int) -> Tensor | None:
        """The weights, ``(C,)`` or ``None``; ``epoch`` (0-based) is ignored."""
        return self._weight

    def __repr__(self) -> str:
        return f"ConstantWeighting(scheme={self.scheme!r})"


class DeferredReweighting:
    """Deferred re-weighting (DRW, Cao et al., NeurIPS 2019): unweighted before ``start_epoch``.

    ``weight_at(epoch)`` (0-based) is ``None`` for ``epoch < start_epoch`` and the ``scheme``
    weights from ``start_epoch`` on. The reference's ``idx = epoch // 160; betas = [0, 0.9999]``
    over 200 epochs is ``DeferredReweighting(counts, start_epoch=160)`` (beta 0 is uniform weights).
    """

    def __init__(
        self, counts: ClassCounts, scheme: str = "class-balanced", *, start_epoch: int = 160, beta: float = 0.9999
    ) -> None:
        if start_epoch < 0:
            raise LongtailError(f"DRW start_epoch must be >= 0, got {start_epoch}", "the reference uses 160 of 200")
        self.scheme = scheme
        self.start_epoch = int(start_epoch)
        self._weight = class_weights(scheme, counts, beta=beta)

    def weight_at(self, epoch: int) -> Tensor | None:
        """``None`` before ``start_epoch``, the ``(C,)`` weights from then on."""
        return None if epoch < self.start_epoch else self._weight

    def __repr__(self) -> str:
        return f"DeferredReweighting(scheme={self.scheme!r}, start_epoch={self.start_epoch})"


def make_weighting(
    scheme: str, counts: ClassCounts, *, start_epoch: int | None = None, beta: float = 0.9999
) -> ConstantWeighting | DeferredReweighting:
    """Constant ``scheme`` weights, or deferred to ``start_epoch`` (DRW) when it is given."""
    if start_epoch is None:
        return ConstantWeighting(counts, scheme, beta=beta)
    return DeferredReweighting(counts, scheme, start_epoch=start_epoch, beta=beta)
