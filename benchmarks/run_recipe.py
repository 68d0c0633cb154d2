"""Run a recipe N times and append one measured row per run to benchmarks/RESULTS.md.

Data from a device pack (for the GPU machine, where ../shared does not travel) or a data root:

    python benchmarks/run_recipe.py cifar10-lt-ce --pack .device/c10-lt100 --seeds 0 1 2
    python benchmarks/run_recipe.py cifar10-lt-ce --data-root ../shared/data --epochs 1 --device cpu
    python benchmarks/run_recipe.py cifar10-lt-ce --pack .device/c10-lt100 --seeds 0 1 2 3 4 --stack \
        --set train.engine=graph     # the seeds trained at once (longtail.stacked): one row for all of them

Every row is what this script measured on the machine it ran on; nothing is typed in by hand.
Wall time is split into setup (data to the device, model), compile, train and eval.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # run from the source tree (the GPU machine has no install)

from longtail.config import apply_overrides  # noqa: E402
from longtail.experiment import train_one  # noqa: E402
from longtail.metrics import rarest_mean  # noqa: E402
from longtail.recipes import get_recipe  # noqa: E402
from longtail.seeds import train_seeds  # noqa: E402
from longtail.storage import atomic_write_text  # noqa: E402

HEADER = ("| date | machine | command | seed | epochs | setup s | compile s | train s | eval s | train img/s "
          "| top-1 | many | medium | few | rarest 3 |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def machine() -> str:
    import torch

    cpus = os.cpu_count()
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {cpus} CPUs, torch {torch.__version__}"
    # the CPU's model and the vector instructions PyTorch uses: the 2-core VM of this project has landed on hosts of
    # about twice each other's speed (FastNet-M, batch 256: 31 s an epoch on 2026-11-30, 15.5 s on 2026-12-01)
    return (f"CPU only ({platform.processor() or platform.machine()}, {cpu_model()}, "
            f"{torch.backends.cpu.get_cpu_capability()}), {cpus} CPUs, torch {torch.__version__}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown model"


def fmt(v, digits=2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def rarest(report: dict, k: int) -> float | None:
    """Mean test accuracy of the k classes with the fewest training images (the tail, even when no class is below the
    few-shot threshold, as in CIFAR-10-LT where the rarest class has 50): :func:`longtail.metrics.rarest_mean`."""
    return rarest_mean(report, k)


_HELD: set[str] = set()


@contextlib.contextmanager
def locked(path: Path):  # type: ignore[no-untyped-def]
    """Hold an exclusive lock on ``path``.lock while a results file is read and rewritten: benchmarks that run side
    by side (two method-table seeds, a probe) append to the same RESULTS.md, and one read-modify-write must not drop
    another's row. Re-entrant within a process (the method table appends a row and rewrites its table in one hold)."""
    key = str(Path(path).resolve())
    if key in _HELD:
        yield
        return
    lock = Path(path).with_name(Path(path).name + ".lock")
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            fcntl.flock(f, fcntl.LOCK_UN)


def append_section(results: Path, lines: list[str]) -> None:
    """Add a section (a list of Markdown lines) at the end of ``results``."""
    with locked(results):
        text = results.read_text() if results.exists() else "# Benchmark results\n"
        atomic_write_text(results, text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


def append_row(results: Path, row: str, section: str = "## Recipe runs (benchmarks/run_recipe.py)",
               header: str = HEADER) -> None:
    """Add ``row`` at the end of the table under ``section`` (created at the end of the file if absent, with the
    table ``header``)."""
    with locked(results):
        lines = results.read_text().splitlines() if results.exists() else ["# Benchmark results", ""]
        if section not in lines:
            lines += ["", section, ""] + header.rstrip("\n").splitlines()
        i = lines.index(section) + 1
        while i < len(lines) and not lines[i].startswith("|"):
            i += 1
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        lines.insert(i, row)
        atomic_write_text(results, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None, command: str | None = None) -> int:
    """``argv``: the arguments (default: the command line's); ``command``: the command a row records (default:
    this script's command line; benchmarks/fast_probes.py passes its own)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe")
    p.add_argument("--pack", help="device pack path without extension (e.g. .device/c10-lt100)")
    p.add_argument("--data-root")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--out", help="where run folders go (default: a temporary folder)")
    p.add_argument("--stack", action="store_true", help="train all --seeds at once as one stacked network")
    a = p.parse_args(argv)

    ov: dict[str, object] = {"train.device": a.device, "train.checkpoint_every": "1000000"}
    if a.pack:
        ov["data.pack"] = a.pack
    if a.data_root:
        ov["data.root"] = a.data_root
    if a.epochs:
        ov["train.epochs"] = a.epochs
    for s in a.sets:
        k, _, v = s.partition("=")
        ov[k] = v
    cfg = apply_overrides(get_recipe(a.recipe).config, ov)
    out = Path(a.out or tempfile.mkdtemp(prefix="longtail-bench-"))
    if command is None:
        command = "python benchmarks/" + " ".join(shlex.quote(x) for x in [Path(sys.argv[0]).name] + sys.argv[1:])
    if a.stack:
        if len(a.seeds) < 2:
            raise SystemExit("--stack trains several seeds at once: pass two or more --seeds")
        return stacked_row(cfg, a.seeds, out, command, Path(a.results))
    for seed in a.seeds:
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        r = train_one(apply_overrides(cfg, {"seed": seed}), out / f"seed-{seed}", progress=False,
                      log=lambda m: None)
        wall = time.perf_counter() - t0
        tm = r["timing"]
        load = f", load average {load0:.1f} -> {os.getloadavg()[0]:.1f}"  # 1-minute, at the start and the end
        row = (f"| {dt.date.today()} | {machine()}{load} | `{command}` | {seed} | {cfg.train.epochs} | "
               f"{tm['setup_s']:.1f} | {tm.get('compile_s', 0.0):.1f} | {tm['train_s']:.1f} | {tm['eval_s']:.1f} | "
               f"{tm['train_images_per_s']:.0f} | {fmt(r['top1'])} | {fmt(r['many'])} | {fmt(r['medium'])} | "
               f"{fmt(r['few'])} | {fmt(rarest(r, 3))} |")
        append_row(Path(a.results), row)
        print(row, f"(wall {wall:.1f} s)", flush=True)
    return 0


STACK_SECTION = "## Several seeds at once (benchmarks/run_recipe.py --stack)"
STACK_HEADER = ("| date | machine | command | seeds | epochs | wall s | setup s | compile s | train s | eval s (all) "
                "| train img/s (all seeds) | top-1 mean ± std | many | medium | few |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def stacked_row(cfg, seeds: list[int], out: Path, command: str, results: Path) -> int:
    """Train ``seeds`` at once (``train_seeds(stack=True)``) and append one row for the whole run."""
    t0 = time.perf_counter()
    r = train_seeds(cfg, seeds, out, stack=True, progress=False, log=lambda m: None)
    wall = time.perf_counter() - t0
    agg, runs = r["aggregate"], list(r["seeds"].values())
    tm = runs[0]["timing"]

    def ms(key: str) -> str:
        return "n/a" if agg[key]["mean"] is None else f"{agg[key]['mean']:.2f} ± {agg[key]['std']:.2f}"

    eval_s, compile_s = sum(x["timing"]["eval_s"] for x in runs), tm.get("compile_s", 0.0)
    setup_s = wall - compile_s - tm["train_s"] - eval_s  # data loading (once for all seeds), models, reports
    row = (f"| {dt.date.today()} | {machine()} | `{command}` | {len(seeds)} | {cfg.train.epochs} | {wall:.1f} | "
           f"{setup_s:.1f} | {compile_s:.1f} | {tm['train_s']:.1f} | {eval_s:.1f} | "
           f"{tm['stacked_train_images_per_s']:.0f} | {ms('top1')} | {ms('many')} | {ms('medium')} | {ms('few')} |")
    lines = results.read_text().splitlines() if results.exists() else ["# Benchmark results", ""]
    if STACK_SECTION not in lines:
        append_section(results, ["", STACK_SECTION, "", *STACK_HEADER.rstrip("\n").splitlines()])
    append_row(results, row, section=STACK_SECTION)
    print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
