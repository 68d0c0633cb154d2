"""Learning-rate schedules as pure functions of the epoch (0-based).

The reference (Cao et al. 2019) sets the rate once per epoch: a linear warm-up over the first
5 epochs, then x0.01 after epoch 160 and x0.0001 after epoch 180 of 200. ``step_lr`` scales the
warm-up and the milestones to the run's epoch count, so 200 epochs is exactly the reference.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from .errors import LongtailError

if TYPE_CHECKING:
    from .config import RunConfig

REFERENCE_EPOCHS = 200


def scaled_epoch(reference_epoch: float, epochs: int, reference_epochs: int = REFERENCE_EPOCHS) -> int:
    """An epoch of the 200-epoch reference, moved to a run of ``epochs`` epochs."""
    return int(round(reference_epoch * epochs / reference_epochs))


def step_lr(
    epoch: int,
    *,
    base_lr: float,
    epochs: int,
    warmup_epochs: float = 5,
    milestones: tuple[float, ...] = (160, 180),
    factors: tuple[float, ...] = (0.01, 0.0001),
) -> float:
    """The reference schedule; ``warmup_epochs`` and ``milestones`` are in 200-epoch units.

    >>> [step_lr(e, base_lr=0.1, epochs=200) for e in (0, 4, 5, 160, 180)]
    [0.02, 0.1, 0.1, 0.001, 1e-05]
    """
    e = epoch + 1  # the reference counts epochs from 1 here
    warm = scaled_epoch(warmup_epochs, epochs)
    if e <= warm:
        return base_lr * e / warm
    lr = base_lr
    for m, f in zip(milestones, factors):
        if e > scaled_epoch(m, epochs):
            lr = base_lr * f
    return round(lr, 12)


def cosine_lr(epoch: int, *, base_lr: float, epochs: int, warmup_epochs: float = 0) -> float:
    """Cosine decay to 0 over the run, after an optional linear warm-up (given in real epochs)."""
    if epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    t = (epoch - warmup_epochs) / max(1.0, epochs - warmup_epochs)
    return 0.5 * base_lr * (1 + math.cos(math.pi * t))


def onecycle_lr(epoch: float, *, base_lr: float, epochs: float, warmup_epochs: float = 0, start: float = 0.2,
                end: float = 0.0) -> float:
    """A triangle (airbench's "one-cycle"): linear from ``start * base_lr`` at epoch 0 up to ``base_lr`` at
    ``warmup_epochs`` (real epochs), then linear down to ``end * base_lr`` at ``epochs``.

    ``epoch`` may be fractional (``epoch + step / steps_per_epoch``): ``lr_function`` wraps it in
    :class:`per_step`, so the loop sets a new rate every step.

    >>> [round(onecycle_lr(e, base_lr=1.0, epochs=10, warmup_epochs=2), 6) for e in (0, 1, 2, 6, 10, 11)]
    [0.2, 0.6, 1.0, 0.5, 0.0, 0.0]
    """
    if epochs <= 0:
        raise LongtailError(f"a schedule needs epochs > 0, got {epochs}")
    e = min(max(float(epoch), 0.0), float(epochs))
    warm = min(max(float(warmup_epochs), 0.0), float(epochs))
    if e < warm:
        return base_lr * (start + (1.0 - start) * e / warm)
    if epochs == warm:
        return base_lr
    return base_lr * (1.0 + (end - 1.0) * (e - warm) / (epochs - warm))


def fixmatch_cosine_lr(epoch: float, *, base_lr: float, epochs: float, warmup_epochs: float = 0,
                       cycles: float = 7 / 16) -> float:
    """FixMatch's cosine (Sohn et al. 2020; USB's ``get_cosine_schedule_with_warmup``): at step ``k`` of ``K``,
    ``lr = base_lr * cos(cycles * pi * k / K)``, with ``cycles`` 7/16 (the rate ends at cos(7 pi / 16) = 0.195 of
    ``base_lr``, not 0), after an optional linear warm-up ``base_lr * k / warm`` (USB's default: none).

    ``epoch`` is fractional (``epoch + step / steps_per_epoch``, :class:`per_step`), so ``k / K`` is
    ``epoch / epochs``; ``warmup_epochs`` is in real epochs.

    >>> [round(fixmatch_cosine_lr(e, base_lr=0.03, epochs=16), 6) for e in (0, 8, 16)]
    [0.03, 0.02319, 0.005853]
    """
    if epochs <= 0:
        raise LongtailError(f"a schedule needs epochs > 0, got {epochs}")
    e = min(max(float(epoch), 0.0), float(epochs))
    warm = min(max(float(warmup_epochs), 0.0), float(epochs))
    if e < warm:
        return base_lr * e / warm
    t = (e - warm) / max(float(epochs) - warm, 1e-12)
    return base_lr * max(0.0, math.cos(math.pi * cycles * t))


SCHEDULES = ("step", "cosine", "onecycle", "fixmatch-cosine")


class per_step:  # noqa: N801  (used as a function wrapper)
    """A schedule that the loop evaluates every step, at ``epoch + step / steps_per_epoch`` (the others once
    per epoch, at the epoch's start): ``fit`` reads ``per_step``."""

    per_step = True

    def __init__(self, fn: Callable[[float], float]) -> None:
        self.fn = fn

    def __call__(self, epoch: float) -> float:
        return self.fn(epoch)


def lr_function(cfg: RunConfig) -> Callable[[int], float]:
    """The learning rate of each epoch of a run, from its ``train`` section."""
    t = cfg.train
    if t.schedule == "step":
        return lambda e: step_lr(e, base_lr=t.lr, epochs=t.epochs, warmup_epochs=t.warmup_epochs,
                                 milestones=t.milestones)
    if t.schedule == "cosine":
        return lambda e: cosine_lr(e, base_lr=t.lr, epochs=t.epochs, warmup_epochs=t.warmup_epochs)
    if t.schedule == "onecycle":  # warmup_epochs in 200-epoch units, as for step; a new rate every step
        warm = t.warmup_epochs * t.epochs / REFERENCE_EPOCHS  # the peak's share of the run, as for step
        return per_step(lambda e: onecycle_lr(e, base_lr=t.lr, epochs=t.epochs, warmup_epochs=warm))
    if t.schedule == "fixmatch-cosine":  # warmup_epochs in real epochs, as for cosine; a new rate every step
        return per_step(lambda e: fixmatch_cosine_lr(e, base_lr=t.lr, epochs=t.epochs, warmup_epochs=t.warmup_epochs))
    raise LongtailError(f"unknown schedule {t.schedule!r}", "use step, cosine, onecycle or fixmatch-cosine")


def describe_schedule(cfg: RunConfig) -> list[str]:
    """The run's learning rate and deferred re-weighting in its own epochs (1-based, as logs count them), e.g.
    ``["learning rate 0.1: linear warm-up over epochs 1-4, the full rate from epoch 5, x0.01 from epoch 161,
    x0.0001 from epoch 181 (of 200 epochs)"]``:
    what ``--show-config`` prints beside the settings, which give milestones in 200-epoch units."""
    t = cfg.train
    lr_at = lr_function(cfg)
    rates = [lr_at(e) for e in range(t.epochs)]
    if t.schedule == "step":
        warm = next((e for e, r in enumerate(rates) if r >= t.lr), t.epochs)  # epochs below the base rate
        parts = [f"linear warm-up over epochs 1-{warm}, the full rate from epoch {warm + 1}"] if warm else []
        for e in range(warm + 1, t.epochs):
            if rates[e] != rates[e - 1]:
                parts.append(f"x{rates[e] / t.lr:.4g} from epoch {e + 1}")
        text = ", ".join(parts) if parts else "constant"
    elif t.schedule == "cosine":
        text = (f"linear warm-up over {t.warmup_epochs:g} epochs, then " if t.warmup_epochs else "") + \
            "cosine decay to 0"
    elif t.schedule == "fixmatch-cosine":
        text = (f"linear warm-up over {t.warmup_epochs:g} epochs, then " if t.warmup_epochs else "") + \
            "lr x cos(7 pi k / 16 K) at step k of K (FixMatch, USB), set every step, ending at x0.195"
    else:
        peak = t.warmup_epochs * t.epochs / REFERENCE_EPOCHS
        text = f"one-cycle: from x0.2 up to the peak at epoch {peak:.3g}, then linearly to 0, set every step"
    lines = [f"learning rate {t.lr:g}: {text} (of {t.epochs} epochs)"]
    if t.drw_start is not None:
        lines.append(f"deferred re-weighting ({t.weighting}) from epoch {scaled_epoch(t.drw_start, t.epochs) + 1} "
                     f"(train.drw_start {t.drw_start:g} in 200-epoch units)")
    return lines
