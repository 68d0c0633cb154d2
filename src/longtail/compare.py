"""Compare finished runs side by side: one Markdown table and one bar plot.

A run folder is any of

* a single-seed run: ``report.json`` with top-level ``top1``, ``many``, ... (``write_report``);
* a multi-seed run: ``report.json`` with ``{"title", "aggregate", "seeds"}`` (``write_seed_report``);
* a folder of ``seed-N`` run folders without an aggregate yet (an interrupted multi-seed run):
  the seeds that have a ``report.json`` are aggregated with :func:`longtail.metrics.aggregate_seeds`
  and the table notes the ones left out.

Each row holds, for every metric of :data:`longtail.metrics.AGGREGATED_METRICS`, the entry
``{"mean", "std", "values"}`` over seeds (std is the sample std, ddof=1). The table prints
``mean ± std`` for several seeds, the bare value for one seed, and ``n/a`` where the metric is
undefined (e.g. no few-shot class), never 0.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from .errors import LongtailError
from .metrics import AGGREGATED_METRICS, aggregate_seeds, mean_std
from .report import TABLE_COLUMNS
from .storage import atomic_write_bytes, atomic_write_text

#: (label, key) of the metrics drawn in the bar plot.
PLOT_METRICS = (("top-1", "top1"), ("many", "many"), ("medium", "medium"), ("few", "few"))

_SEED_DIR = re.compile(r"^seed-(-?\d+)$")


# --------------------------------------------------------------------------------------------
# reading run folders
# --------------------------------------------------------------------------------------------
def _missing_report(folder: Path) -> LongtailError:
    return LongtailError(
        f"{folder} has no report.json",
        f"train it first (`longtail train RECIPE --out {folder}`; the same command resumes an interrupted "
        f"run), or write its report from the checkpoint with `longtail evaluate {folder}`",
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LongtailError(f"cannot read {path}: {e}",
                            f"rewrite it with `longtail evaluate {path.parent}`") from e
    if not isinstance(data, dict) or not ("aggregate" in data or "top1" in data):
        raise LongtailError(f"{path} is not a longtail report (no top1 and no aggregate)",
                            "pass run folders written by `longtail train` or `longtail evaluate`")
    return data


def _seed_folders(folder: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _SEED_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def _single_seed_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """A one-seed summary in the aggregate's ``{"mean", "std", "values"}`` form."""
    out: dict[str, Any] = {}
    for key in AGGREGATED_METRICS:
        m, sd = mean_std([summary.get(key)])
        out[key] = {"mean": m, "std": sd, "values": [summary.get(key)]}
    return out


def _recipe(report: dict[str, Any]) -> str | None:
    if isinstance(report.get("recipe"), str):
        return report["recipe"]
    for seed in (report.get("seeds") or {}).values():
        if isinstance(seed, dict) and isinstance(seed.get("recipe"), str):
            return seed["recipe"]
    return None


def read_run(path: str | Path) -> dict[str, Any]:
    """One row of the comparison for a run folder (see the module docstring for the layouts).

    Keys: ``run`` (display name: the recipe, else the folder name), ``recipe``, ``path``,
    ``seeds`` (how many were aggregated), ``missing_seeds`` (seed folders without a report),
    ``train_counts`` and one ``{"mean", "std", "values"}`` entry per aggregated metric.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise LongtailError(f"run folder {folder} does not exist",
                            "pass folders written by `longtail train` (the --out of each run)")
    report_file = folder / "report.json"
    missing: list[str] = []
    if report_file.is_file():
        report = _read_json(report_file)
        if "aggregate" in report:
            agg = report["aggregate"]
            metrics = {k: agg.get(k, {"mean": None, "std": None, "values": []}) for k in AGGREGATED_METRICS}
            seeds = int(agg.get("num_seeds", len(report.get("seeds") or {})))
            train_counts = agg.get("train_counts")
        else:
            metrics, seeds, train_counts = _single_seed_metrics(report), 1, report.get("train_counts")
        recipe = _recipe(report)
    else:
        seed_dirs = _seed_folders(folder)
        done = [p for p in seed_dirs if (p / "report.json").is_file()]
        if not done:
            raise _missing_report(folder)
        missing = [p.name for p in seed_dirs if p not in done]
        summaries = [_read_json(p / "report.json") for p in done]
        try:
            agg = aggregate_seeds(summaries)
        except KeyError as e:
            raise LongtailError(f"the seed reports under {folder} lack {e}",
                                f"rewrite them with `longtail evaluate {folder}/seed-N`") from e
        metrics = {k: agg[k] for k in AGGREGATED_METRICS}
        seeds, train_counts = len(done), agg.get("train_counts")
        recipe = next((r for r in map(_recipe, summaries) if r), None)
    return {"run": recipe or folder.name, "recipe": recipe, "path": str(folder), "seeds": seeds,
            "missing_seeds": missing, "train_counts": train_counts, **metrics}


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------
def format_entry(entry: dict[str, Any] | None, digits: int = 2) -> str:
    """``mean ± std`` over seeds; the bare value for one seed; ``n/a`` when undefined.

    ``(n=K)`` is added when only K of the run's seeds have the value.

    >>> format_entry({"mean": 70.0, "std": 1.25, "values": [71.0, 69.0]})
    '70.00 ± 1.25'
    >>> format_entry({"mean": 70.0, "std": 0.0, "values": [70.0]})
    '70.00'
    >>> format_entry({"mean": None, "std": None, "values": [None, None]})
    'n/a'
    """
    if not entry or entry.get("mean") is None:
        return "n/a"
    values = entry.get("values") or []
    k = sum(v is not None for v in values)
    text = f"{entry['mean']:.{digits}f}"
    if k >= 2 and entry.get("std") is not None:
        text += f" ± {entry['std']:.{digits}f}"
    if k < len(values):
        text += f" (n={k})"
    return text


def _escape(text: Any) -> str:
    return str(text).replace("|", "\\|")  # a '|' would split the Markdown cell


def _unique_names(rows: list[dict[str, Any]]) -> None:
    """Two runs of one recipe (e.g. with --set overrides) get their folder name added, then their path."""
    names = [r["run"] for r in rows]
    for r in rows:
        if names.count(r["run"]) > 1:
            r["run"] = f"{r['run']} ({Path(r['path']).name})"
    names = [r["run"] for r in rows]
    for r in rows:
        if names.count(r["run"]) > 1:
            r["run"] = r["path"]


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
    """The Markdown table of rows from :func:`read_run`, with notes on left-out seeds and data."""
    header = ["run", "seeds"] + [h for h, _ in TABLE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [_escape(r["run"]), str(r["seeds"])] + [format_entry(r.get(key)) for _, key in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {_escape(r['run'])}: {len(r['missing_seeds'])} seed folder(s) without report.json left out "
             f"({', '.join(r['missing_seeds'])})" for r in rows if r.get("missing_seeds")]
    known = {tuple(r["train_counts"]) for r in rows if r.get("train_counts")}
    if len(known) > 1:
        notes.append("- the runs were trained on different training sets (their class counts differ): "
                     "compare them with care")
    return "\n".join(lines + ([""] + notes if notes else []))


def compare_runs(paths: Sequence[str | Path], *, names: Sequence[str] | None = None) -> tuple[str, list[dict]]:
    """Read run folders and return ``(markdown table, rows)``; rows as from :func:`read_run`.

    ``names`` replaces the display names (one per path); by default a run is named by the
    recipe in its report, or its folder name, with the folder added when two names clash.
    """
    if not paths:
        raise LongtailError("no runs to compare", "pass one or more run folders")
    if names is not None and len(names) != len(paths):
        raise LongtailError(f"{len(names)} names for {len(paths)} runs", "give one name per run folder")
    rows = [read_run(p) for p in paths]
    if names is not None:
        for r, n in zip(rows, names):
            r["run"] = str(n)
    else:
        _unique_names(rows)
    return comparison_table(rows), rows


# --------------------------------------------------------------------------------------------
# the plot and the files
# --------------------------------------------------------------------------------------------
def plot_comparison(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Grouped bars: one group per metric (top-1, many, medium, few), one bar per run.

    Bar height = mean over seeds (%), error bar = sample std (only with two or more seeds);
    an undefined metric has no bar and an ``n/a`` mark instead.
    """
    atomic_write_bytes(Path(path), lambda f: comparison_figure(rows).savefig(f, format="png"))


def comparison_figure(rows: Sequence[dict[str, Any]]) -> Any:
    """The matplotlib ``Figure`` of :func:`plot_comparison`. Long run names are wrapped in the legend, and
    the axes keep every group's place, so no label falls outside the figure or the axes."""
    # Imported here so `import longtail` stays fast; the Figure API renders with Agg and leaves
    # the pyplot backend of a notebook or an interactive session untouched.
    import textwrap

    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n_runs = max(len(rows), 1)
    width = 0.8 / n_runs
    fig = Figure(figsize=(max(7.0, 3.5 + 0.4 * n_runs * len(PLOT_METRICS)), 4.5), dpi=120, layout="constrained")
    ax = fig.subplots()
    colours = [f"C{i % 10}" for i in range(len(rows))]
    for i, r in enumerate(rows):
        for m, (_, key) in enumerate(PLOT_METRICS):
            x = m + (i - (n_runs - 1) / 2) * width  # run i's bar inside metric m's group
            entry = r.get(key) or {}
            if entry.get("mean") is None:
                ax.text(x, 1.0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color=colours[i],
                        clip_on=True)
                continue
            k = sum(v is not None for v in entry.get("values") or [])
            err = entry.get("std") if k >= 2 else None  # one seed has no spread to show
            ax.bar(x, entry["mean"], width * 0.92, color=colours[i], yerr=err, capsize=3 if err else 0)
    ax.set_xticks(range(len(PLOT_METRICS)), [label for label, _ in PLOT_METRICS])
    ax.set_xlim(-0.5, len(PLOT_METRICS) - 0.5)  # every group's place, bars or n/a marks alike
    ax.set_ylim(0, 105)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("mean over seeds; error bars: std between seeds\n(none for a single seed)", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if rows:
        # Explicit handles: a run whose every metric is n/a still gets its legend entry.
        labels = [textwrap.fill(f"{r['run']} ({r['seeds']} seed{'' if r['seeds'] == 1 else 's'})", 32,
                                break_long_words=True) for r in rows]
        ax.legend(handles=[Patch(color=c, label=t) for c, t in zip(colours, labels)], fontsize=8,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), title="run", title_fontsize=8)
    return fig


def write_comparison(paths: Sequence[str | Path], out: Path, *, names: Sequence[str] | None = None) -> str:
    """Write ``out/comparison.md`` (table + plot link) and ``out/comparison.png``; return the Markdown."""
    out = Path(out)
    table, rows = compare_runs(paths, names=names)
    clash = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if clash is not None:
        raise LongtailError(f"--out {out}: {clash} is a file, not a folder",
                            "pass --out a folder (new or existing) for comparison.md and comparison.png")
    out.mkdir(parents=True, exist_ok=True)
    plot_comparison(rows, out / "comparison.png")
    folders = "\n".join(f"- {_escape(r['run'])}: `{r['path']}`" for r in rows)
    text = "\n".join([
        "# Comparison", "",
        "Top-1 and shot-group accuracies in % on the test set: mean ± sample std (ddof=1) over seeds; "
        "a single seed shows its value; n/a: undefined (no class in the group, or none with test images).", "",
        table, "",
        "![accuracy per shot group](comparison.png)", "",
        "Run folders:", "", folders, "",
    ])
    atomic_write_text(out / "comparison.md", text)
    return text


__all__ = ["compare_runs", "comparison_table", "format_entry", "plot_comparison", "read_run", "write_comparison"]
