"""cRT and LWS before and after issue 13: one base run, its classifier re-trained with the second-stage settings
of version 0.1 and with today's (the sources').

    python benchmarks/second_stage_before_after.py --base RUN/seed-0 --out DIR [--methods crt lws]
                                                   [--after-runs TABLE_OUT] [--variants v0.1 source source-bn-frozen]

Version 0.1 trained the head with the base run's own batch size, learning rate, momentum and weight decay, a
cosine rate over 10 epochs, and the frozen backbone's BatchNorm in eval mode. Today the settings are the source's
for the data set (``longtail.decouple.SECOND_STAGES``; on CIFAR BagofTricks-LT: 30 epochs, batch 128, lr 0.1 with
warm-up and x0.1 at 10 / 20, Nesterov, wd 5e-4) and BatchNorm in train mode, as every reference. "Before" runs
today's code with 0.1's settings put back (``second_stage_for`` replaced for the run, ``bn="frozen"``): the
difference measured is the settings', the code being the same. ``--after-runs``: a ``method_table.py`` output
folder whose ``METHOD/seed-N`` runs are today's settings on this base (their reports are read, nothing is re-run).
``source-bn-frozen`` splits the two changes: the source's optimisation with BatchNorm frozen (eval mode) as in 0.1.
One row per run goes to RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import longtail.decouple as decouple  # noqa: E402
from longtail.config import RunConfig  # noqa: E402
from longtail.decouple import SecondStage, decouple_run  # noqa: E402
from run_recipe import append_row, machine, rarest  # noqa: E402

SECTION = "## Second stages before and after issue 13 (benchmarks/second_stage_before_after.py)"
HEADER = ("| date | machine | base run | method | settings | epochs | top-1 | many | medium | rarest 3 | train s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


LABELS = {
    "v0.1": "0.1: the run's own batch / lr / momentum / wd, 10 cosine epochs, BN frozen",
    "source": "the source's (BagofTricks-LT on CIFAR), BN in train mode",
    "source-bn-frozen": "the source's (BagofTricks-LT on CIFAR), BN frozen (eval mode) as in 0.1",
}


def v01_stage(base: Path, method: str) -> SecondStage:
    """Version 0.1's second stage for ``base``: its own optimisation, a cosine rate over 10 epochs."""
    cfg = json.loads((base / "config.json").read_text())["config"]
    t = RunConfig.from_dict(cfg).train
    return SecondStage("longtail 0.1 (the base run's own optimisation, 10 cosine epochs)", {method: 10},
                       batch_size=t.batch_size, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                       nesterov=t.nesterov, schedule="cosine")


def run(base: Path, method: str, variant: str, out: Path, device: str) -> dict[str, Any]:
    quiet: dict[str, Any] = {"progress": False, "log": lambda s: None}
    if variant == "source":
        return decouple_run(base, method, out=out, device=device, **quiet)
    if variant == "source-bn-frozen":
        return decouple_run(base, method, out=out, device=device, bn="frozen", **quiet)
    original = decouple.second_stage_for
    decouple.second_stage_for = lambda dataset, m="crt": v01_stage(base, m)  # type: ignore[assignment]
    try:
        return decouple_run(base, method, out=out, device=device, bn="frozen", **quiet)
    finally:
        decouple.second_stage_for = original  # type: ignore[assignment]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the base run (a seed-N folder with a validation split)")
    p.add_argument("--out", required=True)
    p.add_argument("--methods", nargs="+", default=["crt", "lws"], choices=["crt", "lws"])
    p.add_argument("--variants", nargs="+", default=list(LABELS), choices=list(LABELS))
    p.add_argument("--after-runs", help="method_table.py's output folder: today's runs of this base to re-use")
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    a = p.parse_args()
    base, out, results = Path(a.base), Path(a.out), Path(a.results)
    for method in a.methods:
        for variant in a.variants:
            folder = out / f"{variant}-{method}"
            reuse = Path(a.after_runs) / method / base.name if variant == "source" and a.after_runs else None
            load0, t0 = os.getloadavg()[0], time.perf_counter()
            if reuse is not None and (reuse / "report.json").exists():  # read, never re-run, another tool's run
                r = json.loads((reuse / "report.json").read_text())
            else:
                r = run(base, method, variant, folder, a.device)
            train_s = r.get("timing", {}).get("train_s")
            dataset = RunConfig.from_dict(json.loads((base / "config.json").read_text())["config"]).data.dataset
            epochs = 10 if variant == "v0.1" else decouple.second_stage_for(dataset, method).epochs[method]
            label = LABELS[variant]
            row = (f"| {dt.date.today()} | {machine()}, load average {load0:.1f} -> {os.getloadavg()[0]:.1f} | "
                   f"`{base}` | {method} | {label} | {epochs} | {r['top1']:.2f} | {r['many']:.2f} | "
                   f"{r['medium']:.2f} | {rarest(r, 3):.2f} | "
                   f"{'-' if train_s is None else f'{train_s:.0f}'} |")
            append_row(results, row, section=SECTION, header=HEADER)
            print(row, f"(wall {time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
