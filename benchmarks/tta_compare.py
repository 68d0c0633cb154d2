"""Test-time augmentation compared on finished runs: each run's last checkpoint evaluated with every ``model.tta``
mode (none, flip, flip-translate), nothing re-trained, the runs' reports left as they are.

    python benchmarks/tta_compare.py RUN [RUN ...] [--device cpu]

One row per run and mode goes to RESULTS.md (top-1, rarest three, NLL, and the seconds the evaluation took with
the load average beside them: flip-translate runs six forward passes per image, flip two, none one).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from longtail.config import TTA_MODES  # noqa: E402
from longtail.experiment import evaluate_checkpoint  # noqa: E402
from run_recipe import append_row, machine, rarest  # noqa: E402

SECTION = "## Test-time augmentation on finished runs (benchmarks/tta_compare.py)"
HEADER = ("| date | machine | run | recipe | trained with | evaluated with | top-1 | rarest 3 | NLL | eval s |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished run folders (one seed each)")
    p.add_argument("--modes", nargs="+", default=list(TTA_MODES), choices=list(TTA_MODES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    a = p.parse_args()
    results = Path(a.results)
    for run in a.runs:
        for mode in a.modes:
            load0, t0 = os.getloadavg()[0], time.perf_counter()
            r = evaluate_checkpoint(run, device=a.device, write=False, tta=mode)
            secs = time.perf_counter() - t0
            tail = rarest(r, 3)
            row = (f"| {dt.date.today()} | {machine()}, load average {load0:.1f} -> {os.getloadavg()[0]:.1f} | "
                   f"`{run}` | {r.get('recipe')} | {r['config']['model']['tta']} | {mode} | {r['top1']:.2f} | "
                   f"{'n/a' if tail is None else f'{tail:.2f}'} | {r['nll']:.4f} | {secs:.0f} |")
            append_row(results, row, section=SECTION, header=HEADER)
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
