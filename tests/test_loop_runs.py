"""The training loop, run folders, resuming and multi-seed reports, on tiny synthetic data."""

import json

import pytest
import torch

from longtail import LongtailError
from longtail.checkpoints import load_checkpoint
from longtail.config import DataConfig, ModelConfig, RunConfig, TrainConfig, apply_overrides
from longtail.data.registry import Splits
from longtail.experiment import evaluate_checkpoint, train_one
from longtail.schedule import step_lr
from longtail.seeds import train_seeds

from conftest import synthetic_set


def tiny_config(epochs=3, **train) -> RunConfig:
    return RunConfig(
        recipe="tiny-test",
        data=DataConfig(dataset="synthetic"),
        model=ModelConfig(arch="tiny"),
        train=TrainConfig(**{**dict(epochs=epochs, batch_size=16, lr=0.05, device="cpu", checkpoint_every=1,
                                    crop_padding=1), **train}),
    )


@pytest.fixture
def splits():
    return Splits(synthetic_set([48, 24, 12, 6]), synthetic_set([10, 10, 10, 10], seed=1, name="test"))


def test_reference_schedule():
    lrs = [step_lr(e, base_lr=0.1, epochs=200) for e in range(200)]
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert lrs[159] == pytest.approx(0.1) and lrs[160] == pytest.approx(0.001)
    assert lrs[179] == pytest.approx(0.001) and lrs[180] == pytest.approx(1e-5)
    short = [step_lr(e, base_lr=0.1, epochs=20) for e in range(20)]
    assert short[0] == pytest.approx(0.1 / 1) and short[16] == pytest.approx(0.001)  # warm-up 0.5 -> 1 epoch


def test_training_reduces_loss_and_writes_a_run_folder(tmp_path, splits):
    result = train_one(tiny_config(epochs=4), tmp_path / "run", splits=splits, progress=False)
    run = tmp_path / "run"
    for f in ("config.json", "metrics.jsonl", "report.json", "report.md", "per_class_accuracy.png",
              "checkpoints/last.pt"):
        assert (run / f).is_file(), f
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    report = json.loads((run / "report.json").read_text())
    assert report["train_counts"] == [48, 24, 12, 6]
    for key in ("top1", "per_class", "many", "medium", "few"):
        assert key in report
    assert report["many"] is None  # no class has more than 100 images: undefined, not 0
    assert result["top1"] == report["top1"]
    assert json.loads((run / "config.json").read_text())["config"]["recipe"] == "tiny-test"


def test_resume_reaches_the_same_result(tmp_path, splits):
    cfg = tiny_config(epochs=3)
    full = train_one(cfg, tmp_path / "full", splits=splits, progress=False)
    assert train_one(cfg, tmp_path / "cut", splits=splits, progress=False, stop_after=1) == {}
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["next_epoch"] == 1
    resumed = train_one(cfg, tmp_path / "cut", splits=splits, progress=False)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["per_class"] == full["per_class"]


def test_resume_refuses_a_different_config(tmp_path, splits):
    train_one(tiny_config(epochs=2), tmp_path / "run", splits=splits, progress=False, stop_after=1)
    with pytest.raises(LongtailError, match=r"other settings: train.lr: 0.05 \(run folder\) vs 0.2 \(now\)"):
        train_one(tiny_config(epochs=2, lr=0.2), tmp_path / "run", splits=splits, progress=False)


def test_resume_accepts_other_execution_settings(tmp_path, splits, capsys):
    """A run stopped under one engine / checkpoint interval resumes under another (they do not change what it trains)
    and ends where an uninterrupted run ends; the log names what changed."""
    full = train_one(tiny_config(epochs=3), tmp_path / "full", splits=splits, progress=False)
    train_one(tiny_config(epochs=3, engine="auto", checkpoint_every=1, eval_every=1), tmp_path / "cut", splits=splits,
              progress=False, stop_after=1)
    capsys.readouterr()
    resumed = train_one(tiny_config(epochs=3, engine="eager", checkpoint_every=2), tmp_path / "cut", splits=splits,
                        progress=False)
    log = capsys.readouterr().out
    assert "other execution settings: train.engine: auto (run folder) vs eager (now)" in log
    assert "train.checkpoint_every: 1 (run folder) vs 2 (now)" in log and "train.eval_every" in log
    assert resumed["per_class"] == full["per_class"]
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((tmp_path / "cut" / "config.json").read_text())["config"]["train"]
    assert (saved["engine"], saved["checkpoint_every"]) == ("eager", 2)  # the folder says how it ran last


def test_a_resume_that_would_switch_float32_and_bf16_is_a_training_difference():
    from longtail.config import training_differences

    cpu, cuda = tiny_config(device="cpu"), tiny_config(device="cuda")  # train.amp=auto: float32 / bf16
    assert training_differences(cpu, cuda) == [
        "precision (train.amp on train.device): float32 (run folder) vs bf16 (now); --set train.amp=off keeps float32"]
    assert training_differences(cpu, tiny_config(device="cuda", amp="off")) == []  # the fix it names works
    assert training_differences(tiny_config(device="cuda:0"), cuda) == []
    assert training_differences(tiny_config(device="auto"), cuda) == []  # auto: the machine decides, as always
    assert training_differences(cpu, tiny_config(device="cpu", amp="bf16"))[-1].startswith("precision")


def test_resume_names_only_the_training_differences(tmp_path, splits):
    train_one(tiny_config(epochs=2), tmp_path / "run", splits=splits, progress=False, stop_after=1)
    with pytest.raises(LongtailError, match=r"other settings: train.lr: 0.05 \(run folder\) vs 0.2 \(now\)\n") as e:
        train_one(tiny_config(epochs=2, lr=0.2, engine="auto"), tmp_path / "run", splits=splits, progress=False)
    assert "engine" not in str(e.value)


def test_several_seeds_give_mean_and_std(tmp_path, splits, monkeypatch):
    import longtail.seeds

    monkeypatch.setattr(longtail.seeds, "load_splits", lambda cfg: splits)
    out = train_seeds(tiny_config(epochs=2), [0, 1], tmp_path / "seeds", progress=False)
    agg = out["aggregate"]
    assert len(agg["top1"]["values"]) == 2
    assert agg["top1"]["mean"] == pytest.approx(sum(agg["top1"]["values"]) / 2)
    assert (tmp_path / "seeds" / "seed-0" / "report.json").is_file()
    assert (tmp_path / "seeds" / "seed-1" / "report.json").is_file()
    assert (tmp_path / "seeds" / "report.md").read_text().count("±") >= 1


def test_checkpoint_errors(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LongtailError, match="checkpoint .*x.pt is damaged or not a PyTorch file"):
        evaluate_checkpoint(tmp_path / "x.pt")
    torch.save({"weights": 1}, tmp_path / "y.pt")
    with pytest.raises(LongtailError, match="not a longtail checkpoint"):
        evaluate_checkpoint(tmp_path / "y.pt")
    with pytest.raises(LongtailError, match="no checkpoints"):
        evaluate_checkpoint(tmp_path)


def test_overrides():
    cfg = apply_overrides(RunConfig(), {"train.epochs": "7", "loss.name": "focal", "train.flip": "false",
                                        "train.drw_start": "none", "train.milestones": "100,150", "seed": "3"})
    assert cfg.train.epochs == 7 and cfg.loss.name == "focal" and cfg.train.flip is False
    assert cfg.train.milestones == (100.0, 150.0) and cfg.seed == 3
    with pytest.raises(LongtailError, match="unknown setting"):
        apply_overrides(RunConfig(), {"train.epoch": "7"})
    with pytest.raises(LongtailError, match="not a valid"):
        apply_overrides(RunConfig(), {"train.epochs": "many"})
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_best_epoch_is_chosen_on_validation_only(tmp_path):
    from longtail.data.splits import validation_split

    train, val = validation_split(synthetic_set([48, 24, 12, 6]), per_class=3, seed=0)
    splits = Splits(train, synthetic_set([10, 10, 10, 10], seed=1, name="test"), val)
    result = train_one(tiny_config(epochs=3, eval_every=1), tmp_path / "run", splits=splits, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("val_balanced" in r for r in rows)
    best_epoch = max(range(3), key=lambda i: (rows[i]["val_balanced"], -i)) + 1
    assert result["best_val_epoch"]["epoch"] == best_epoch
    assert result["epoch"] == 3 and "top1" in result["best_val_epoch"]["test"]  # the headline stays the last epoch
    assert "val" in result
