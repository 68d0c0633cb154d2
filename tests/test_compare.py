"""Comparing run folders: single-seed, multi-seed and bare seed-N folders, on hand-written reports."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from longtail.compare import compare_runs, format_entry, write_comparison
from longtail.errors import LongtailError
from longtail.metrics import aggregate_seeds
from longtail.report import write_seed_report

TRAIN = [200, 50, 5]  # many = [0], medium = [1], few = [2]


def summary(per_class: list[float | None], recipe: str, seed: int = 0) -> dict:
    """A report.json body in the single-seed format (the keys compare and aggregate read)."""
    present = [a for a in per_class if a is not None]
    return {
        "title": f"{recipe} (seed {seed}, last epoch, test set)", "recipe": recipe, "seed": seed,
        "top1": sum(present) / len(present), "per_class": per_class,
        "many": per_class[0], "medium": per_class[1], "few": per_class[2],
        "balanced_accuracy": sum(present) / len(present), "ece": 5.0, "nll": 1.0,
        "train_counts": TRAIN, "test_per_class": [10, 10, 0 if per_class[2] is None else 10],
        "groups": {"many": [0], "medium": [1], "few": [2]}, "class_names": None,
    }


def write_json(path: Path, payload: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "report.json").write_text(json.dumps(payload))


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    single = tmp_path / "ce"
    write_json(single, summary([90.0, 60.0, None], "cifar10-lt-ce"))  # no few-shot class in the test set

    multi = tmp_path / "ldam"
    seeds = [summary([92.0, 70.0, 40.0], "ldam", 0), summary([94.0, 66.0, 50.0], "ldam", 1),
             summary([93.0, 68.0, 30.0], "ldam", 2)]
    write_seed_report(multi, aggregate_seeds(seeds), [(f"seed {k}", s) for k, s in enumerate(seeds)],
                      title="ldam: 3 seeds (last epoch, test set)")

    bare = tmp_path / "focal"  # an interrupted multi-seed run: seed-2 has no report yet
    write_json(bare / "seed-0", summary([80.0, 50.0, 20.0], "focal", 0))
    write_json(bare / "seed-1", summary([84.0, 54.0, 10.0], "focal", 1))
    (bare / "seed-2" / "checkpoints").mkdir(parents=True)
    return {"single": single, "multi": multi, "bare": bare}


def cells(table: str, run: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {run} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_numbers_are_mean_and_std_over_seeds(runs) -> None:
    table, rows = compare_runs([runs["single"], runs["multi"], runs["bare"]])
    assert table.splitlines()[0] == "| run | seeds | top-1 | many | medium | few | balanced |"
    assert [r["run"] for r in rows] == ["cifar10-lt-ce", "ldam", "focal"]
    assert [r["seeds"] for r in rows] == [1, 3, 2]

    # single seed: the values themselves, n/a for the undefined few-shot group
    assert cells(table, "cifar10-lt-ce") == ["cifar10-lt-ce", "1", "75.00", "90.00", "60.00", "n/a", "75.00"]
    assert rows[0]["few"]["mean"] is None

    # three seeds: mean ± sample std (ddof=1)
    few = [40.0, 50.0, 30.0]
    assert rows[1]["few"]["mean"] == pytest.approx(40.0)
    assert rows[1]["few"]["std"] == pytest.approx(statistics.stdev(few))
    assert cells(table, "ldam")[2:6] == [
        f"{statistics.fmean([202 / 3, 210 / 3, 191 / 3]):.2f} ± {statistics.stdev([202 / 3, 210 / 3, 191 / 3]):.2f}",
        "93.00 ± 1.00", "68.00 ± 2.00", "40.00 ± 10.00"]

    # seed folders without an aggregate: aggregated here, the unfinished seed named in a note
    assert cells(table, "focal")[3:6] == ["82.00 ± 2.83", "52.00 ± 2.83", "15.00 ± 7.07"]
    assert rows[2]["missing_seeds"] == ["seed-2"]
    assert "seed-2" in table


def test_names_override_and_clashing_recipes_get_their_folder(runs, tmp_path: Path) -> None:
    _, rows = compare_runs([runs["single"], runs["multi"]], names=["baseline", "ours"])
    assert [r["run"] for r in rows] == ["baseline", "ours"]
    with pytest.raises(LongtailError, match="names"):
        compare_runs([runs["single"]], names=["a", "b"])
    twin = tmp_path / "ce-again"
    write_json(twin, summary([91.0, 61.0, None], "cifar10-lt-ce"))
    _, rows = compare_runs([runs["single"], twin])
    assert [r["run"] for r in rows] == ["cifar10-lt-ce (ce)", "cifar10-lt-ce (ce-again)"]
    nameless = tmp_path / "by-hand"
    body = summary([50.0, 50.0, 50.0], "x")
    del body["recipe"]
    write_json(nameless, body)
    assert compare_runs([nameless])[1][0]["run"] == "by-hand"


def test_format_entry() -> None:
    assert format_entry({"mean": 1.0, "std": 0.5, "values": [1.5, None, 0.5]}) == "1.00 ± 0.50 (n=2)"
    assert format_entry(None) == "n/a"


def test_write_comparison_writes_markdown_and_png(runs, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    text = write_comparison([runs["single"], runs["multi"], runs["bare"]], out)
    assert (out / "comparison.md").read_text(encoding="utf-8") == text
    assert "| ldam | 3 |" in text and "comparison.png" in text
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_report_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    empty = tmp_path / "untrained"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(LongtailError, match="untrained has no report.json") as e:
        compare_runs([empty])
    assert "longtail evaluate" in e.value.fix and "longtail train" in e.value.fix
    with pytest.raises(LongtailError, match="does not exist"):
        compare_runs([tmp_path / "nowhere"])
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "report.json").write_text("{not json")
    with pytest.raises(LongtailError, match="cannot read"):
        compare_runs([tmp_path / "junk"])


def test_long_run_names_and_na_marks_stay_inside_the_figure(runs, tmp_path: Path) -> None:
    """Issue 16: long run names clipped the title on the left, and an n/a mark fell outside the axes."""
    from longtail.compare import comparison_figure

    long = tmp_path / "cifar10-lt-ldam-drw-with-a-very-long-descriptive-run-name-seed-sweep"
    write_json(long, summary([91.0, 62.0, None], "cifar10-lt-ldam-drw-with-a-very-long-descriptive-name"))
    _, rows = compare_runs([runs["single"], long, runs["multi"]])  # the first and second runs: few is n/a
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = comparison_figure(rows)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    ax = fig.axes[0]
    texts = [t for t in ax.texts if t.get_text() == "n/a"]
    assert len(texts) == 2
    box = ax.get_window_extent(renderer)
    for t in texts:
        e = t.get_window_extent(renderer)
        assert box.x0 <= e.x0 and e.x1 <= box.x1, "an n/a mark outside the axes"
    for artist in [ax.title, ax.get_legend()]:
        e = artist.get_window_extent(renderer)
        assert e.x0 >= 0 and e.x1 <= width and e.y1 <= height, f"{artist} is clipped by the figure"
