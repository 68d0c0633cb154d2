"""Issue 13's changed recipes before and after, at a short schedule on the CPU: each pair trains one recipe twice
on the same data and seed, once with version 0.1's behaviour put back and once with today's (the source's).

    python benchmarks/faithful_before_after.py --data-root ../shared/data --out DIR [--pairs darp-split ...]
                                               [--ssp-from TABLE_OUT]

Every pair changes exactly the settings that issue 13 changed for that recipe (today's code for both halves: the
old behaviour is a setting now), and shortens both halves alike (a smaller network, fewer epochs; the shortening is
in the row). The pairs:

- ``darp-split`` (item 3): DARP's labeled split as 0.1 took it (each class shuffled) against DARP's and ABC's
  (the first images of each class in file order); ``cifar10-semi-darp-supervised-short`` on ResNet-8, 20 epochs.
- ``cb-sampler`` (item 4): the SSP recipe's "CE (Balanced)" with 0.1's sampler (uniform over classes) against the
  seed's (effective-number weights, beta 0.9999); the fast protocol (FastNet-M, 16 epochs, CE) from the method
  table's rotation pre-training of the same seed (``--ssp-from``), the short form of
  ``cifar10-lt-ce-cb-rotation-ssp``.
- ``fixmatch`` (item 6): ``cifar10-semi-darp-fixmatch-short`` (0.1's FixMatch: mu 7, batch 128, step schedule, no
  EMA, simplified strong view, file-order split) against ``cifar10-semi-darp-fixmatch`` (USB's protocol: mu 2, batch
  64, cosine 7/16, EMA 0.999, RandAugment(3) + Cutout, USB's split and normalisation), both on ResNet-8 (not
  WRN-28-2) and with about the same number of images through the network (10 epochs of 0.1's, 30 of USB's).
- ``moco-shuffle-bn`` (item 5): MoCo in one process as 0.1 ran it (BatchNorm over the whole batch, no shuffle)
  against shuffle-BN emulated over 8 sub-batches as MoCo's CIFAR demo does; ``cifar10-lt-moco`` on ResNet-8 for
  5 epochs, k-NN and linear probe on the frozen features.
- ``simsiam-probe`` (item 7): SimSiam with re-weighted SAM evaluated as 0.1 did (``cifar10-lt-simsiam-rwsam-r32``'s
  probes on the long-tailed features) against Liu et al.'s protocol (``cifar10-lt-simsiam-rwsam``: the linear probe
  on all of balanced CIFAR-10, their optimisation and augmentation, BatchNorm updated in both SAM passes), both on
  ResNet-8 for 5 epochs with 20-epoch probes: the two halves measure different things (that is the change), and the
  row says which probe each number is.

Rows go to RESULTS.md (one per run, the load average beside the seconds). A half with a row there is not run again;
a finished run folder without a row is read back, not re-run. ``--halves before`` and ``--halves after`` in two
processes run a pair's halves side by side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from longtail.config import apply_overrides  # noqa: E402
from longtail.experiment import train_one  # noqa: E402
from longtail.recipes import get_recipe  # noqa: E402
from longtail.ssl.run import pretrain_run  # noqa: E402
from run_recipe import append_row, machine, rarest  # noqa: E402

SECTION = "## Issue 13's changed recipes before and after, short schedules (benchmarks/faithful_before_after.py)"
HEADER = ("| date | machine | item | half | recipe | what differs | shortened to | result | train s |\n"
          "|---|---|---|---|---|---|---|---|---|")


@dataclass(frozen=True)
class Half:
    recipe: str
    settings: tuple[tuple[str, Any], ...]  # what this half sets (the behaviour under test)
    label: str


@dataclass(frozen=True)
class Pair:
    key: str
    item: str
    before: Half
    after: Half
    short: tuple[tuple[str, Any], ...]  # the shortening, applied to both halves
    short_label: str
    pretrain: str | None = None  # a `longtail pretrain` method (the pair pre-trains instead of training)
    ssp: bool = False  # start from the method table's rotation pre-training of the seed


PAIRS = [
    Pair("darp-split", "3: DARP split",
         Half("cifar10-semi-darp-supervised-short", (("data.darp_order", "shuffled"),),
              "0.1: each class shuffled (seed 0), then its first n"),
         Half("cifar10-semi-darp-supervised-short", (("data.darp_order", "file"),),
              "DARP / ABC: the first n of each class in file order"),
         (("model.arch", "resnet8"), ("train.epochs", 20)), "ResNet-8, 20 epochs"),
    Pair("cb-sampler", "4: CE (Balanced) sampler",
         Half("cifar10-lt-fast-ce", (("train.sampler", "class-balanced"),), "0.1: uniform over classes"),
         Half("cifar10-lt-fast-ce", (("train.sampler", "effective-number"),),
              "the seed's: effective-number weights, beta 0.9999"),
         (), "the fast protocol (FastNet-M, 16 epochs) from rotation SSP of the same protocol", ssp=True),
    Pair("fixmatch", "6: FixMatch protocol",
         Half("cifar10-semi-darp-fixmatch-short", (("train.epochs", 10), ("data.normalization", "none")),
              "0.1: mu 7, batch 128, step schedule, no EMA, simplified strong view, file-order split, "
              "CIFAR reference normalisation"),
         Half("cifar10-semi-darp-fixmatch", (("train.epochs", 30),),
              "USB: mu 2, batch 64, cosine 7/16, EMA 0.999, RandAugment(3) + Cutout, USB split"),
         (("model.arch", "resnet8"),),
         "ResNet-8; 10 epochs of 0.1's (290 steps), 30 of USB's (1,770 steps): about 0.56M images each"),
    Pair("moco-shuffle-bn", "5: MoCo shuffle-BN",
         Half("cifar10-lt-moco", (("ssl.moco_bn_splits", 1),), "0.1 in one process: BatchNorm over the whole batch"),
         Half("cifar10-lt-moco", (("ssl.moco_bn_splits", 8),), "shuffle-BN emulated over 8 sub-batches (MoCo's demo)"),
         (("model.arch", "resnet8"), ("train.epochs", 5)), "ResNet-8, 5 epochs", pretrain="moco"),
    Pair("simsiam-probe", "7: SimSiam + rwSAM protocol",
         Half("cifar10-lt-simsiam-rwsam-r32", (),
              "0.1: probes on the long-tailed features (standardised, cosine, lr 0.1), SAM's BN from the first pass"),
         Half("cifar10-lt-simsiam-rwsam", (),
              "Liu: the probe on all of balanced CIFAR-10 (lr 30, steps, raw features, bicubic crops every epoch, "
              "test 36 -> 32), BN from both SAM passes"),
         (("model.arch", "resnet8"), ("train.epochs", 5), ("ssl.probe_epochs", 20)),
         "ResNet-8 (not ResNet-32 / ResNet-18), 5 epochs, probes 20 epochs", pretrain="simsiam-rwsam"),
]
BY_KEY = {p.key: p for p in PAIRS}


def run_half(p: Pair, half: Half, out: Path, a: argparse.Namespace) -> dict[str, Any]:
    changes = {**dict(p.short), **dict(half.settings), "seed": a.seed, "data.root": a.data_root,
               "train.device": a.device}
    if p.ssp:
        ssp = Path(a.ssp_from) / "ssp-rotation" / f"seed-{a.seed}"
        if not (ssp / "report.json").exists():
            raise SystemExit(f"{ssp} has no finished rotation pre-training: run benchmarks/method_table.py first "
                             "(its ssp rows make it) or point --ssp-from at its output folder")
        changes["train.init_from"] = str(ssp)
    cfg = apply_overrides(get_recipe(half.recipe).config, changes)
    cfg = replace(cfg, recipe=f"{half.recipe}+{p.key}")
    quiet: dict[str, Any] = {"progress": False, "log": lambda s: None}
    if p.pretrain is not None:
        return pretrain_run(p.pretrain, cfg, out, **quiet)
    return train_one(cfg, out, **quiet)


def result_text(r: dict[str, Any], pretrain: bool) -> str:
    if pretrain:
        return (f"k-NN {r['knn_top1']:.2f}, probe {r['linear_probe_top1']:.2f}, "
                f"balanced probe {r['top1']:.2f}")
    tail = rarest(r, 3)
    return f"top-1 {r['top1']:.2f}, rarest 3 {'n/a' if tail is None else f'{tail:.2f}'}"


def recorded(results: Path, pair: Pair, name: str, seed: int) -> bool:
    """Whether ``results`` holds the row of this half (the rows are the record; the run folders, outside the
    repository, may be gone)."""
    text = results.read_text() if results.exists() else ""
    if SECTION not in text:
        return False
    block = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return any(line.startswith("|") and f"| {pair.item} | {name} |" in line
               and f"| {pair.short_label}; seed {seed} |" in line for line in block.splitlines())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--out", required=True)
    p.add_argument("--pairs", nargs="+", default=[q.key for q in PAIRS], choices=[q.key for q in PAIRS])
    p.add_argument("--ssp-from", default="runs/table", help="method_table.py's output folder (cb-sampler)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--halves", nargs="+", default=["before", "after"], choices=["before", "after"],
                   help="which halves to run (two processes can run the two halves of a pair side by side)")
    a = p.parse_args()
    results = Path(a.results)
    for key in a.pairs:
        pair = BY_KEY[key]
        for name, half in (("before", pair.before), ("after", pair.after)):
            folder = Path(a.out) / key / f"{name}-seed-{a.seed}"
            if name not in a.halves:
                continue
            if recorded(results, pair, name, a.seed):
                print(f"{key} {name}, seed {a.seed}: recorded in {results} already", flush=True)
                continue
            load0, t0 = os.getloadavg()[0], time.perf_counter()
            r = (json.loads((folder / "report.json").read_text()) if (folder / "report.json").exists()
                 else run_half(pair, half, folder, a))
            train_s = r.get("timing", {}).get("train_s")
            row = (f"| {dt.date.today()} | {machine()}, load average {load0:.1f} -> {os.getloadavg()[0]:.1f} | "
                   f"{pair.item} | {name} | `{half.recipe}` | {half.label} | {pair.short_label}; seed {a.seed} | "
                   f"{result_text(r, pair.pretrain is not None)} | "
                   f"{'-' if train_s is None else f'{train_s:.0f}'} |")
            append_row(results, row, section=SECTION, header=HEADER)
            print(row, f"(wall {time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
