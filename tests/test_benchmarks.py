"""The benchmark script writes what it measured: its rows carry the runs' own numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run_recipe.py"


def _run(tmp_path: Path, *args: str) -> list[str]:
    results = tmp_path / "RESULTS.md"
    subprocess.run([sys.executable, str(SCRIPT), "quickstart", "--device", "cpu", "--epochs", "2",
                    "--results", str(results), *args], check=True, capture_output=True, text=True, timeout=600)
    return [line for line in results.read_text().splitlines() if line.startswith("| 20")]


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip("|").split("|")]


@pytest.mark.slow
@pytest.mark.parametrize("stack", [False, True])
def test_run_recipe_appends_measured_rows(tmp_path, stack):
    out = tmp_path / "runs"
    rows = _run(tmp_path, "--seeds", "0", "1", "--out", str(out), *(["--stack"] if stack else []))
    if stack:  # one row for the seeds trained at once: mean ± std of the runs' own reports
        assert len(rows) == 1
        top1 = [json.loads((out / f"seed-{s}" / "report.json").read_text())["top1"] for s in (0, 1)]
        cells = _cells(rows[0])
        assert cells[3] == "2" and cells[4] == "2"  # seeds, epochs
        assert float(cells[11].split("±")[0]) == pytest.approx(sum(top1) / 2, abs=0.006)
        assert all(float(cells[i]) >= 0 for i in range(5, 11))
    else:  # one row per seed, with that seed's top-1
        assert len(rows) == 2
        for s, row in enumerate(rows):
            report = json.loads((out / f"seed-{s}" / "report.json").read_text())
            cells = _cells(row)
            assert cells[3] == str(s) and float(cells[10]) == pytest.approx(report["top1"], abs=0.006)


@pytest.mark.slow
def test_tta_compare_rows_are_the_checkpoints_numbers(tmp_path):
    """tta_compare.py evaluates a finished run with every mode: the run's own mode gives its report's top-1, and the
    report is left as it was."""
    from longtail.cli import main

    run = tmp_path / "run"
    assert main(["train", "quickstart", "--epochs", "2", "--out", str(run), "--quiet"]) == 0
    report_text = (run / "report.json").read_text()
    results = tmp_path / "RESULTS.md"
    script = SCRIPT.parent / "tta_compare.py"
    subprocess.run([sys.executable, str(script), str(run), "--results", str(results)], check=True,
                   capture_output=True, text=True, timeout=600)
    rows = [_cells(line) for line in results.read_text().splitlines() if line.startswith("| 20")]
    assert [r[5] for r in rows] == ["none", "flip", "flip-translate"] and all(r[4] == "none" for r in rows)
    assert float(rows[0][6]) == pytest.approx(json.loads(report_text)["top1"], abs=0.006)
    assert (run / "report.json").read_text() == report_text


@pytest.mark.slow
def test_posthoc_shift_rows_at_zero_are_the_runs_own_numbers(tmp_path):
    """posthoc_shift.py: shift 0 is the run's report (its own TTA), another shift moves the numbers; the report
    stays as it was."""
    from longtail.cli import main

    run = tmp_path / "run"
    assert main(["train", "quickstart", "--epochs", "2", "--out", str(run), "--quiet"]) == 0
    report_text = (run / "report.json").read_text()
    results = tmp_path / "RESULTS.md"
    subprocess.run([sys.executable, str(SCRIPT.parent / "posthoc_shift.py"), str(run), "--shifts", "0", "2",
                    "--results", str(results)], check=True, capture_output=True, text=True, timeout=600)
    rows = [_cells(line) for line in results.read_text().splitlines() if line.startswith("| 20")]
    assert [r[5] for r in rows] == ["0", "2"]
    report = json.loads(report_text)
    assert float(rows[0][6]) == pytest.approx(report["top1"], abs=0.006)
    assert rows[1][6:8] != rows[0][6:8]  # a shift of 2 log-priors changes the predictions of a 10-class model
    assert (run / "report.json").read_text() == report_text


PROBES = Path(__file__).resolve().parent.parent / "benchmarks" / "fast_probes.py"


def test_capped_sampler_takes_at_most_cap_of_each_class_fresh_each_epoch():
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("fast_probes", PROBES)
    probes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probes)  # importing patches nothing: only apply_probe does
    labels = torch.tensor([0] * 50 + [1] * 7 + [2] * 2)
    s = probes.CappedInstance(labels, 3, cap=10)
    assert s.num_samples == 10 + 7 + 2
    g = torch.Generator().manual_seed(0)
    first, second = s.epoch_indices(g), s.epoch_indices(g)
    for idx in (first, second):
        assert len(idx) == 19 and len(set(idx.tolist())) == 19  # no repeats within an epoch
        assert torch.bincount(labels[idx], minlength=3).tolist() == [10, 7, 2]
    assert set(first.tolist()) != set(second.tolist())  # the head's subset is drawn afresh


@pytest.mark.slow
def test_fast_probe_rows_name_the_probe_and_train_the_probed_network(tmp_path):
    results, out = tmp_path / "RESULTS.md", tmp_path / "runs"
    subprocess.run([sys.executable, str(PROBES), "widths-4-8-8", "quickstart", "--device", "cpu", "--epochs", "1",
                    "--results", str(results), "--out", str(out)], check=True, capture_output=True, text=True,
                   timeout=600)
    rows = [line for line in results.read_text().splitlines() if line.startswith("| 20")]
    assert len(rows) == 1 and "`python benchmarks/fast_probes.py widths-4-8-8 quickstart" in rows[0]
    cfg = json.loads((out / "seed-0" / "config.json").read_text())["config"]
    assert cfg["model"]["arch"] == "fastnet-probe"
    report = json.loads((out / "seed-0" / "report.json").read_text())
    assert float(_cells(rows[0])[10]) == pytest.approx(report["top1"], abs=0.006)


def test_graph_drift_dry_run_on_the_cpu_reports_equal_repeats():
    """benchmarks/graph_drift.py (the GPU engines' drift) runs here with three eager runs: a seeded CPU run
    repeats bit for bit, so every difference it prints is 0 and both settings (unweighted, DRW) are reported."""
    out = subprocess.run([sys.executable, str(SCRIPT.parent / "graph_drift.py"), "--device", "cpu", "--engines",
                          "eager", "eager", "eager", "--epochs", "1"], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert [ln.split(",")[0] for ln in lines] == ["unweighted", "DRW from epoch 3"]
    assert all(ln.count("0.00e+00") == 2 for ln in lines), out.stdout


def test_faithful_pairs_skip_a_half_recorded_in_results_and_run_only_the_halves_asked(tmp_path, monkeypatch):
    """benchmarks/faithful_before_after.py: a half whose row is in RESULTS.md is not run again (its run folder may be
    gone), and ``--halves after`` runs the other half alone."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("faithful_before_after", SCRIPT.parent / "faithful_before_after.py")
    fb = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "faithful_before_after", fb)  # its dataclasses look their module up
    spec.loader.exec_module(fb)
    pair, results = fb.BY_KEY["simsiam-probe"], tmp_path / "RESULTS.md"
    before = (f"| 2026-11-30 | CPU, load average 1.0 -> 1.0 | {pair.item} | before | `{pair.before.recipe}` | "
              f"{pair.before.label} | {pair.short_label}; seed 0 | k-NN 20.31, probe 23.25 | 1861 |")
    fb.append_row(results, before, section=fb.SECTION, header=fb.HEADER)
    assert fb.recorded(results, pair, "before", 0)
    assert not fb.recorded(results, pair, "after", 0) and not fb.recorded(results, pair, "before", 1)
    assert not fb.recorded(results, fb.BY_KEY["fixmatch"], "before", 0)
    ran = []

    def fake_half(p, half, out, a):
        ran.append((p.key, half.recipe, a.seed))
        return {"knn_top1": 1.0, "linear_probe_top1": 2.0, "top1": 3.0, "timing": {"train_s": 5.0}}
    monkeypatch.setattr(fb, "run_half", fake_half)
    monkeypatch.setattr(sys, "argv", ["faithful_before_after.py", "--out", str(tmp_path / "runs"), "--results",
                                      str(results), "--pairs", "simsiam-probe"])
    assert fb.main() == 0
    assert ran == [("simsiam-probe", pair.after.recipe, 0)] and fb.recorded(results, pair, "after", 0)
    monkeypatch.setattr(sys, "argv", ["faithful_before_after.py", "--out", str(tmp_path / "runs"), "--results",
                                      str(results), "--pairs", "simsiam-probe", "--seed", "1", "--halves", "after"])
    assert fb.main() == 0
    assert ran[1:] == [("simsiam-probe", pair.after.recipe, 1)] and not fb.recorded(results, pair, "before", 1)
