"""benchmarks/method_table.py's rows on unlabeled data (issue 15): pseudo-labels and FixMatch on the `rest` pool.

End to end at a tiny scale: fake CIFAR-10 files (200 training images), one epoch, through the script's own
``main`` (its runs, RESULTS.md row and table), then again to see that nothing finished is trained or labeled twice.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from longtail.counts import ClassCounts, profile_counts

from conftest import load_benchmark

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

PER_BATCH = 40  # 5 training files: 200 images, 20 per class
N_MAX, RHO = 10, 5


def load_script():
    return load_benchmark("method_table")


def tiny_table_argv(tmp_path: Path, *methods: str, sets: tuple[str, ...] = ()) -> list[str]:
    """method_table.py on the fake CIFAR-10 under tmp_path/data: seed 0, one epoch, the tiny long-tailed subset."""
    argv = ["method_table.py", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "table"),
            "--results", str(tmp_path / "RESULTS.md"), "--seeds", "0", "--methods", *methods,
            "--set", "train.epochs=1"]
    for kv in (*sets, f"data.n_max={N_MAX}", f"data.imbalance_ratio={RHO}", "data.download=false"):
        argv += ["--set", kv]
    return argv


def write_fake_cifar10(root: Path) -> None:
    """The official cifar-10-batches-py layout, PER_BATCH images per file, labels 0..9 in turn."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": [j % 10 for j in range(PER_BATCH)],
                         "data": rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
                         "filenames": [f"img_{j}.png" for j in range(PER_BATCH)]}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{c}" for c in range(10)], "num_cases_per_batch": PER_BATCH,
                     "num_vis": 3072}, f, protocol=2)


def test_pseudo_label_and_fixmatch_rows_on_the_rest_pool(tmp_path, monkeypatch):
    mt = load_script()
    assert [m.key for m in mt.METHODS].index("pseudo-label") == [m.key for m in mt.METHODS].index("ssp-la") + 1
    keys = [m.key for m in mt.METHODS]
    assert keys.index("la-pseudo-label") == keys.index("pseudo-label") + 1
    assert keys.index("fixmatch") + 1 == keys.index("acr") == keys.index("la-sam") - 1
    fm = mt.method_config("cifar10", mt.BY_KEY["fixmatch"], {})
    assert (fm.semi.method, fm.semi.mu, fm.semi.threshold, fm.semi.lambda_u) == ("fixmatch", 1, 0.95, 1.0)
    assert fm.data.unlabeled_pool == "rest" and fm.augment.randaugment == 2 and fm.augment.cutout == 0.5
    assert fm.model.arch == "fastnet-m" and fm.train.batch_size == 512  # the fast recipe's, not the semi recipes'
    assert "mu 1" in mt.BY_KEY["fixmatch"].label

    write_fake_cifar10(tmp_path / "data")
    out, results = tmp_path / "table", tmp_path / "RESULTS.md"
    monkeypatch.setattr(sys, "argv", tiny_table_argv(tmp_path, "pseudo-label", "la-pseudo-label", "fixmatch"))
    assert mt.main() == 0

    labeled = profile_counts(N_MAX, 10, RHO)
    rest = [20 - n for n in labeled]
    # pseudo-label: the CE row's run was trained first, then labeled every image of the rest pool
    assert (out / "ce" / "seed-0" / "report.json").is_file()
    pl = json.loads((out / "pseudo-labels" / "seed-0" / "pseudo_labels.json").read_text())
    assert pl["pool"]["kind"] == "rest" and pl["pool"]["counts"] == rest and pl["report"]["kept"] == sum(rest)
    assert pl["pool"]["run"].startswith(str(out / "ce" / "seed-0"))
    rep = json.loads((out / "pseudo-label" / "seed-0" / "report.json").read_text())
    assert rep["train_size"] == 200 and rep["semi"]["labeled_counts"] == labeled
    assert rep["config"]["data"]["pseudo_labels"] == str(out / "pseudo-labels" / "seed-0")
    assert rep["config"]["model"]["arch"] == "fastnet-m" and rep["config"]["train"]["batch_size"] == 512
    # the table groups it by the labeled counts, as every other row
    view = mt.by_labeled_counts(rep)
    assert view["train_counts"] == labeled and view["groups"] == ClassCounts(tuple(labeled)).groups()
    # la-pseudo-label: the LA row's run (its own row first) labeled the pool into a folder of its own, and LA trained
    # on the union
    assert (out / "logit-adjust" / "seed-0" / "report.json").is_file()
    la_pl = json.loads((out / "pseudo-labels-logit-adjust" / "seed-0" / "pseudo_labels.json").read_text())
    assert la_pl["pool"]["run"].startswith(str(out / "logit-adjust" / "seed-0"))
    assert la_pl["pool"]["counts"] == rest and la_pl["report"]["kept"] == sum(rest)
    lap = json.loads((out / "la-pseudo-label" / "seed-0" / "report.json").read_text())
    assert lap["config"]["data"]["pseudo_labels"] == str(out / "pseudo-labels-logit-adjust" / "seed-0")
    assert lap["config"]["loss"]["name"] == "logit-adjust" and lap["train_size"] == 200
    assert mt.by_labeled_counts(lap)["train_counts"] == labeled
    # fixmatch: labeled data only in the training set, the rest pool alongside
    fmr = json.loads((out / "fixmatch" / "seed-0" / "report.json").read_text())
    assert fmr["train_counts"] == labeled and fmr["semi"]["unlabeled_pool"]["counts"] == rest
    assert fmr["config"]["semi"]["method"] == "fixmatch" and mt.by_labeled_counts(fmr) == fmr
    text = results.read_text()
    assert "| CE + pseudo-labels on the rest of CIFAR-10 | 1 |" in text and "| FixMatch on the rest" in text
    assert "| logit adjustment (tau 1) | 1 |" in text and "| LA + the LA run's pseudo-labels" in text

    # a second call trains and labels nothing again
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert mt.main() == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps


def test_the_acr_row_on_the_rest_pool(tmp_path, monkeypatch):
    """ACR at the FixMatch row's settings, its epoch the labeled set's whole batches (the fast protocol's epoch)."""
    mt = load_script()
    cfg = mt.method_config("cifar10", mt.BY_KEY["acr"], {})
    assert (cfg.semi.method, cfg.semi.mu, cfg.semi.threshold, cfg.semi.acr_steps_per_epoch) == ("acr", 1, 0.95, 0)
    assert cfg.data.unlabeled_pool == "rest" and (cfg.augment.randaugment, cfg.augment.policy) == (2, "fixmatch")
    assert cfg.model.arch == "fastnet-m" and cfg.train.batch_size == 512 and cfg.loss.name == "ce"

    write_fake_cifar10(tmp_path / "data")
    out, results = tmp_path / "table", tmp_path / "RESULTS.md"
    # 512 is more than this tiny labeled set: ACR draws whole batches, so the test trains at batch 8
    monkeypatch.setattr(sys, "argv", tiny_table_argv(tmp_path, "acr", sets=("train.batch_size=8",)))
    assert mt.main() == 0
    labeled = profile_counts(N_MAX, 10, RHO)
    rep = json.loads((out / "acr" / "seed-0" / "report.json").read_text())
    assert rep["config"]["semi"]["method"] == "acr" and rep["train_counts"] == labeled
    assert rep["semi"]["unlabeled_pool"]["counts"] == [20 - n for n in labeled]
    steps = [json.loads(line)["steps"] for line in (out / "acr" / "seed-0" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [sum(labeled) // 8]
    assert "| ACR on the rest of CIFAR-10" in results.read_text()


def test_the_readme_block_is_replaced_and_the_prose_kept(tmp_path):
    mt = load_script()
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{mt.README_START}\n| old |\n{mt.README_END}\nafter\n")
    mt.write_readme(readme, ["| method | seeds |", "|---|---|", "| CE | 3 |"])
    table = "| method | seeds |\n|---|---|\n| CE | 3 |"
    assert readme.read_text() == f"intro\n{mt.README_START}\n{table}\n{mt.README_END}\nafter\n"
    (tmp_path / "bare.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="method-table"):
        mt.write_readme(tmp_path / "bare.md", ["| x |"])


def test_a_long_recipes_remedy_without_its_schedule():
    """The VS + ADRW + TLA row takes the recipe's loss, weighting, SAM and augmentation, and the fast protocol's
    network and schedule (not the recipe's 400 epochs, batch 128 or lr 0.1)."""
    mt = load_script()
    cfg = mt.method_config("cifar10", mt.BY_KEY["vs-adrw-tla"], {})
    assert cfg.loss.name == "vs-tla" and (cfg.train.weighting, cfg.train.weighting_power) == ("inverse-power", 0.15)
    assert (cfg.optim.name, cfg.optim.sam_rho, cfg.optim.sam_rho_late) == ("sam", 0.1, 0.2)
    assert cfg.augment.autoaugment == "cifar10" and cfg.augment.cutout_policy == "devries"
    fast = mt.table_base("cifar10")
    assert (cfg.model, cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.weight_decay) == \
        (fast.model, fast.train.epochs, fast.train.batch_size, fast.train.lr, fast.train.weight_decay)


def test_the_table_protocol_is_pinned_whatever_the_fast_recipe_does(monkeypatch):
    """Every row starts from batch 512 / lr 0.75 (the settings its seed-0 rows were measured at), even if the fast
    recipe moves: a half-measured table must not change protocol between its seeds."""
    mt = load_script()
    from longtail import config as lt_config

    for key in ("ce", "logit-adjust", "ce-val", "fixmatch", "ssp-la"):
        cfg = mt.method_config("cifar10", mt.BY_KEY[key], {})
        assert (cfg.train.batch_size, cfg.train.lr, cfg.model.arch, cfg.train.epochs) == (512, 0.75, "fastnet-m", 16)
    moved = lt_config.apply_overrides(mt.get_recipe("cifar10-lt-fast-ce").config,
                                      {"train.batch_size": 64, "train.lr": 0.1})
    monkeypatch.setattr(mt, "get_recipe", lambda name: type("R", (), {"config": moved})())
    assert (mt.table_base("cifar10").train.batch_size, mt.table_base("cifar10").train.lr) == (512, 0.75)


def write_rows(mt, results: Path, rows: list[tuple[str, int, float]]) -> None:
    """RESULTS.md with a run section holding one row per (method label, seed, top-1), in the script's own format."""
    lines = [f"| 2026-12-01 | CPU, load average 1.0 -> 1.0 | {label} | {seed} | 16 | 100.0 | {top1:.2f} | {top1:.2f} "
             f"| {top1:.2f} | n/a | {top1 - 10:.2f} | `python benchmarks/method_table.py` |"
             for label, seed, top1 in rows]
    results.write_text("# Benchmark results\n\n" + mt.RUN_SECTION + "\n\n" + mt.RUN_HEADER + "\n" + "\n".join(lines)
                       + "\n\n## Another section\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")


def test_the_table_is_made_of_the_recorded_rows_not_the_run_folders(tmp_path):
    """The run folders live outside the repository and were once lost between sessions: the table is computed from
    the rows in RESULTS.md (every seed recorded, the last row of a re-evaluated run), so it survives them."""
    mt = load_script()
    results = tmp_path / "RESULTS.md"
    write_rows(mt, results, [("CE", 0, 70.0), ("CE", 2, 60.0), ("CE", 2, 74.0), ("LDAM-DRW", 1, 75.5)])
    runs = mt.recorded_runs(results)
    assert set(runs) == {("CE", 0), ("CE", 2), ("LDAM-DRW", 1)}
    assert runs[("CE", 2)]["top1"] == 74.0 and runs[("CE", 2)]["few"] is None and runs[("CE", 2)]["rarest3"] == 64.0
    lines = mt.table(runs, "cifar10")
    ce = next(line for line in lines if line.startswith("| CE |"))
    assert "| 2 | 72.00 ± 2.83 | 62.00 ± 2.83 |" in ce and ce.endswith("| 100/100 |")
    assert any(line.startswith("| LDAM-DRW | 1 | 75.50 |") for line in lines)
    assert not any(line.startswith("| focal") for line in lines)
    assert mt.recorded_runs(tmp_path / "absent.md") == {}

    # another protocol's rows (a smoke test, CIFAR-100, a GPU) are another table; a "|" inside the command is kept;
    # a "nan" cell counts as missing
    text = results.read_text().splitlines()
    i = max(j for j, line in enumerate(text) if line.startswith("| 2026"))  # the last run row
    ce2 = next(line for line in text if "| CE | 2 |" in line and "| 74.00 |" in line)
    smoke = ce2.replace("`python benchmarks/method_table.py`",
                        "`python benchmarks/method_table.py --set train.epochs=1`").replace("| CE | 2 |", "| CE | 5 |")
    piped = ce2.replace("| 74.00 |", "| 90.00 |").replace("| CE | 2 |", "| CE | 6 |").replace(
        "`python benchmarks/method_table.py`", "`python benchmarks/method_table.py --methods ce | tee log`")
    c100 = ce2.replace("`python benchmarks/method_table.py`",
                       "`python benchmarks/method_table.py --dataset=cifar100 --device cpu`")
    nan = ce2.replace("| 64.00 |", "| nan |").replace("| CE | 2 |", "| CE | 7 |")
    results.write_text("\n".join(text[:i + 1] + [smoke, piped, c100, nan] + text[i + 1:]) + "\n")
    runs = mt.recorded_runs(results)
    assert set(runs) == {("CE", 0), ("CE", 2), ("LDAM-DRW", 1), ("CE", 6), ("CE", 7)}
    assert runs[("CE", 6)]["top1"] == 90.0 and runs[("CE", 6)]["command"].endswith("| tee log`")
    assert runs[("CE", 7)]["rarest3"] is None and runs[("CE", 2)]["top1"] == 74.0
    assert set(mt.recorded_runs(results, mt.protocol_of(["--set", "train.epochs=1"]))) == {("CE", 5)}
    assert set(mt.recorded_runs(results, ("cifar100", "cpu", ()))) == {("CE", 2)}
    assert mt.table_section(mt.DEFAULT_PROTOCOL) == mt.TABLE_SECTION
    assert mt.table_section(("cifar10", "cpu", ("train.epochs=1",))).endswith(": cifar10, cpu, train.epochs=1")
    results = tmp_path / "RESULTS.md"
    with mt.locked(results):  # the lock is a file beside RESULTS.md, and it is released
        pass
    with mt.locked(results):
        pass


def test_a_recorded_run_is_not_trained_again_and_a_base_run_gets_its_row_first(tmp_path, monkeypatch):
    """A second stage whose CE base has no row records the base first (it once trained the base without a row, so the
    table lost it with the run folders); a (method, seed) with a row trains nothing."""
    mt = load_script()
    results, calls = tmp_path / "RESULTS.md", []
    write_rows(mt, results, [("CE", 0, 70.0)])

    def fake_run_one(m, seed, a, common):
        calls.append((m.key, seed))
        return {"top1": 71.0, "many": 80.0, "medium": 60.0, "train_counts": [50, 20, 5], "per_class": [80, 70, 60],
                "timing": {"train_s": 12.0}}
    monkeypatch.setattr(mt, "run_one", fake_run_one)
    argv = ["method_table.py", "--data-root", str(tmp_path), "--out", str(tmp_path / "table"), "--results",
            str(results), "--seeds", "0", "--methods", "ce", "crt", "tau-norm"]
    monkeypatch.setattr(sys, "argv", argv)
    assert mt.main() == 0
    assert calls == [("ce-val", 0), ("crt", 0), ("tau-norm", 0)]
    runs = mt.recorded_runs(results)
    assert {k for k in runs if k[1] == 0} == {("CE", 0), (mt.BY_KEY["ce-val"].label, 0), ("cRT", 0), ("tau-norm", 0)}
    assert runs[("CE", 0)]["top1"] == 70.0 and results.read_text().count("| cRT | 0 |") == 1
    assert "## Another section" in results.read_text()  # the rest of the file is kept
    assert mt.main() == 0 and len(calls) == 3


def test_a_row_another_table_process_holds_is_left_to_it(tmp_path, monkeypatch, capsys):
    """Two table processes side by side: a row whose run folder the other one holds is skipped, not a crash; any
    other error still stops the table."""
    from longtail import LongtailError

    mt = load_script()
    held = tmp_path / "table" / "ce" / "seed-1"
    calls = []

    def fake_run_one(m, seed, a, common):
        calls.append(m.key)
        if m.key == "ce":
            raise LongtailError(f"the run folder {held} is in use by process 1 on vm (since now)", "wait")
        raise LongtailError("something else went wrong", "fix it")
    monkeypatch.setattr(mt, "run_one", fake_run_one)
    argv = ["method_table.py", "--data-root", str(tmp_path), "--out", str(tmp_path / "table"), "--results",
            str(tmp_path / "RESULTS.md"), "--seeds", "1", "--methods", "ce", "focal"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(LongtailError, match="something else"):
        mt.main()
    assert calls == ["ce", "focal"] and "ce seed 1: left to the process that holds it" in capsys.readouterr().out


def test_balanced_softmax_shows_the_logit_adjusted_runs_and_trains_nothing(tmp_path, monkeypatch, capsys):
    """Balanced softmax is logit adjustment at tau 1 (the same loss, the same table settings): its row is the LA
    runs, with its own earlier runs checked against them; a real difference in settings or loss would train it."""
    mt = load_script()
    out, results = tmp_path / "table", tmp_path / "RESULTS.md"
    la, bs = mt.BY_KEY["logit-adjust"], mt.BY_KEY["balanced-softmax"]
    write_rows(mt, results, [(la.label, 0, 80.0), (la.label, 1, 82.0), (bs.label, 0, 80.0)])
    assert mt.same_row("cifar10", bs) is la
    row = next(line for line in mt.table(mt.recorded_runs(results), "cifar10") if line.startswith("| balanced softmax"))
    assert "the runs of logit adjustment" in row and "its own run of seed 0 gave the same top-1" in row
    assert "| 2 | 81.00 ± 1.41 |" in row and "DIFFER" not in row
    write_rows(mt, results, [(la.label, 0, 80.0), (la.label, 1, 82.0), (bs.label, 0, 80.0), (bs.label, 1, 79.0)])
    row = next(line for line in mt.table(mt.recorded_runs(results), "cifar10") if line.startswith("| balanced softmax"))
    assert "its own runs of seeds [1] DIFFER" in row
    write_rows(mt, results, [(la.label, 0, 80.0), (bs.label, 0, 80.0), (bs.label, 3, 79.0)])
    row = next(line for line in mt.table(mt.recorded_runs(results), "cifar10") if line.startswith("| balanced softmax"))
    assert "seeds [3] have no run of logit adjustment" in row and "DIFFER" not in row
    # not the same once a setting outside the loss differs, or the losses differ on the same inputs
    monkeypatch.setattr(mt, "METHODS", [*mt.METHODS])
    other = mt.Method("bs-drw", "BS + DRW", "balanced-softmax", extra=(("train.drw_start", 160.0),),
                      same_as="logit-adjust")
    assert mt.same_row("cifar10", other) is None
    tau2 = mt.Method("la-2", "LA tau 2", "logit-adjust", extra=(("loss.tau", 2.0),), same_as="logit-adjust")
    assert mt.same_row("cifar10", tau2) is None
    # main trains nothing for it
    monkeypatch.setattr(mt, "run_one", lambda *a, **k: pytest.fail("trained an aliased row"))
    monkeypatch.setattr(sys, "argv", ["method_table.py", "--data-root", str(tmp_path), "--out", str(out),
                                      "--results", str(results), "--seeds", "2",
                                      "--methods", "balanced-softmax"])
    assert mt.main() == 0
    assert "balanced-softmax: trains nothing" in capsys.readouterr().out
