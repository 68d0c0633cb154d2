"""TensorBoard event files (``train.tensorboard``), read back: per-epoch scalars equal to metrics.jsonl, the
final test scores equal to report.json, the per-class plot as an image; resuming writes each step once; a
missing ``tensorboard`` package stops the run before it starts, naming the install."""

import json
import sys

import pytest

from longtail import LongtailError
from longtail.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from longtail.data.registry import Splits
from longtail.experiment import train_one
from longtail.tensorboard import INSTALL_FIX, epoch_scalars, final_scalars

from conftest import synthetic_set

QUIET = dict(progress=False, log=lambda _: None)


def tiny_config(epochs=2, **train) -> RunConfig:
    return RunConfig(
        recipe="tiny-test",
        data=DataConfig(dataset="synthetic"),
        model=ModelConfig(arch="tiny"),
        train=TrainConfig(**{**dict(epochs=epochs, batch_size=16, lr=0.05, device="cpu", checkpoint_every=1,
                                    crop_padding=1, eval_every=1, tensorboard=True), **train}),
    )


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def splits():
    return Splits(synthetic_set([40, 20, 10, 5]), synthetic_set([10] * 4, seed=1, name="test"),
                  synthetic_set([5] * 4, seed=2, name="val"))


def events(run):
    """The scalars {tag: [(step, value), ...]} and images {tag: [(step, width, height), ...]} of ``run``."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    images = {t: [(e.step, e.width, e.height) for e in acc.Images(t)] for t in tags["images"]}
    return scalars, images


def rows_of(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def near(value):
    return pytest.approx(value, rel=1e-6, abs=1e-6)  # event files hold float32


def test_a_run_writes_epoch_scalars_final_scores_and_the_plot(tmp_path, splits):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    result = train_one(tiny_config(), run, splits=splits, **QUIET)
    scalars, images = events(run)
    rows, report = rows_of(run), json.loads((run / "report.json").read_text())

    assert scalars["train/loss"] == [(1, near(rows[0]["train_loss"])), (2, near(rows[1]["train_loss"]))]
    assert scalars["train/lr"] == [(r["epoch"] + 1, near(r["lr"])) for r in rows]
    assert scalars["train/seconds"] == [(r["epoch"] + 1, near(r["seconds"])) for r in rows]
    assert scalars["train/images_per_s"] == [(r["epoch"] + 1, near(r["steps"] * 16 / r["seconds"])) for r in rows]
    assert scalars["val/top1"] == [(r["epoch"] + 1, near(r["val_top1"])) for r in rows]
    assert scalars["val/balanced"] == [(r["epoch"] + 1, near(r["val_balanced"])) for r in rows]

    assert scalars["test/top1"] == [(2, near(report["top1"]))] and result["top1"] == report["top1"]
    assert report["many"] is None  # no class has over 100 training images: no value, no tag
    assert "test/many" not in scalars
    for key in ("balanced_accuracy", "medium", "few", "nll", "ece"):
        assert scalars[f"test/{key}"] == [(2, near(report[key]))], key
    for name, acc in zip(report["class_names"], report["per_class"]):
        assert scalars[f"test/per_class/{name}"] == [(2, near(acc))], name

    from PIL import Image

    with Image.open(run / "per_class_accuracy.png") as png:
        assert images["test/per_class_accuracy"] == [(2, png.width, png.height)]


def test_resuming_writes_each_step_once(tmp_path, splits):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    cfg = tiny_config(epochs=4, checkpoint_every=2)
    assert train_one(cfg, run, splits=splits, stop_after=3, **QUIET) == {}  # logged 1..3, checkpoint at 2
    train_one(cfg, run, splits=splits, **QUIET)  # resumes from epoch 2: trains 3 and 4 again
    train_one(cfg, run, splits=splits, **QUIET)  # finished: evaluated again
    scalars, images = events(run)
    rows, report = rows_of(run), json.loads((run / "report.json").read_text())
    assert len(list((run / "tensorboard").iterdir())) == 3  # one event file per session
    assert scalars["train/loss"] == [(r["epoch"] + 1, near(r["train_loss"])) for r in rows]
    assert [step for step, _ in scalars["val/top1"]] == [1, 2, 3, 4]
    assert scalars["test/top1"] == [(4, near(report["top1"]))]
    assert [step for step, _, _ in images["test/per_class_accuracy"]] == [4]


def test_stacked_seeds_write_one_folder_each(tmp_path, splits):
    pytest.importorskip("tensorboard")
    from longtail.stacked import train_stacked

    results = train_stacked(tiny_config(), [0, 1], tmp_path / "out", splits=splits, **QUIET)
    for seed, result in zip([0, 1], results):
        run = tmp_path / "out" / f"seed-{seed}"
        scalars, images = events(run)
        assert scalars["train/loss"] == [(r["epoch"] + 1, near(r["train_loss"])) for r in rows_of(run)]
        assert scalars["test/top1"] == [(2, near(result["top1"]))]
        assert "test/per_class_accuracy" in images


def test_a_second_stage_on_such_a_run_writes_its_own(tmp_path, splits):
    pytest.importorskip("tensorboard")
    from longtail.decouple import decouple_run

    train_one(tiny_config(), tmp_path / "run", splits=splits, **QUIET)
    crt = decouple_run(tmp_path / "run", "crt", epochs=1, out=tmp_path / "crt", splits=splits, device="cpu", **QUIET)
    scalars, images = events(tmp_path / "crt")
    assert [step for step, _ in scalars["train/loss"]] == [1] and scalars["test/top1"] == [(1, near(crt["top1"]))]
    tau = decouple_run(tmp_path / "run", "tau-norm", out=tmp_path / "tau", splits=splits, device="cpu", **QUIET)
    scalars, images = events(tmp_path / "tau")  # trains nothing: the result at step 0
    assert "train/loss" not in scalars and scalars["test/top1"] == [(0, near(tau["top1"]))]
    assert [step for step, _, _ in images["test/per_class_accuracy"]] == [0]


def test_pretraining_logs_its_own_fields_and_the_probe(tmp_path, splits):
    pytest.importorskip("tensorboard")
    from longtail.ssl import SSLConfig, pretrain_run

    run = tmp_path / "ssp"
    cfg = tiny_config(schedule="cosine", warmup_epochs=0.0)
    result = pretrain_run("rotation", cfg, run, ssl=SSLConfig(probe_epochs=2, knn_k=5), splits=splits, **QUIET)
    scalars, images = events(run)
    rows = rows_of(run)
    assert scalars["val/knn_top1"] == [(r["epoch"] + 1, near(r["val_knn_top1"])) for r in rows]
    for key in ("top1", "knn_top1", "linear_probe_top1", "rotation_test_accuracy"):
        assert scalars[f"test/{key}"] == [(2, near(result[key]))], key
    assert "test/per_class_accuracy" in images


def test_a_missing_tensorboard_stops_the_run_before_it_starts(tmp_path, splits, monkeypatch):
    for name in ("tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as when the package is not installed
    run = tmp_path / "run"
    with pytest.raises(LongtailError) as caught:
        train_one(tiny_config(), run, splits=splits, **QUIET)
    assert "TensorBoard" in caught.value.problem and caught.value.fix == INSTALL_FIX
    assert "pip install -e '.[tensorboard]'" in str(caught.value) and "train.tensorboard=false" in str(caught.value)
    assert not run.exists()  # nothing trained, nothing written
    train_one(tiny_config(epochs=1, tensorboard=False), run, splits=splits, **QUIET)  # off: no need for it
    assert not (run / "tensorboard").exists()


def test_scalars_of_rows_and_reports():
    row = {"epoch": 4, "lr": 0.1, "train_loss": 1.5, "seconds": 2.0, "steps": 10, "capture_s": 0.0,
           "stacked_seeds": [0, 1], "val_knn_top1": 40.0, "z_std": 0.2, "flag": True}
    assert epoch_scalars(row, batch_size=8) == {"train/loss": 1.5, "train/lr": 0.1, "train/seconds": 2.0,
                                                "train/images_per_s": 40.0, "val/knn_top1": 40.0,
                                                "train/z_std": 0.2}
    per_class = [50.0, None] + [10.0] * 9  # a class absent from the test set has no value
    summary = {"top1": 30.0, "balanced_accuracy": 25.0, "many": 50.0, "medium": None, "few": 10.0,
               "per_class": per_class, "class_names": None, "seed": 3}
    tags = final_scalars(summary)
    assert tags["test/top1"] == 30.0 and "test/medium" not in tags and "test/seed" not in tags
    assert tags["test/per_class/00"] == 50.0 and "test/per_class/01" not in tags and tags["test/per_class/10"] == 10.0
