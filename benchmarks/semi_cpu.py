"""Issue 5 at CPU scale: the DARP protocol on real CIFAR-10 (labeled N1=1500, gamma_l=100; unlabeled
M1=3000, gamma_u=100), supervised only -> pseudo-labels -> retrain on labeled + pseudo-labeled.

    python benchmarks/semi_cpu.py --data-root ../shared/data --epochs 20 --arch resnet8

Appends a section to benchmarks/RESULTS.md: top-1 / many / medium / few / rarest-3 of both runs and
the pseudo-labels' per-class precision and recall, all read from the run folders this script wrote.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from longtail.cli import main as longtail  # noqa: E402
from run_recipe import append_section, fmt, machine, rarest  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--arch", default="resnet8")
    p.add_argument("--device", default="cpu")
    p.add_argument("--loss", default="ce", help="the loss of both runs (any remedy, e.g. balanced-softmax)")
    p.add_argument("--out", default=None)
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    a = p.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="longtail-semi-"))
    common = ["--data-root", a.data_root, "--epochs", str(a.epochs), "--device", a.device, "--quiet",
              "--set", f"model.arch={a.arch}", "--set", "train.checkpoint_every=1000", "--set", f"loss.name={a.loss}"]
    steps = [
        ["train", "cifar10-semi-darp-supervised-short", "--out", str(out / "supervised"), *common],
        ["pseudo-label", str(out / "supervised"), "--pool", "darp", "--out", str(out / "pseudo-labels"),
         "--data-root", a.data_root, "--device", a.device],
        ["train", "cifar10-semi-darp-pseudo-short", "--out", str(out / "pseudo"), *common,
         "--set", f"data.pseudo_labels={out / 'pseudo-labels'}"],
    ]
    for argv in steps:
        if longtail(argv) != 0:
            return 1
    sup = json.loads((out / "supervised" / "report.json").read_text())
    semi = json.loads((out / "pseudo" / "report.json").read_text())
    pl = json.loads((out / "pseudo-labels" / "pseudo_labels.json").read_text())["report"]
    lines = [
        "", f"## Semi-supervised at CPU scale: DARP protocol, {a.arch}, {a.epochs} epochs, loss {a.loss} "
        f"({dt.date.today()})", "",
        f"Machine: {machine()}. Command: `python benchmarks/semi_cpu.py --data-root {a.data_root} "
        f"--epochs {a.epochs} --arch {a.arch} --loss {a.loss}`. Labeled {sum(sup['train_counts'])} images "
        f"(N1=1500, gamma_l=100), unlabeled pool {pl['pool_size']} (M1=3000, gamma_u=100); one seed (0); "
        "balanced CIFAR-10 test set, last epoch.", "",
        "| run | train images | top-1 | many | medium | few | rarest 3 |", "|---|---|---|---|---|---|---|",
    ]
    for name, r in (("supervised only", sup), ("+ pseudo-labels", semi)):
        lines.append(f"| {name} | {sum(r['train_counts'])} | {fmt(r['top1'])} | {fmt(r['many'])} | "
                     f"{fmt(r['medium'])} | {fmt(r['few'])} | {fmt(rarest(r, 3))} |")
    lines += ["", f"Pseudo-labels: accuracy {fmt(100 * pl['accuracy'])} %, all {pl['kept']} kept (no threshold).", "",
              "| class | true in pool | kept as this class | precision | recall |", "|---|---|---|---|---|"]
    for row in pl["per_class"]:
        pr = None if row["precision"] is None else 100 * row["precision"]
        rc = None if row["recall"] is None else 100 * row["recall"]
        lines.append(f"| {row['class']} | {row['true']} | {row['kept']} | {fmt(pr, 1)} | {fmt(rc, 1)} |")
    results = Path(a.results)
    append_section(results, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
