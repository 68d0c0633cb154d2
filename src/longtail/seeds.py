"""Several seeds of one configuration: one after another, or at once as one stacked network, then the
mean and spread over the seeds (``longtail train RECIPE --seeds 0 1 2``)."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import distributed
from .config import RunConfig
from .data.semi import load_splits
from .devices import resolve_device
from .errors import LongtailError
from .experiment import train_one
from .metrics import aggregate_seeds
from .report import summary_table, write_seed_report
from .runs import RunLock, clear_run_folder, require_run_folder
from .stacked import (
    check_stackable,
    stack_unsupported_reason,
    stacked_resume_problem,
    train_stacked,
)


def train_seeds(cfg: RunConfig, seeds: list[int], out: str | Path, *, stack: bool | None = False,
                restart: bool = False, **kw: Any) -> dict[str, Any]:
    """Train one run per seed under ``out/seed-N`` and write the mean and spread to ``out``.

    ``stack``: train the seeds concurrently as one fused network (``longtail.stacked``; exact per
    seed up to rounding). None: stack on CUDA when the configuration allows it, else one after another.
    False by default: stacking is opt-in until a GPU benchmark shows it equal to separate runs and faster.
    ``restart``: clear ``out`` once the settings and data have been checked, and start over.
    """
    out = Path(out)
    if len(set(seeds)) != len(seeds):
        raise LongtailError(f"--seeds repeats a seed: {' '.join(map(str, seeds))}", "pass each seed once")
    if not restart:
        _require_same_kind(out, several=len(seeds) > 1)
    if len(seeds) == 1:
        return train_one(replace(cfg, seed=seeds[0]), out, restart=restart, **kw)
    with RunLock(out, log=kw.get("log", print)) if distributed.launch_rank() == 0 else contextlib.nullcontext():
        require_run_folder(out)
        return _train_seeds(cfg, seeds, out, stack=stack, restart=restart, **kw)


def _require_same_kind(out: Path, *, several: bool) -> None:
    """Stop when ``out`` holds the other kind of run: one seed's run (``out/config.json``) asked for several seeds,
    or several seeds' runs (``out/seed-N/``) asked for one. Either would put a second run beside the first and
    rewrite the folder's report."""
    single = (out / "config.json").is_file() or (out / "checkpoints").is_dir()
    seed_runs = sorted(p.parent.name for p in out.glob("seed-*/config.json"))
    if several and single:
        raise LongtailError(f"{out} holds the run of one seed, and --seeds asks for several",
                            "pass another --out for the seeds (or --restart to replace that run)")
    if not several and seed_runs:
        raise LongtailError(f"{out} holds the runs of several seeds ({', '.join(seed_runs)}), and this is one run",
                            "pass another --out (or --seeds with those seeds to resume them, or --restart to "
                            "replace them)")


def _train_seeds(cfg: RunConfig, seeds: list[int], out: Path, *, stack: bool | None, restart: bool,
                 **kw: Any) -> dict[str, Any]:
    distributed.setup(resolve_device(cfg.train.device))
    with distributed.main_first():
        splits = load_splits(cfg.data)  # the same data split for every seed
    if restart and distributed.is_main():  # settings and data are checked by now
        clear_run_folder(out)
    distributed.barrier()
    if splits.on_files or distributed.current().world > 1:
        if stack:
            raise LongtailError("seeds cannot be trained stacked with image files or several processes",
                                "train the seeds one after another (--stack-seeds off)")
        stack = False
    if stack is None:
        stack = (resolve_device(cfg.train.device).type == "cuda" and stack_unsupported_reason(cfg) is None
                 and stacked_resume_problem(out, seeds) is None)
    if stack:
        check_stackable(cfg)
        results = [(f"seed {s}", r) for s, r in zip(seeds, train_stacked(cfg, seeds, out, splits=splits, **kw))]
    else:
        results = [(f"seed {s}", train_one(replace(cfg, seed=s), out / f"seed-{s}", splits=splits, **kw))
                   for s in seeds]
    if any(not r for _, r in results):
        return {}
    aggregate = aggregate_seeds([r for _, r in results])
    if distributed.is_main():
        write_seed_report(out, aggregate, results, title=f"{cfg.recipe}: {len(seeds)} seeds (last epoch, test set)")
    return {"aggregate": aggregate, "seeds": {name: r for name, r in results}}


def console_table(name: str, result: dict[str, Any]) -> str:
    if "aggregate" in result:
        rows = [(name, result["aggregate"])] + list(result["seeds"].items())
        return summary_table(rows)
    return summary_table([(name, result)])
