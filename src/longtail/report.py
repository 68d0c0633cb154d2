"""Reports people read: report.json, report.md and a per-class accuracy plot.

A summary is the dict of :func:`longtail.metrics.summarize` (one run) or of
:func:`longtail.metrics.aggregate_seeds` (several seeds). Missing values (an empty shot group, a
class absent from the test set) print as ``n/a``, never as 0. Files are written atomically
(temporary file + ``os.replace``) so an interrupted run never leaves half a report behind.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any, Sequence

from .counts import FEW_SHOT_BELOW, MANY_SHOT_ABOVE, SHOT_GROUPS
from .errors import LongtailError
from .storage import atomic_write_bytes, atomic_write_text

#: (column header, summary key) of the comparison table.
TABLE_COLUMNS = (("top-1", "top1"), ("many", "many"), ("medium", "medium"), ("few", "few"),
                 ("balanced", "balanced_accuracy"))

_GROUP_COLOURS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
_GROUP_RULES = {"many": f"> {MANY_SHOT_ABOVE}", "medium": f"{FEW_SHOT_BELOW}..{MANY_SHOT_ABOVE}",
                "few": f"< {FEW_SHOT_BELOW}"}


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 2) -> str:
    """A percentage (or any number) for a table; ``None`` -> ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, dict):  # an aggregate entry {"mean", "std", "values"}
        if value.get("mean") is None:
            return "n/a"
        k = sum(v is not None for v in value.get("values", []))
        return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f} (n={k})"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _escape(text: Any) -> str:
    # A '|' in a class or run name would split the Markdown table cell.
    return str(text).replace("|", "\\|")


def summary_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """A Markdown table with one row per ``(name, summary)``.

    Columns: top-1, many, medium, few, balanced (all %). A plain summary prints numbers
    (``70.36``); an aggregate from :func:`~longtail.metrics.aggregate_seeds` prints
    ``mean ± std (n=K)`` with K the seeds that have the value; a missing value prints ``n/a``.
    """
    header = ["run"] + [h for h, _ in TABLE_COLUMNS]
    body = [[_escape(name)] + [_fmt(summary.get(key)) for _, key in TABLE_COLUMNS] for name, summary in rows]
    return _md_table(header, body)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def _classes(n: int) -> str:
    return f"{n} class" if n == 1 else f"{n} classes"


def _json_default(obj: Any) -> Any:
    """Make configuration values (paths, dataclasses, tensors, numpy) JSON-serialisable."""
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and numpy scalars
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _atomic_write(path: Path, write: Any, mode: str = "w") -> None:
    """Call ``write(file)`` and put what it wrote at ``path`` atomically (``longtail.storage``)."""
    if "b" in mode:
        atomic_write_bytes(path, write)
        return
    buf = io.StringIO()
    write(buf)
    atomic_write_text(path, buf.getvalue())


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=2, default=_json_default) + "\n"
    _atomic_write(path, lambda f: f.write(text))


def _write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text))


def _class_name(summary: dict[str, Any], c: int) -> str:
    names = summary.get("class_names")
    return str(names[c]) if names else str(c)


def _group_of(summary: dict[str, Any]) -> dict[int, str]:
    return {c: g for g, members in summary.get("groups", {}).items() for c in members}


def _context_lines(extra: dict[str, Any] | None) -> list[str]:
    """Scalar entries of ``extra`` (recipe, epoch, split, ...) as a bullet list."""
    if not extra:
        return []
    lines = [f"- **{_escape(k)}**: {_escape(_fmt(v))}" for k, v in extra.items()
             if v is None or isinstance(v, (str, int, float, bool, Path))]
    if len(lines) < len(extra):
        lines.append("- the full configuration is in report.json")
    return lines + [""]


def _report_markdown(summary: dict[str, Any], title: str, extra: dict[str, Any] | None) -> str:
    groups = summary.get("groups", {})
    train = summary["train_counts"]
    test = summary["test_per_class"]
    lines = [f"# {title}", ""] + _context_lines(extra)
    lines += [f"{summary['num_test']} test images, {sum(train)} training images in {_classes(len(train))} "
              f"(imbalance ratio {_imbalance(train)}). Accuracies are top-1 %; ECE is in % "
              "(0 = calibrated). n/a: undefined (no class in the group, or none with test images).", ""]
    for what, skipped in (("training", (extra or {}).get("train_unreadable_images")),
                          ("test", summary.get("unreadable_images"))):
        if skipped and skipped.get("count"):  # data.on_bad_image=skip: said where a reader looks, not only in json
            lines += [f"**{skipped['count']} unreadable {what} images were left out** (data.on_bad_image=skip), "
                      f"e.g. {_escape(skipped['examples'][0]) if skipped.get('examples') else 'n/a'}; "
                      "report.json lists up to 10.", ""]
    metric_rows = [["top-1", _fmt(summary.get("top1"))],
                   ["balanced (mean per-class)", _fmt(summary.get("balanced_accuracy"))]]
    for g in SHOT_GROUPS:
        members = groups.get(g, [])
        tested = sum(1 for c in members if test[c] > 0)
        metric_rows.append([f"{g}-shot ({_GROUP_RULES[g]} train images; {_classes(len(members))}, "
                            f"{tested} in test)", _fmt(summary.get(g))])
    metric_rows.append(["ECE", _fmt(summary.get("ece"))])
    if summary.get("nll") is not None:
        metric_rows.append(["NLL (nats)", _fmt(summary.get("nll"), 4)])
    lines += [_md_table(["metric", "value"], metric_rows), "", "## Per class", ""]
    lines += ["![per-class accuracy against training-set size](per_class_accuracy.png)", ""]
    group = _group_of(summary)
    per_class_rows = [[str(c), _escape(_class_name(summary, c)), group.get(c, "?"), str(train[c]), str(test[c]),
                       _fmt(acc)] for c, acc in enumerate(summary["per_class"])]
    lines += [_md_table(["#", "class", "group", "train", "test", "accuracy"], per_class_rows), ""]
    return "\n".join(lines)


def _imbalance(train: Sequence[int]) -> str:
    lo = min(train)
    return "inf" if lo == 0 else f"{max(train) / lo:.4g}"


def plot_per_class(path: Path, summary: dict[str, Any], *, title: str = "") -> None:
    """Scatter per-class test accuracy (y, %) against training images of the class (x, log scale).

    Points are coloured by shot group; dashed vertical lines mark the group thresholds
    (few < 20 <= medium <= 100 < many). Classes with no test or no training examples are left
    out (no accuracy, or no place on a log axis).
    """
    # Imported here so `import longtail` stays fast. The Figure API renders PNG with the Agg
    # canvas and needs no display; unlike matplotlib.use("Agg") it leaves the backend of a
    # notebook or an interactive session untouched.
    from matplotlib.figure import Figure

    train = summary["train_counts"]
    group = _group_of(summary)
    fig = Figure(figsize=(8.0, 4.5), dpi=120, layout="constrained")
    ax = fig.subplots()
    for g in SHOT_GROUPS:
        idx = [c for c, acc in enumerate(summary["per_class"])
               if acc is not None and train[c] > 0 and group.get(c) == g]
        if idx:
            ax.scatter([train[c] for c in idx], [summary["per_class"][c] for c in idx], s=22,
                       color=_GROUP_COLOURS[g], label=f"{g} ({_classes(len(idx))})", zorder=3)
            if len(summary["per_class"]) <= 20:  # names stay readable only for small C
                for c in idx:
                    ax.annotate(_class_name(summary, c), (train[c], summary["per_class"][c]), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")
    # Thresholds, labelled at the top of the axes (x in data units, y in axes fraction).
    for x, text, ha in ((MANY_SHOT_ABOVE, f" many > {MANY_SHOT_ABOVE}", "left"),
                        (FEW_SHOT_BELOW, f"few < {FEW_SHOT_BELOW} ", "right")):
        ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.text(x, 0.98, text, transform=ax.get_xaxis_transform(), ha=ha, va="top", fontsize=7, color="grey")
    ax.set_xscale("log")
    # Keep both thresholds and their labels in view even when no class is near them.
    present = [n for n in train if n > 0] or [1]
    ax.set_xlim(min(min(present), FEW_SHOT_BELOW) / 1.6, max(max(present), MANY_SHOT_ABOVE) * 1.6)
    ax.set_ylim(-3, 110)  # headroom above 100 % for the threshold labels
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "per-class accuracy", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        # Outside the axes: inside, it would hide the classes near 0 % or 100 %.
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="shot group", title_fontsize=8)
    _atomic_write(path, lambda f: fig.savefig(f, format="png"), mode="wb")


def write_report(run_dir: Path | str, summary: dict[str, Any], *, title: str,
                 extra: dict[str, Any] | None = None, hide: tuple[str, ...] = ()) -> None:
    """Write ``report.json``, ``report.md`` and ``per_class_accuracy.png`` into ``run_dir``.

    ``summary``: from :func:`longtail.metrics.summarize`; ``extra``: context stored next to it
    (config, recipe, epoch, split, ...), which must not reuse a summary key; ``hide``: keys of ``extra``
    kept in report.json but not listed on the page (they belong to another summary than this page's).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    clash = sorted(set(extra) & (set(summary) | {"title"}))
    if clash:
        raise LongtailError(f"report extra keys {clash} would overwrite summary values",
                            "rename those entries of `extra`")
    _write_json(run_dir / "report.json", {"title": title, **summary, **extra})
    _write_text(run_dir / "report.md", _report_markdown(summary, title, {k: v for k, v in extra.items()
                                                                         if k not in hide}))
    plot_per_class(run_dir / "per_class_accuracy.png", summary, title=title)


def write_seed_report(out_dir: Path | str, aggregate: dict[str, Any], per_seed: list[tuple[str, dict[str, Any]]],
                      title: str) -> None:
    """Write ``report.json`` and ``report.md`` for one recipe run with several seeds.

    ``aggregate``: from :func:`longtail.metrics.aggregate_seeds`; ``per_seed``: ``(name, summary)``
    for each seed. The page shows the mean ± std row, one row per seed, and the mean per-class
    accuracy.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "report.json",
                {"title": title, "aggregate": aggregate, "seeds": {name: s for name, s in per_seed}})

    k = aggregate.get("num_seeds", len(per_seed))
    ece = aggregate.get("ece")
    lines = [f"# {title}", "", f"{k} seeds; accuracies are top-1 %, mean ± sample std (ddof=1) over seeds. "
             "n/a: undefined (no class in the group, or none with test images).", ""]
    lines += [summary_table([("mean ± std", aggregate)] + list(per_seed)), ""]
    if ece is not None:
        lines += [f"ECE: {_fmt(ece)} %", ""]
    train = aggregate.get("train_counts")
    test = aggregate.get("test_per_class")
    if aggregate.get("per_class") is not None and train is not None:
        group = _group_of(aggregate)
        rows = [[str(c), _escape(_class_name(aggregate, c)), group.get(c, "?"), str(train[c]),
                 str(test[c]) if test else "?", _fmt(acc)] for c, acc in enumerate(aggregate["per_class"])]
        lines += ["## Per class (mean over seeds)", "",
                  _md_table(["#", "class", "group", "train", "test", "accuracy"], rows), ""]
    _write_text(out_dir / "report.md", "\n".join(lines))
