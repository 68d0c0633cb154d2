"""The one training loop that every method plugs into.

``fit`` runs epochs of ``task.batches`` through ``optimizer.step(closure)``. The closure form
lets sharpness-aware optimizers (SAM, rwSAM) evaluate the loss twice without a branch here.
Randomness: epoch ``e`` draws from a generator seeded with ``(seed, e)`` alone, so a run
resumed from a checkpoint at epoch ``e`` sees exactly the batches of an uninterrupted run, and
every process of a distributed run draws the same epoch (each then takes its rows of it, see
:mod:`longtail.distributed`).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, cast

import torch
import torch.nn as nn

from .data.loader import feature_batches
from .devices import autocast_for
from .distributed import all_mean, is_main
from .errors import LongtailError
from .graphs import make_stepper
from .tasks import Task


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 0-based
    lr: float
    train_loss: float
    seconds: float
    steps: int
    capture_s: float = 0.0  # of ``seconds``: capturing CUDA graphs (longtail.graphs), 0 for eager steps


class EpochLines:
    """One line per epoch for logs, pipes and batch jobs, where no progress bar shows:
    ``epoch 3/200: loss 1.2345, lr 0.1, 812 img/s, elapsed 0:01:23, ETA 0:45:10``."""

    def __init__(self, epochs: int, batch_size: int, start_epoch: int, log: Callable[[str], None]) -> None:
        self.epochs, self.batch_size, self.start_epoch, self.log = epochs, batch_size, start_epoch, log
        self.started = time.perf_counter()

    def __call__(self, rec: EpochRecord, loss: float | None = None) -> None:
        elapsed = time.perf_counter() - self.started
        done = rec.epoch + 1
        eta = elapsed / max(done - self.start_epoch, 1) * (self.epochs - done)
        rate = rec.steps * self.batch_size / max(rec.seconds, 1e-9)
        self.log(f"epoch {done}/{self.epochs}: loss {rec.train_loss if loss is None else loss:.4f}, lr {rec.lr:.3g}, "
                 f"{rate:.0f} img/s, elapsed {_clock(elapsed)}, ETA {_clock(eta)}")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def announces(progress: bool | None, main: bool) -> bool:
    """Whether a run prints one line per epoch: on the main process, when progress is automatic and no
    terminal shows a bar (``--quiet`` or ``progress=False`` silence it)."""
    return main and progress is None and not sys.stderr.isatty()


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's draws: a function of (run seed, epoch) alone, so a resumed run draws the same."""
    return seed * 1_000_003 + epoch


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The generator for one epoch; lives on the data's device so draws stay there."""
    g = torch.Generator(device=device)
    g.manual_seed(epoch_seed(seed, epoch))
    return g


def make_sgd(model: nn.Module, *, lr: float, momentum: float, weight_decay: float,
             nesterov: bool = False, decay_bn_bias: bool = True) -> torch.optim.SGD:
    """SGD over every parameter of ``model``. ``decay_bn_bias=False`` puts the one-dimensional parameters (biases,
    BatchNorm's scales and shifts) in a second group without weight decay, as USB's ``bn_wd_skip`` does."""
    if decay_bn_bias:
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=nesterov and momentum > 0)
    params = list(model.parameters())
    groups: list[dict[str, Any]] = [{"params": [p for p in params if p.dim() > 1]},
              {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0)


def fit(
    model: nn.Module,
    task: Task,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    lr_at: Callable[[int], float],
    seed: int,
    device: torch.device,
    amp: str = "auto",
    start_epoch: int = 0,
    on_epoch_end: Callable[[EpochRecord], bool | None] | None = None,
    progress: bool | None = None,
    engine: str = "eager",
) -> list[EpochRecord]:
    """Train ``model`` from ``start_epoch`` to ``epochs``; returns one record per epoch run.

    ``on_epoch_end`` is where the caller evaluates, logs and checkpoints; when it returns True the
    training stops there (a driver's ``stop_after``, used to test resuming). ``engine`` picks how a
    step runs (``longtail.graphs``): ``eager`` (``optimizer.step(closure)``) or ``graph`` (CUDA graphs);
    each record's ``capture_s`` is the part of its time spent capturing graphs. An optimizer that has them
    (``longtail.optim.RunOptimizer``) hears ``optimizer.on_epoch_start(epoch, steps_per_epoch, epochs)`` before
    an epoch's first step and ``optimizer.on_epoch_end(epoch)`` after its last, before ``on_epoch_end``.
    """
    from tqdm.auto import tqdm


    if progress is None:
        progress = sys.stderr.isatty() and is_main()
    records: list[EpochRecord] = []
    step = make_stepper(engine, model, task, optimizer, device, amp)
    bar = tqdm(range(start_epoch, epochs), desc="epochs", disable=not progress, initial=start_epoch, total=epochs)
    captured_before = step.capture_s
    opt_start, opt_end = getattr(optimizer, "on_epoch_start", None), getattr(optimizer, "on_epoch_end", None)
    for epoch in bar:
        t0 = time.perf_counter()
        lr = lr_at(epoch)
        step.start_epoch(lr)
        model.train()
        task.on_epoch_start(epoch)
        gen = epoch_generator(seed, epoch, device)
        total = torch.zeros((), device=device)
        steps = 0
        per_epoch = getattr(task, "steps_per_epoch", None)
        if opt_start is not None:  # e.g. Lookahead's step count, the whitening bias's freeze (longtail.optim)
            opt_start(epoch, per_epoch, epochs)
        # a rate for each step (schedule.per_step): the epoch's number of steps, else None
        every_step = per_epoch if getattr(lr_at, "per_step", False) else None
        for batch in tqdm(task.batches(epoch, gen), desc=f"epoch {epoch + 1}", leave=False, disable=not progress,
                          total=per_epoch):
            if every_step and steps:
                # a per_step schedule (schedule.per_step) takes fractional epochs
                step.start_epoch(cast(Callable[[float], float], lr_at)(epoch + steps / every_step))
            total += step(batch)  # no host sync inside the epoch
            steps += 1
        if opt_end is not None:  # e.g. Lookahead's decay-1 update: the epoch ends on the averaged weights
            opt_end(epoch)
        total = all_mean(total)  # the epoch's loss over all processes (one collective per epoch)
        captured = step.capture_s - captured_before
        captured_before = step.capture_s
        record = EpochRecord(epoch, lr, float(total) / max(steps, 1), time.perf_counter() - t0, steps, captured)
        if not math.isfinite(record.train_loss):  # before on_epoch_end: no checkpoint of a diverged model
            raise LongtailError(f"training diverged in epoch {epoch + 1}: "
                                f"the mean training loss is {record.train_loss}",
                                "lower the learning rate (--lr) or check the data; the run folder keeps its last good "
                                "checkpoint, and --restart starts over with the new settings")
        records.append(record)
        bar.set_postfix(loss=f"{record.train_loss:.3f}", lr=f"{lr:.3g}")
        if on_epoch_end is not None and on_epoch_end(record):
            break
    return records


@torch.no_grad()
def predict(model: nn.Module, batches, device: torch.device, amp: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) as float32 on the CPU, and labels (N,), for an iterable of batches."""
    model.eval()
    outs, labels = [], []
    for b in batches:
        with autocast_for(device, amp):
            outs.append(model(b.images).float().cpu())
        labels.append(b.labels.cpu())
    return torch.cat(outs), torch.cat(labels)


@torch.no_grad()
def extract_features(module: nn.Module, data: Any, device: torch.device, amp: str = "auto", *,
                     fn: Callable[[torch.Tensor], torch.Tensor] | None = None, batch_size: int = 512) -> torch.Tensor:
    """``fn(images)`` (default ``module(images)``) of every image of ``data`` in its own order: ``(N, D)`` float32
    on ``device``, in eval mode (``module``'s mode is restored). Tensors or image files (``feature_batches``)."""
    was_training = module.training
    module.eval()
    fn = fn if fn is not None else module
    out = []
    try:
        for b in feature_batches(data, device, batch_size):
            with autocast_for(device, amp):
                out.append(fn(b.images.to(device)).float())
    finally:
        module.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, int(getattr(module, "out_features", 0)), device=device)
