"""`longtail tune`: one run per grid point, the choice on the validation split only, resumable, clear errors."""

import json

import pytest

import longtail.tune as tune_module
from longtail import LongtailError
from longtail.cli import main
from longtail.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from longtail.data.registry import Splits
from longtail.tune import grid_points, parse_grid, point_name, tune

from conftest import synthetic_set

COUNTS = [48, 24, 12, 6]


def tiny_config(epochs=2) -> RunConfig:
    return RunConfig(recipe="tiny-test", data=DataConfig(dataset="synthetic"), model=ModelConfig(arch="tiny"),
                     train=TrainConfig(epochs=epochs, batch_size=16, lr=0.05, device="cpu", checkpoint_every=1,
                                       crop_padding=1))


def test_grid_is_parsed_in_order_and_its_points_are_the_product():
    grid = parse_grid(["train.weight_decay=5e-4, 5e-3", "loss.tau=1,1.5"])
    assert grid == {"train.weight_decay": ["5e-4", "5e-3"], "loss.tau": ["1", "1.5"]}
    points = grid_points(grid)
    assert [(p["train.weight_decay"], p["loss.tau"]) for p in points] == [("5e-4", "1"), ("5e-4", "1.5"),
                                                                          ("5e-3", "1"), ("5e-3", "1.5")]
    assert all(list(p) == ["train.weight_decay", "loss.tau"] for p in points)
    assert point_name(points[1]) == "train.weight_decay=5e-4,loss.tau=1.5"


@pytest.mark.parametrize("items, problem", [
    (["train.weight_decay"], "is not KEY=V1,V2"), (["train.weight_decay=1e-3,"], "is not KEY=V1,V2"),
    (["=1,2"], "is not KEY=V1,V2"), (["train.lr=0.1", "train.lr=0.2"], "names train.lr twice"),
    (["train.lr=0.1,0.1"], "repeats a value"), ([], "needs a grid")])
def test_a_bad_grid_is_named(items, problem):
    with pytest.raises(LongtailError, match=problem):
        parse_grid(items)


def test_the_choice_follows_the_validation_split_never_the_test_set(tmp_path, monkeypatch):
    """Stand-in runs whose validation and test scores disagree: the chosen point is the validation's best."""
    scores = {"0.01": (50.0, 90.0), "0.02": (70.0, 60.0), "0.03": (70.0, 95.0)}  # lr -> (val balanced, test top-1)

    def fake_train_one(cfg, out, **kw):
        val, test = scores[str(cfg.train.lr)]
        out.mkdir(parents=True)
        return {"top1": test, "balanced_accuracy": test, "few": None, "many": None,
                "train_counts": [50, 20, 20, 5, 5], "per_class": [99.0, 10.0, 30.0, test, None],
                "val": {"balanced_accuracy": val, "top1": val, "num_test": 200}}
    monkeypatch.setattr(tune_module, "train_one", fake_train_one)
    base = RunConfig(recipe="tiny-test", data=DataConfig(dataset="synthetic", val_per_class=2))
    s = tune(base, {"train.lr": ["0.01", "0.02", "0.03"]}, tmp_path / "t", log=lambda _: None)
    assert s["chosen"]["point"] == {"train.lr": "0.02"}  # the first of the validation's tie; not the test's 0.03
    assert s["set"] == ["--set train.lr=0.02"]
    saved = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert saved["chosen"]["folder"] == "train.lr=0.02" and [r["test_top1"] for r in saved["rows"]] == [90, 60, 95]
    md = (tmp_path / "t" / "tune.md").read_text()
    assert "| **0.02** | **70.00** |" in md and "not used to choose" in md
    # the rarest three: classes 4 (no test images: left out), 3 and then 2 of the tie 20/20 (the later class)
    assert [r["test_rarest3"] for r in saved["rows"]] == [60.0, 45.0, 62.5] and "test rarest 3" in md
    assert "The validation split has 200 images: one image moves its top-1 by 0.5 points" in md
    assert "| 90.00 | 60.00 |" in md and "| **60.00** | **45.00** |" in md
    s = tune(base, {"train.lr": ["0.01", "0.02", "0.03"]}, tmp_path / "t2", by="val_top1", log=lambda _: None)
    assert s["chosen"]["point"] == {"train.lr": "0.02"}


def test_several_seeds_choose_by_their_mean_validation_score(tmp_path, monkeypatch):
    """lr 0.1 has the best single validation seed, lr 0.2 the best mean: the mean chooses; each seed has its folder."""
    val = {("0.1", 0): 90.0, ("0.1", 1): 40.0, ("0.2", 0): 70.0, ("0.2", 1): 72.0}
    folders = []

    def fake_train_one(cfg, out, **kw):
        folders.append(out.relative_to(tmp_path / "t").as_posix())
        v = val[(str(cfg.train.lr), cfg.seed)]
        return {"top1": 50.0 + cfg.seed, "few": None, "val": {"balanced_accuracy": v, "top1": v}}
    monkeypatch.setattr(tune_module, "train_one", fake_train_one)
    base = RunConfig(recipe="tiny-test", data=DataConfig(dataset="synthetic", val_per_class=2))
    s = tune(base, {"train.lr": ["0.1", "0.2"]}, tmp_path / "t", seeds=[0, 1], log=lambda _: None)
    assert folders == ["train.lr=0.1/seed-0", "train.lr=0.1/seed-1", "train.lr=0.2/seed-0", "train.lr=0.2/seed-1"]
    assert s["chosen"]["point"] == {"train.lr": "0.2"} and s["chosen"]["val_balanced"] == pytest.approx(71.0)
    assert s["rows"][0]["val_balanced_std"] == pytest.approx(35.355, abs=1e-3)
    assert s["rows"][0]["test_few"] is None and s["rows"][0]["test_top1"] == pytest.approx(50.5)
    md = (tmp_path / "t" / "tune.md").read_text()
    assert "mean ± std over seeds 0, 1" in md and "| **0.2** | **71.00 ± 1.41** |" in md
    with pytest.raises(LongtailError, match="repeat"):
        tune(base, {"train.lr": ["0.1", "0.2"]}, tmp_path / "t3", seeds=[0, 0], log=lambda _: None)


@pytest.mark.slow
def test_tune_trains_each_point_once_and_resumes(tmp_path):
    splits = Splits(synthetic_set(COUNTS), synthetic_set([10] * 4, seed=1, name="test"),
                    synthetic_set([8] * 4, seed=2, name="val"))
    out = tmp_path / "tune"
    first = tune(tiny_config(), {"train.weight_decay": ["0", "0.05"]}, out, splits=splits, log=lambda _: None)
    for row in first["rows"]:
        report = json.loads((out / row["folder"] / "report.json").read_text())
        assert row["val_balanced"] == report["val"]["balanced_accuracy"] and row["test_top1"] == report["top1"]
        cfg = json.loads((out / row["folder"] / "config.json").read_text())["config"]
        assert str(cfg["train"]["weight_decay"]) in (row["point"]["train.weight_decay"], "0.0")
    best = max(first["rows"], key=lambda r: r["val_balanced"])
    assert first["chosen"]["val_balanced"] == best["val_balanced"]
    ckpt = out / first["rows"][0]["folder"] / "checkpoints" / "last.pt"
    stamp = ckpt.stat().st_mtime_ns
    again = tune(tiny_config(), {"train.weight_decay": ["0", "0.05"]}, out, splits=splits, log=lambda _: None)
    assert again["rows"] == first["rows"] and ckpt.stat().st_mtime_ns == stamp  # finished points are read back


def test_tune_needs_a_validation_split_and_checks_every_point_first(tmp_path):
    with pytest.raises(LongtailError, match="chooses on a validation split") as e:
        tune(tiny_config(), {"train.lr": ["0.1", "0.2"]}, tmp_path / "t")
    assert "--val-per-class 20" in e.value.fix
    base = RunConfig(recipe="tiny-test", data=DataConfig(dataset="synthetic", val_per_class=2))
    with pytest.raises(LongtailError, match="train.lr"):  # the bad value is found before anything trains
        tune(base, {"train.lr": ["0.1", "-1"]}, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_tune_refuses_grids_it_could_not_choose_honestly(tmp_path):
    base = RunConfig(recipe="tiny-test", data=DataConfig(dataset="synthetic", val_per_class=2))
    with pytest.raises(LongtailError, match="--grid seed") as e:
        tune(base, {"seed": ["0", "1"]}, tmp_path / "t")
    assert "--seeds" in e.value.fix
    for key, values in [("data.val_per_class", ["0", "20"]), ("data.imbalance_ratio", ["10", "100"]),
                        ("data.subset_seed", ["0", "1"])]:
        with pytest.raises(LongtailError, match="changes the data"):
            tune(base, {key: values}, tmp_path / "t")
    inat = RunConfig(recipe="x", data=DataConfig(dataset="inat2018", val_split="./val2018.json"))
    with pytest.raises(LongtailError, match="the validation split is the test split"):
        tune(inat, {"train.lr": ["0.1", "0.2"]}, tmp_path / "t")
    with pytest.raises(LongtailError, match="are the same settings"):  # 5e-4 and 0.0005 are one value
        tune(base, {"train.weight_decay": ["5e-4", "0.0005"]}, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_no_validation_score_anywhere_is_an_error_not_a_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(tune_module, "train_one", lambda cfg, out, **kw: {"top1": 1.0, "val": {"top1": None}})
    base = RunConfig(recipe="tiny-test", data=DataConfig(dataset="synthetic", val_per_class=2))
    with pytest.raises(LongtailError, match="no grid point has a validation balanced accuracy"):
        tune(base, {"train.lr": ["0.1", "0.2"]}, tmp_path / "t", log=lambda _: None)


def test_a_write_stopped_midway_does_not_block_the_next_call(tmp_path, monkeypatch):
    monkeypatch.setattr(tune_module, "train_one",
                        lambda cfg, out, **kw: {"top1": 1.0, "val": {"balanced_accuracy": cfg.train.lr, "top1": 1}})
    base = RunConfig(recipe="tiny-test", data=DataConfig(dataset="synthetic", val_per_class=2))
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / ".tune.json.1234.tmp").write_text("{")
    s = tune(base, {"train.lr": ["0.1", "0.2"]}, tmp_path / "t", log=lambda _: None)
    assert s["chosen"]["point"] == {"train.lr": "0.2"}


def test_tune_command_refuses_what_it_cannot_do(tmp_path, capsys):
    def refused(*argv):
        assert main(["tune", *argv]) != 0
        return capsys.readouterr().err
    assert "two-stage recipe" in refused("cifar10-lt-crt", "--grid", "train.lr=0.1,0.2")
    assert "both in --grid and set by another option" in refused("quickstart", "--grid", "train.lr=0.1,0.2",
                                                                  "--lr", "0.3")
    assert "needs a grid" in refused("quickstart")
    assert "starts from pre-trained weights" in refused("folder-finetune-linear", "--grid", "train.lr=0.1,0.2")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert "not a tuning's" in refused("quickstart", "--val-per-class", "3", "--imbalance-ratio", "10",
                                       "--grid", "train.lr=0.1,0.2", "--out", str(tmp_path / "mine"))
