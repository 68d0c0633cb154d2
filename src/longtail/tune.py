"""Choosing a setting on the validation split: one run per point of a grid, the best by validation score.

Weight balancing (Alshammari et al., CVPR 2022) owes much of its gain to a weight decay found by grid search, and
most long-tailed remedies have one strength (tau, gamma, beta) that their authors tuned. ``longtail tune`` makes that
search a command, done the honest way: every point trains into a run folder of its own (so a stopped search resumes
and a finished point is not trained again), the choice uses only the validation split (``data.val_per_class`` held
out of the training images, or ``data.val_split``), and the test scores of every point are written beside it for
the record, never used to choose::

    longtail tune cifar10-lt-ce --val-per-class 20 --grid train.weight_decay=2e-4,5e-4,1e-3,5e-3

writes ``OUT/train.weight_decay=5e-4/`` (a run folder, named by the values as written) for each point, and
``OUT/tune.json`` and ``OUT/tune.md``: one row per point (validation balanced accuracy and top-1, test top-1 and the
test accuracy of the three classes with the fewest training images, which every data set has, where the few-shot
group is empty on CIFAR-10-LT), the chosen one in bold, with the ``--set`` options that train it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig, apply_overrides
from .data.files import FILE_DATASETS
from .distributed import launch_rank
from .errors import LongtailError
from .experiment import train_one
from .metrics import rarest_mean
from .storage import atomic_write_text

SCORES = {"val_balanced": ("balanced_accuracy", "validation balanced accuracy"),
          "val_top1": ("top1", "validation top-1")}


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["train.weight_decay=5e-4,1e-3", "loss.tau=1,1.5"]`` -> ``{"train.weight_decay": ["5e-4", "1e-3"], ...}``,
    in the order given; a malformed item, a repeated key or an empty value is an error that names it."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        vals = [v.strip() for v in values.split(",")]
        if not eq or not key or any(v == "" for v in vals):
            raise LongtailError(f"--grid {item!r} is not KEY=V1,V2,...",
                                "write e.g. --grid train.weight_decay=2e-4,5e-4,1e-3")
        if key in grid:
            raise LongtailError(f"--grid names {key} twice", f"give all of {key}'s values in one --grid {key}=V1,V2")
        if len(set(vals)) != len(vals):
            raise LongtailError(f"--grid {item!r} repeats a value", "list each value once")
        grid[key] = vals
    if not grid:
        raise LongtailError("tune needs a grid", "pass --grid KEY=V1,V2,... (e.g. --grid train.weight_decay=5e-4,5e-3)")
    return grid


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, the first key's values varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_name(point: dict[str, str]) -> str:
    """The folder of a point: ``train.weight_decay=0.0005`` (several keys joined by ``,``)."""
    name = ",".join(f"{k}={v}" for k, v in point.items())
    return name.replace("/", "_").replace("\\", "_")


def has_validation(cfg: RunConfig) -> bool:
    return cfg.data.val_per_class > 0 or cfg.data.val_split is not None


def tune(base: RunConfig, grid: dict[str, list[str]], out: str | Path, *, by: str = "val_balanced",
         seeds: list[int] | None = None, progress: bool | None = False, log: Callable[[str], None] = print,
         splits: Any = None, command: list[str] | None = None, restart: bool = False) -> dict[str, Any]:
    """Train ``base`` with each point of ``grid`` (settings as ``--set`` takes them) into ``out/POINT``, choose the
    point with the best validation score ``by`` (the first in grid order on a tie), and write ``out/tune.json`` and
    ``out/tune.md``. Returns the summary that ``tune.json`` holds. Every point's settings are checked before the
    first one trains. ``seeds``: several seeds train each point into ``out/POINT/seed-N`` and the mean of their
    validation scores chooses (default: the config's one seed, in ``out/POINT``). ``splits``: data already loaded
    (the tests). ``restart``: each point's folder starts over."""
    if by not in SCORES:
        raise LongtailError(f"unknown tune score {by!r}", f"use one of {', '.join(SCORES)}")
    if splits is None and not has_validation(base):
        raise LongtailError(f"tuning chooses on a validation split, and {base.recipe} has none",
                            "pass --val-per-class 20 (a balanced split held out of the training images), or "
                            "--set data.val_split=... where the data set has one")
    seeds = list(seeds) if seeds else [base.seed]
    if len(set(seeds)) != len(seeds):
        raise LongtailError(f"tune was given seed {seeds} with a repeat", "list each seed once")
    if "seed" in grid:
        raise LongtailError("--grid seed=... would train the same settings under several names",
                            "pass the seeds with --seeds 0 1 2: each point trains every seed and their mean chooses")
    moving = [k for k in grid if k.startswith("data.")]
    if moving:
        raise LongtailError(f"--grid {moving[0]} changes the data, so the points' validation scores would be on "
                            "different images and not comparable",
                            "tune settings of the training (train., loss., optim., augment., model., ...); compare "
                            "data settings with separate runs and `longtail compare`")
    test_split = base.data.test_split or FILE_DATASETS.get(base.data.dataset, (None, None, None))[2]
    if base.data.val_split is not None and test_split is not None and \
            os.path.normpath(base.data.val_split) == os.path.normpath(test_split):
        raise LongtailError(f"the validation split is the test split ({test_split}): tune would choose on the test "
                            "set", "use --val-per-class 20 (held out of the training images) or a validation file "
                            "that is not the test set")
    points = grid_points(grid)
    configs = [apply_overrides(base, point) for point in points]  # every point checked before any trains
    for j, cfg in enumerate(configs):
        if cfg in configs[:j]:
            raise LongtailError(f"the grid points {point_name(points[configs.index(cfg)])} and "
                                f"{point_name(points[j])} are the same settings", "list each value once")
    out = Path(out)
    _check_tune_folder(out, {point_name(p) for p in points})
    rows: list[dict[str, Any]] = []
    for i, (point, cfg) in enumerate(zip(points, configs)):
        log(f"tune {i + 1}/{len(points)}: {point_name(point)}")
        results = []
        for seed in seeds:
            folder = out / point_name(point) / (f"seed-{seed}" if len(seeds) > 1 else "")
            r = train_one(apply_overrides(cfg, {"seed": seed}), folder, progress=progress, log=log, splits=splits,
                          command=command, restart=restart)
            if not r.get("val"):
                raise LongtailError(f"the run {folder} has no validation scores",
                                    "tune needs a validation split: pass --val-per-class 20")
            results.append(r)
        row: dict[str, Any] = {"point": point, "folder": point_name(point), "seeds": seeds,
                               "val_images": results[0]["val"].get("num_test")}
        for name, get in [("val_balanced", lambda r: r["val"].get("balanced_accuracy")),
                          ("val_top1", lambda r: r["val"].get("top1")), ("test_top1", lambda r: r.get("top1")),
                          ("test_balanced", lambda r: r.get("balanced_accuracy")), ("test_few", lambda r: r.get("few")),
                          ("test_many", lambda r: r.get("many")), ("test_rarest3", lambda r: rarest_mean(r, 3))]:
            vals = [get(r) for r in results]
            row[name] = _mean(vals)
            if len(seeds) > 1:
                row[name + "_std"] = _std(vals)
        rows.append(row)
    key = by

    def score(row: dict[str, Any]) -> float:
        v = row[key]
        return -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    if all(score(row) == -math.inf for row in rows):
        raise LongtailError(f"no grid point has a {SCORES[by][1]} to choose by (every run's is missing or NaN)",
                            "check the validation split (--val-per-class) and the runs' report.json")
    best = max(range(len(rows)), key=lambda j: (score(rows[j]), -j))
    summary = {"recipe": base.recipe, "seeds": seeds, "by": by, "grid": grid, "rows": rows,
               "chosen": rows[best], "set": [f"--set {k}={v}" for k, v in rows[best]["point"].items()]}
    if launch_rank() == 0:  # under torchrun every process trained each point; one writes the summary
        atomic_write_text(out / "tune.json", json.dumps(summary, indent=2) + "\n")
        atomic_write_text(out / "tune.md", tune_markdown(summary))
    return summary


def _check_tune_folder(out: Path, names: set[str]) -> None:
    """A tuning folder holds its points' run folders and tune.json / tune.md, and nothing of anyone else's."""
    from .runs import is_run_folder

    if not out.is_dir():
        return
    foreign = [p.name for p in out.iterdir()  # dot files: a temporary a stopped write left, a lock
               if not (p.name.startswith(".") or p.name in ("tune.json", "tune.md")
                       or (p.is_dir() and (p.name in names or is_run_folder(p))))]
    if foreign:
        raise LongtailError(f"{out} holds files that are not a tuning's ({', '.join(sorted(foreign)[:3])})",
                            "pass an --out folder that is new, empty, or written by `longtail tune`")


def _mean(vals: list[Any]) -> float | None:
    """The mean of the values that exist (a shot group a data set lacks is None in every seed)."""
    vals = [float(v) for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _std(vals: list[Any]) -> float | None:
    vals = [float(v) for v in vals if v is not None]
    return statistics.stdev(vals) if len(vals) > 1 else None


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def tune_markdown(summary: dict[str, Any]) -> str:
    """``tune.md``: the grid's rows, the chosen one in bold, and what chose it."""
    label = SCORES[summary["by"]][1]
    keys = list(summary["grid"])
    chosen = summary["chosen"]
    seeds = summary["seeds"]
    over = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± std over seeds {', '.join(map(str, seeds))}"

    def cell(row: dict[str, Any], name: str) -> str:
        std = row.get(name + "_std")
        return _f(row[name]) + (f" ± {std:.2f}" if std is not None else "")
    n_val = summary["rows"][0].get("val_images")
    grain = (f" The validation split has {n_val} images: one image moves its top-1 by {100 / n_val:.2g} points, so "
             "points closer than that are a tie in all but name (more seeds or --val-per-class narrow it)."
             if n_val else "")
    lines = [f"# Tuning {summary['recipe']} ({over})", "",
             f"Chosen by the {label} alone; the test columns are shown for the record and were not used to choose."
             + grain,
             "", "| " + " | ".join(keys) + " | val balanced | val top-1 | test top-1 | test rarest 3 | run folder |",
             "|" + "---|" * (len(keys) + 5)]
    for row in summary["rows"]:
        cells = [row["point"][k] for k in keys] + [cell(row, "val_balanced"), cell(row, "val_top1"),
                                                    cell(row, "test_top1"), cell(row, "test_rarest3"),
                                                    f"`{row['folder']}`"]
        if row == chosen:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    again = "" if len(seeds) > 1 else " (add --seeds for others)"
    lines += ["", f"Chosen: {', '.join(f'{k}={v}' for k, v in chosen['point'].items())} ({label} "
              f"{_f(chosen[summary['by']])}); its run is `{chosen['folder']}`, and `longtail train {summary['recipe']} "
              f"{' '.join(summary['set'])}` trains the same settings{again}.", ""]
    return "\n".join(lines)
