"""A user's day (issue 16, first part): progress lines in logs, quickstart that resumes like train,
evaluate that keeps the report's fields."""

import json

from longtail.cli import main
from longtail.data.registry import Splits
from longtail.experiment import evaluate_checkpoint, train_one

from conftest import synthetic_set
from test_loop_runs import tiny_config


def test_one_line_per_epoch_when_no_terminal_shows_a_bar(tmp_path):
    splits = Splits(synthetic_set([48, 24, 12, 6]), synthetic_set([10, 10, 10, 10], seed=1, name="test"))
    lines: list[str] = []
    train_one(tiny_config(epochs=3), tmp_path / "run", splits=splits, progress=None, log=lines.append)  # not a tty
    epochs = [m for m in lines if m.startswith("epoch ")]
    assert [m.split(":")[0] for m in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"], lines
    assert all(" img/s, elapsed " in m and " ETA " in m and ", lr " in m for m in epochs)
    quiet: list[str] = []
    train_one(tiny_config(epochs=2), tmp_path / "quiet", splits=splits, progress=False, log=quiet.append)
    assert not [m for m in quiet if m.startswith("epoch ")]


def test_quickstart_resumes_and_keeps_what_the_folder_holds(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    trained = json.loads((out / "report.json").read_text())["timing"]
    (out / "decouple-tau-norm").mkdir()
    (out / "decouple-tau-norm" / "report.md").write_text("an earlier second stage")
    assert main(["quickstart", "--epochs", "1", "--out", str(out), "--quiet"]) == 0  # finished: resumed, re-reported
    assert (out / "decouple-tau-norm" / "report.md").read_text() == "an earlier second stage"
    again = json.loads((out / "report.json").read_text())["timing"]  # the re-report keeps how it trained
    assert again["train_s"] == trained["train_s"] > 0 and again["train_images_per_s"] == trained["train_images_per_s"]
    assert main(["quickstart", "--epochs", "2", "--out", str(out), "--quiet"]) == 2  # other settings: refused
    assert "train.epochs: 1 (run folder) vs 2 (now)" in capsys.readouterr().err
    assert main(["quickstart", "--epochs", "2", "--out", str(out), "--quiet", "--restart"]) == 0
    assert json.loads((out / "report.json").read_text())["epoch"] == 2


def test_evaluate_keeps_the_fields_of_the_report(tmp_path):
    splits = Splits(synthetic_set([48, 24, 12, 6]), synthetic_set([10, 10, 10, 10], seed=1, name="test"))
    train_one(tiny_config(epochs=2), tmp_path / "run", splits=splits, progress=False)
    before = json.loads((tmp_path / "run" / "report.json").read_text())
    import longtail.experiment as experiment

    experiment_load = experiment.load_splits
    try:
        experiment.load_splits = lambda cfg: splits
        evaluate_checkpoint(tmp_path / "run", device="cpu")
    finally:
        experiment.load_splits = experiment_load
    after = json.loads((tmp_path / "run" / "report.json").read_text())
    for key in ("timing", "device", "train_size", "test_size", "top1", "per_class", "epoch"):
        assert after[key] == before[key], key
    assert "last epoch" in (tmp_path / "run" / "report.md").read_text().splitlines()[0]


def test_a_two_stage_recipe_prints_the_base_run_and_the_tau(tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    import longtail.recipes as rec

    base = rec.RECIPES["quickstart"]
    two = replace(base, name="quick-tau", decouple="tau-norm",
                  config=replace(base.config, recipe="quick-tau", data=replace(base.config.data, val_per_class=3)))
    monkeypatch.setitem(rec.RECIPES, "quick-tau", two)
    assert main(["train", "quick-tau", "--epochs", "1", "--out", str(tmp_path / "t"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| quick-tau (base run) |" in out and "| quick-tau (+ tau-norm) |" in out
    assert "tau = " in out and "(validation" in out


def test_one_class_is_one_class_in_the_report():
    from longtail.report import _classes

    assert _classes(1) == "1 class" and _classes(3) == "3 classes"
