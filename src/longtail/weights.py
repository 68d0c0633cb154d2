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
* ``inverse-power``: ``w_c ∝ (n_c / N)^-power``; ``power`` 1 is ``inverse``, 0.5 ``sqrt-inverse``, 0 uniform.
  Deferred (``start_epoch``), it is ADRW (Wang et al., NeurIPS 2023), see :func:`_inverse_power`.

Deferred re-weighting (DRW, Cao et al. 2019) trains unweighted first and switches the weights on
late, once the features are learned::

    >>> drw = DeferredReweighting(ClassCounts((100, 10)), start_epoch=160)
    >>> drw.weight_at(159) is None, drw.weight_at(160).sum().item()
    (True, 2.0)

A loss whose form changes when the deferred weights switch on (``vs-tla``, :class:`longtail.losses.TruncatedVS`)
asks :func:`reweighting_started`.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Protocol

import torch
from torch import Tensor

from .config import TrainConfig
from .counts import ClassCounts
from .errors import LongtailError
from .schedule import scaled_epoch

__all__ = [
    "SCHEMES",
    "WEIGHTINGS",
    "WEIGHTING_PARAMS",
    "ConstantWeighting",
    "DeferredReweighting",
    "Weighting",
    "class_weights",
    "make_weighting",
    "reweighting_started",
    "weighting_from_config",
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


def _inverse_power(n: Tensor, *, power: float = 1.0) -> Tensor:
    """``(n_c / N)^-power``: ADRW's weights (Wang et al., NeurIPS 2023) before normalisation.

    wang22ti/DDC ``cifar_train_sam.py`` (bcae46e, lines 209-216; ``cifar_train.py`` 210-217 the same):
    ``per_cls_weights = (np.array(cls_num_list) / sum(cls_num_list)) ** (- args.tro)`` once
    ``epoch // args.t_reweight`` is non-zero, ``np.power(1.0, cls_num_list)`` (all ones) before, then
    ``per_cls_weights / np.sum(per_cls_weights) * len(cls_num_list)``; ``power`` is their ``--tro`` (argparse
    default 1.0). The deferral is :class:`DeferredReweighting`'s (all-ones weights and none give the same loss).
    """
    if not math.isfinite(power):
        raise LongtailError(f"the inverse-power weighting needs a finite power, got {power}",
                            "use e.g. power=0.15 (ADRW on CIFAR-10-LT); 1 is inverse frequency")
    return (n / n.sum()) ** -power


#: weighting scheme (as in configs: ``train.weighting``) -> its per-class weights of the counts ``n`` (C,) float64,
#: before :func:`class_weights` scales them to sum to C. A new scheme is one function and one entry here (and its
#: parameters in :data:`WEIGHTING_PARAMS`; ``config.WEIGHTINGS`` lists the names for validation).
WEIGHTINGS: dict[str, Callable[..., Tensor]] = {
    "inverse": _inverse,
    "sqrt-inverse": _sqrt_inverse,
    "class-balanced": _class_balanced,
    "inverse-power": _inverse_power,
}
#: the parameters a scheme takes beyond the counts (``train.cb_beta`` is the class-balanced weighting's beta,
#: ``train.weighting_power`` the inverse-power weighting's power)
WEIGHTING_PARAMS: dict[str, tuple[str, ...]] = {"class-balanced": ("beta",), "inverse-power": ("power",)}
SCHEMES = ("none", *WEIGHTINGS)


def class_weights(scheme: str, counts: ClassCounts, *, beta: float = 0.9999, power: float = 1.0) -> Tensor | None:
    """Per-class weights of ``scheme`` for ``counts``: ``(C,)`` float32 summing to ``C``, or ``None``.

    ``beta`` and ``power`` reach the schemes that declare them in :data:`WEIGHTING_PARAMS` (class-balanced's
    beta, which must lie in ``[0, 1)``; inverse-power's power).

    >>> class_weights("inverse", ClassCounts((30, 10))).tolist()
    [0.5, 1.5]
    """
    if scheme not in SCHEMES:
        raise LongtailError(f"unknown weighting scheme {scheme!r}", f"use one of {', '.join(SCHEMES)}")
    if scheme == "none":
        return None
    counts.require_nonempty(because=f"the {scheme!r} weight (which grows as n_c shrinks) is infinite")
    # float64: with beta = 0.9999, 1 - beta^n is a small difference that float32 rounds badly.
    given = {"beta": beta, "power": power}
    params = {k: given[k] for k in WEIGHTING_PARAMS.get(scheme, ())}
    w = WEIGHTINGS[scheme](counts.tensor(dtype=torch.float64), **params)
    return (w * (counts.num_classes / w.sum())).float()


class Weighting(Protocol):
    """When the training loop should use which per-class weights (``None``: unweighted)."""

    def weight_at(self, epoch: int) -> Tensor | None: ...


class ConstantWeighting:
    """The same weights (or ``None``) at every epoch."""

    def __init__(self, counts: ClassCounts, scheme: str = "none", *, beta: float = 0.9999, power: float = 1.0) -> None:
        self.scheme = scheme
        self._weight = class_weights(scheme, counts, beta=beta, power=power)

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
    ADRW (Wang et al. 2023) over 400 epochs is ``DeferredReweighting(counts, "inverse-power", start_epoch=320,
    power=tro)``: their ``epoch // t_reweight`` with ``t_reweight = (epochs // 200) * 160``.
    """

    def __init__(
        self, counts: ClassCounts, scheme: str = "class-balanced", *, start_epoch: int = 160, beta: float = 0.9999,
        power: float = 1.0,
    ) -> None:
        if start_epoch < 0:
            raise LongtailError(f"DRW start_epoch must be >= 0, got {start_epoch}", "the reference uses 160 of 200")
        self.scheme = scheme
        self.start_epoch = int(start_epoch)
        self._weight = class_weights(scheme, counts, beta=beta, power=power)

    def weight_at(self, epoch: int) -> Tensor | None:
        """``None`` before ``start_epoch``, the ``(C,)`` weights from then on."""
        return None if epoch < self.start_epoch else self._weight

    def __repr__(self) -> str:
        return f"DeferredReweighting(scheme={self.scheme!r}, start_epoch={self.start_epoch})"


def make_weighting(
    scheme: str, counts: ClassCounts, *, start_epoch: int | None = None, beta: float = 0.9999, power: float = 1.0
) -> ConstantWeighting | DeferredReweighting:
    """Constant ``scheme`` weights, or deferred to ``start_epoch`` (DRW) when it is given."""
    if start_epoch is None:
        return ConstantWeighting(counts, scheme, beta=beta, power=power)
    return DeferredReweighting(counts, scheme, start_epoch=start_epoch, beta=beta, power=power)


def weighting_from_config(train: TrainConfig, counts: ClassCounts) -> ConstantWeighting | DeferredReweighting:
    """The weighting a run's ``train`` section asks for: ``train.weighting`` with its parameters
    (``cb_beta``, ``weighting_power``), deferred to ``train.drw_start`` (200-epoch units, scaled to the run's
    epochs as the step schedule's milestones) when it is set."""
    start = None if train.drw_start is None else scaled_epoch(train.drw_start, train.epochs)
    if train.weighting != "none" and train.drw_start is not None and train.drw_start > 200:
        warnings.warn(f"train.drw_start={train.drw_start:g} is past the end of any run (200-epoch units: 200 is the "
                      f"last epoch), so train.weighting={train.weighting} never starts; the reference uses 160",
                      stacklevel=2)
    return make_weighting(train.weighting, counts, start_epoch=start, beta=train.cb_beta, power=train.weighting_power)


def reweighting_started(weighting: Weighting | None, epoch: int) -> bool:
    """Whether ``epoch`` (0-based) is in the re-weighted stage of a *deferred* weighting (DRW, ADRW): what a
    loss that changes with that stage (TLA, :meth:`longtail.losses.TruncatedVS.truncate`) is told at each
    epoch's start. False for a constant weighting or none (the source's ``-T`` comes only with deferral).

    >>> drw = DeferredReweighting(ClassCounts((100, 10)), "inverse-power", start_epoch=320, power=0.15)
    >>> reweighting_started(drw, 319), reweighting_started(drw, 320), reweighting_started(None, 320)
    (False, True, False)
    """
    return isinstance(weighting, DeferredReweighting) and epoch >= weighting.start_epoch
