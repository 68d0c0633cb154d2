"""How far a finished run's decision rule is from its best post-hoc logit shift: each run's last checkpoint (with the
run's own test-time augmentation) evaluated with its logits shifted by ``-t log(prior)`` for several t, nothing
re-trained, the run's report left as it is.

    python benchmarks/posthoc_shift.py RUN [RUN ...] [--shifts -0.5 -0.25 0 0.25 0.5 0.75 1] [--device cpu]

A diagnostic, on the **test set**: it says whether a loss already puts the balanced-accuracy optimum at t = 0 (as
the logit-adjusted loss should, Menon et al. 2021) or leaves points that a post-hoc shift would find; it is never a
way to choose t (``longtail decouple --method posthoc-la`` chooses it on a validation split). One row per run and
shift goes to RESULTS.md (top-1 and the rarest three classes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from longtail.checkpoints import load_checkpoint, model_from_checkpoint, resolve_checkpoint  # noqa: E402
from longtail.config import RunConfig  # noqa: E402
from longtail.data.augment import eval_batches  # noqa: E402
from longtail.data.semi import load_splits  # noqa: E402
from longtail.loop import predict  # noqa: E402
from longtail.metrics import summarize  # noqa: E402
from longtail.models.fastnet import tta_model  # noqa: E402
from run_recipe import append_row, machine, rarest  # noqa: E402

SECTION = "## Post-hoc logit shifts of finished runs, on the test set (benchmarks/posthoc_shift.py; a diagnostic)"
HEADER = ("| date | machine | run | recipe | seed | shift t (logits - t log prior) | top-1 | rarest 3 |\n"
          "|---|---|---|---|---|---|---|---|")


def shifted(run: str, shifts: list[float], data_root: str | None, device: str) -> list[tuple[float, dict]]:
    """``(t, summary)`` for each shift t: the run's test logits (its own ``model.tta``) minus t log(train prior)."""
    ckpt = resolve_checkpoint(run)
    state = load_checkpoint(ckpt)
    cfg = RunConfig.from_dict(state["config"])
    if data_root is not None:
        cfg = replace(cfg, data=replace(cfg.data, root=data_root))
    dev = torch.device(device)
    splits = load_splits(cfg.data, log=lambda _: None).to(dev)
    counts = splits.train.class_counts()
    model = model_from_checkpoint(state, splits.train.num_classes, splits.train.image_shape[0], str(ckpt)).to(dev)
    logits, labels = predict(tta_model(model, cfg.model.tta), eval_batches(splits.test, 512), dev, cfg.train.amp)
    prior = torch.tensor(counts.counts, dtype=torch.float64)
    log_prior = torch.log(prior / prior.sum()).float()
    return [(t, {**summarize(logits - t * log_prior, labels, counts), "recipe": cfg.recipe, "seed": cfg.seed})
            for t in shifts]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished run folders (one seed each)")
    p.add_argument("--shifts", type=float, nargs="+", default=[-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--data-root", default=None, help="where the data is, when not where the run found it")
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    a = p.parse_args()
    for run in a.runs:
        for t, r in shifted(run, a.shifts, a.data_root, a.device):
            tail = rarest(r, 3)
            tail_s = "n/a" if tail is None else f"{tail:.2f}"
            row = (f"| {dt.date.today()} | {machine()}, load average {os.getloadavg()[0]:.1f} | `{run}` | "
                   f"{r['recipe']} | {r['seed']} | {t:g} | {r['top1']:.2f} | {tail_s} |")
            append_row(Path(a.results), row, section=SECTION, header=HEADER)
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
