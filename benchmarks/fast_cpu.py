"""Train FastNet (longtail.models.fastnet, airbench-style) on CIFAR-10-LT within a wall-time or epoch budget.

    python benchmarks/fast_cpu.py [--arch fastnet-s] [--minutes 5 | --epochs N] [--data-root DIR]
                                  [--loss logit-adjust] [--batch 1024] [--threads N] [--seed 0]

The recipe (airbench's techniques, on the project's own data, augmentation, loss, loop and metrics):
patch-whitening first layer initialised from the long-tailed training images, BatchNorm with a frozen
scale, Nesterov SGD with airbench's decoupled hyperparameters (lr and weight decay per 1024 images,
BatchNorm shifts at ``--bias-scaler`` times the rate), a triangular one-cycle schedule set every step
(``longtail.schedule.onecycle_lr``), large batches, random crop (``--crop`` pixels) and flips, and
horizontal-flip test-time augmentation at evaluation (``longtail.models.FlipTTA``).

With ``--minutes`` the number of epochs is fixed before training from the time of a few calibration
steps (the schedule needs the run's length in advance), so the training time lands near the budget
and the printed seconds are what it took. Prints top-1 and the mean accuracy of the three rarest
classes on the balanced test set, with and without TTA, the load average and the seconds of each
phase. Timings are wall-clock: on a machine shared with other jobs (load average above the core count)
they are slower, and the numbers of a fixed wall-time budget lower, than on a quiet one. On a loaded
machine use ``--threads 1``: two threads wait on each other there (measured on this project's 2-core
machine at load 4-6: 51 s per fastnet-s epoch at batch 512 with one thread, 78 s with two).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from longtail.config import DataConfig  # noqa: E402
from longtail.data.augment import Augment, Batch, eval_batches  # noqa: E402
from longtail.data.semi import load_splits  # noqa: E402
from longtail.loop import EpochRecord, fit, predict  # noqa: E402
from longtail.losses import make_loss  # noqa: E402
from longtail.metrics import summarize  # noqa: E402
from longtail.models import FlipTTA, init_whitening, make_model  # noqa: E402
from longtail.schedule import onecycle_lr  # noqa: E402
from longtail.tasks import SupervisedTask  # noqa: E402

DEFAULT_ROOT = HERE.parent.parent / "shared" / "data"  # holds cifar-10-batches-py


class PerStepTask(SupervisedTask):
    """SupervisedTask whose batches set the optimizer's rates every step: group ``g`` gets
    ``lr_at(epoch + i / steps) * g["lr_scale"]`` before batch ``i`` (the loop sets one rate per epoch)."""

    def __init__(self, *args, optimizer: torch.optim.Optimizer, lr_at, **kw) -> None:
        super().__init__(*args, **kw)
        self.optimizer, self.lr_at = optimizer, lr_at

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[Batch]:
        steps = self.steps_per_epoch
        for i, batch in enumerate(super().batches(epoch, generator)):
            lr = self.lr_at(epoch + i / steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            yield batch


def param_groups(model: torch.nn.Module, lr: float, wd: float, bias_scaler: float) -> list[dict]:
    """BatchNorm shifts at ``bias_scaler`` times the rate with the same decay per step (airbench), the
    rest at ``lr``; frozen parameters (whitening weight, BatchNorm scales) left out."""
    norm = [p for n, p in model.named_parameters() if p.requires_grad and ".norm" in n]
    other = [p for n, p in model.named_parameters() if p.requires_grad and ".norm" not in n]
    return [dict(params=norm, lr=lr * bias_scaler, lr_scale=bias_scaler, weight_decay=wd / bias_scaler),
            dict(params=other, lr=lr, lr_scale=1.0, weight_decay=wd)]


def rarest(summary: dict, k: int = 3) -> float:
    order = sorted(range(len(summary["train_counts"])), key=lambda c: summary["train_counts"][c])[:k]
    return sum(summary["per_class"][c] for c in order) / k


def balanced_head(test, per_class: int):
    """The first ``per_class`` test images of every class (a smaller balanced test set for quick probes)."""
    keep = torch.cat([torch.nonzero(test.labels == c).flatten()[:per_class] for c in range(test.num_classes)])
    return test.subset(keep.sort().values, name=f"{test.name}-first{per_class}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="fastnet-s", help="fastnet-s (16/64/64), fastnet-m (32/128/128), fastnet-l")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=5.0, help="wall-time budget of training (default 5)")
    budget.add_argument("--epochs", type=int, help="a fixed number of epochs instead of a wall-time budget")
    p.add_argument("--data-root", default=str(DEFAULT_ROOT))
    p.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | svhn")
    p.add_argument("--imbalance-ratio", type=float, default=100.0)
    p.add_argument("--loss", default="logit-adjust")
    p.add_argument("--tau", type=float, default=1.0, help="logit-adjusted loss")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr-per-1024", type=float, default=11.5, help="airbench's decoupled rate (default 11.5)")
    p.add_argument("--wd-per-1024", type=float, default=0.0153, help="airbench's decoupled decay (default 0.0153)")
    p.add_argument("--momentum", type=float, default=0.85)
    p.add_argument("--bias-scaler", type=float, default=64.0)
    p.add_argument("--warmup", type=float, default=0.23, help="peak of the triangle, as a fraction of the run")
    p.add_argument("--lr-start", type=float, default=0.2, help="rate at step 0, as a fraction of the peak")
    p.add_argument("--lr-end", type=float, default=0.0, help="rate at the end, as a fraction of the peak")
    p.add_argument("--crop", type=int, default=2, help="random-crop padding in pixels")
    p.add_argument("--no-flip", action="store_true", help="no flips in training nor at test time")
    p.add_argument("--no-whitening", action="store_true", help="keep the identity first layer (an ablation)")
    p.add_argument("--whiten-bias-epochs", type=float, default=None,
                   help="freeze the whitening layer's bias after this many epochs (default: trained throughout)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-per-class", type=int, default=None, help="evaluate on the first N test images per class")
    a = p.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    load_start = os.getloadavg()
    t_setup = time.perf_counter()
    device = torch.device("cpu")
    # the data section of the cifar10-lt-* recipes (longtail.recipes), from the local copy
    data_cfg = DataConfig(dataset=a.dataset, root=a.data_root, download=False, imbalance_ratio=a.imbalance_ratio)
    splits = load_splits(data_cfg, log=lambda m: None)
    train, test = splits.train, splits.test
    if a.test_per_class:
        test = balanced_head(test, a.test_per_class)
    counts = train.class_counts()

    torch.manual_seed(a.seed)
    model = make_model(a.arch, train.num_classes, in_channels=train.image_shape[0])
    t_white = time.perf_counter()
    if not a.no_whitening:
        init_whitening(model, train.images, mean=train.mean, std=train.std)
    white_s = time.perf_counter() - t_white
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)

    # airbench's decoupled hyperparameters -> torch SGD on the mean loss of a batch
    kilostep = 1024 * (1 + 1 / (1 - a.momentum))  # Nesterov's steady-state step / gradient, per 1024 images
    lr = a.lr_per_1024 * a.batch / kilostep
    wd = a.wd_per_1024 * a.batch / kilostep / lr  # decay per step lr * wd, independent of the rate

    def make_opt(m: torch.nn.Module) -> torch.optim.SGD:
        return torch.optim.SGD(param_groups(m, lr, wd, a.bias_scaler), lr=lr, momentum=a.momentum, nesterov=True)

    criterion = make_loss(a.loss, counts, **({"tau": a.tau} if a.loss == "logit-adjust" else {}))
    augment = Augment(crop_padding=a.crop, flip=not a.no_flip)
    steps_per_epoch = math.ceil(len(train) / a.batch)
    setup_s = time.perf_counter() - t_setup

    # The schedule needs the run's length: with a wall-time budget, time a few steps of a copy first.
    calib_s = 0.0
    if a.epochs is None:
        t0 = time.perf_counter()
        probe = copy.deepcopy(model)
        opt = make_opt(probe)
        task = SupervisedTask(train, criterion, batch_size=a.batch, augment=augment)
        gen = torch.Generator().manual_seed(12345)
        times = []
        for _, batch in zip(range(4), task.batches(0, gen)):
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            task.loss(probe, batch).backward()
            opt.step()
            times.append(time.perf_counter() - t)
        step_s = sorted(times[1:])[len(times[1:]) // 2]
        epochs = max(1, int(a.minutes * 60 / (step_s * steps_per_epoch * 1.02)))
        calib_s = time.perf_counter() - t0
        print(f"calibration: {step_s:.2f} s/step x {steps_per_epoch} steps -> {epochs} epochs in "
              f"{a.minutes:g} min", flush=True)
    else:
        epochs = a.epochs

    def lr_at(e: float) -> float:
        return onecycle_lr(e, base_lr=lr, epochs=epochs, warmup_epochs=a.warmup * epochs, start=a.lr_start,
                           end=a.lr_end)

    optimizer = make_opt(model)
    task = PerStepTask(train, criterion, batch_size=a.batch, augment=augment, optimizer=optimizer, lr_at=lr_at)
    whiten = model.backbone.whiten
    t_train = time.perf_counter()

    def on_epoch_end(rec: EpochRecord) -> None:
        if a.whiten_bias_epochs is not None and rec.epoch + 1 >= a.whiten_bias_epochs:
            whiten.bias.requires_grad_(False)
        print(f"epoch {rec.epoch + 1}/{epochs}: loss {rec.train_loss:.4f}, lr at start {rec.lr:.3g}, "
              f"{rec.seconds:.1f} s, elapsed {time.perf_counter() - t_train:.0f} s", flush=True)

    fit(model, task, optimizer, epochs=epochs, lr_at=lr_at, seed=a.seed, device=device,
        on_epoch_end=on_epoch_end, progress=False)
    train_s = time.perf_counter() - t_train

    t_eval = time.perf_counter()
    logits, labels = predict(model, eval_batches(test, 1000), device)
    plain = summarize(logits, labels, counts)
    if not a.no_flip:
        logits, labels = predict(FlipTTA(model), eval_batches(test, 1000), device)
        tta = summarize(logits, labels, counts)
    else:
        tta = plain
    eval_s = time.perf_counter() - t_eval
    load_end = os.getloadavg()

    params = sum(p.numel() for p in model.parameters())
    print(f"\n{a.arch} ({params / 1e6:.2f}M parameters), {a.dataset}-LT rho={a.imbalance_ratio:g}, {a.loss}, "
          f"seed {a.seed}, {epochs} epochs of {steps_per_epoch} steps, batch {a.batch}, "
          f"torch SGD lr {lr:.4g} (x{a.bias_scaler:g} for BN shifts), weight_decay {wd:.4g}, "
          f"momentum {a.momentum} Nesterov, {torch.get_num_threads()} threads")
    print(f"top-1 {tta['top1']:.2f} % (flip TTA), {plain['top1']:.2f} % without; rarest three classes "
          f"{rarest(tta):.2f} % (TTA), {rarest(plain):.2f} % without; test images {len(test)}")
    print(f"seconds: setup {setup_s:.1f} (whitening {white_s:.2f}), calibration {calib_s:.1f}, "
          f"train {train_s:.1f}, eval {eval_s:.1f}")
    print(f"load average (1, 5, 15 min): start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}, "
          f"end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}; {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
