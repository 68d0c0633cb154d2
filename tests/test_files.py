"""Image-file data sets (ImageNet-LT, iNaturalist 2018, folders, CSVs), their loader, torchvision backbones."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from longtail import LongtailError
from longtail.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from longtail.data.files import FileImageSet
from longtail.data.loader import (
    FileLoader,
    LoaderTask,
    PilEvalTransform,
    PilTrainTransform,
    _seeded,
    eval_transform,
    train_transform,
)
from longtail.data.semi import load_splits
from longtail.experiment import build_task, train_one
from longtail.loop import epoch_generator
from longtail.models import make_model

from imagefiles import file_splits, image, write_imagenet_lt, write_images, write_inat

TRAIN = [12, 6, 3]


@pytest.fixture(scope="module")
def inlt(tmp_path_factory):
    return write_imagenet_lt(tmp_path_factory.mktemp("imagenet_lt"), TRAIN)


def tiny_cfg(dataset: str, root, **train) -> RunConfig:
    return RunConfig(recipe="files-test", data=DataConfig(dataset=dataset, root=str(root)),
                     model=ModelConfig(arch="tiny"),
                     train=TrainConfig(**{**dict(epochs=2, batch_size=8, lr=0.05, device="cpu", schedule="cosine",
                                                 warmup_epochs=0, checkpoint_every=1), **train}))


# formats ---------------------------------------------------------------------------------------
def test_imagenet_lt_split_files(inlt):
    splits = load_splits(DataConfig(dataset="imagenet-lt", root=str(inlt)))
    assert isinstance(splits.train, FileImageSet) and splits.on_files
    assert splits.train.class_counts().counts == tuple(TRAIN)
    assert splits.test.class_counts().counts == (4, 4, 4)
    assert splits.train.class_names == ("n00000000", "n00000001", "n00000002")
    assert splits.train.files[0] == "train/n00000000/0.JPEG" and splits.train.path(0).is_file()
    assert splits.val is None and splits.train.image_shape == (3, 224, 224)
    train = load_splits(DataConfig(dataset="imagenet-lt", root=str(inlt), val_per_class=1)).train
    assert train.class_counts().counts == (11, 5, 2)


def test_inat_json_maps_category_ids_in_sorted_order(tmp_path):
    root = write_inat(tmp_path, [5, 3, 2], category_ids=[7, 3, 11])  # listed unsorted on purpose
    splits = file_splits("inat2018", root)
    # sorted ids 3, 7, 11 -> labels 0, 1, 2; the JSON's class 0 is category 7, i.e. label 1
    assert splits.train.class_names == ("species_3", "species_7", "species_11")
    assert splits.train.class_counts().counts == (3, 5, 2)
    assert splits.test.class_counts().counts == (3, 3, 3)
    val = json.loads((root / "val2018.json").read_text())
    val["annotations"][0]["category_id"] = 99
    (root / "val2018.json").write_text(json.dumps(val))
    with pytest.raises(LongtailError, match="category 99 .* out of range"):
        file_splits("inat2018", root)


def test_folder_layout_and_unknown_test_class(tmp_path):
    write_images(tmp_path, "train", [4, 2, 1], ["zebra", "cat", "dog"], suffix=".png")
    write_images(tmp_path, "test", [2, 2, 2], ["zebra", "cat", "dog"], suffix=".jpg")
    splits = file_splits("folder", tmp_path)
    assert splits.train.class_names == ("cat", "dog", "zebra")  # sorted folder names
    assert splits.train.class_counts().counts == (2, 1, 4)
    assert splits.test.class_counts().counts == (2, 2, 2)
    write_images(tmp_path, "test", [1], ["bird"])
    with pytest.raises(LongtailError, match="class 'bird' is out of range"):
        file_splits("folder", tmp_path)


def test_csv_with_names_or_integers(tmp_path):
    rows = write_images(tmp_path, "img", [3, 2], ["b", "a"])
    (tmp_path / "train.csv").write_text("path,label\n" + "".join(f"{p},{'ba'[y]}\n" for p, y in rows))
    (tmp_path / "test.csv").write_text("".join(f"{p},{'ba'[y]}\n" for p, y in rows))  # no header
    splits = file_splits("csv", tmp_path)
    assert splits.train.class_names == ("a", "b") and splits.train.class_counts().counts == (2, 3)
    assert len(splits.test) == 5
    (tmp_path / "train.csv").write_text("".join(f"{p},{y}\n" for p, y in rows))
    (tmp_path / "test.csv").write_text("".join(f"{p},{y}\n" for p, y in rows) + f"{rows[0][0]},2\n")
    with pytest.raises(LongtailError, match="label 2 .* out of range for 2 classes"):
        file_splits("csv", tmp_path)
    (tmp_path / "test.csv").write_text(f"{rows[0][0]},b\n")
    with pytest.raises(LongtailError, match="out of range"):
        file_splits("csv", tmp_path)


def test_a_csv_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark; it once became part of the first path or header cell."""
    rows = write_images(tmp_path, "img", [3, 2], ["b", "a"])
    body = "path,label\n" + "".join(f"{p},{'ba'[y]}\n" for p, y in rows)
    (tmp_path / "test.csv").write_text(body)
    (tmp_path / "train.csv").write_bytes(b"\xef\xbb\xbf" + body.encode())
    with_bom = file_splits("csv", tmp_path)
    (tmp_path / "train.csv").write_bytes(b"\xef\xbb\xbf" + body.split("\n", 1)[1].encode())  # no header either
    no_header = file_splits("csv", tmp_path)
    (tmp_path / "train.csv").write_text(body)
    plain = file_splits("csv", tmp_path)
    for s in (with_bom, no_header):
        assert s.train.files == plain.train.files and torch.equal(s.train.labels, plain.train.labels)
        assert s.train.class_names == plain.train.class_names == ("a", "b")


def test_missing_files_and_labels_out_of_range(tmp_path, inlt):
    with pytest.raises(LongtailError, match="ImageNet_LT_train.txt not found"):
        file_splits("imagenet-lt", tmp_path)
    with pytest.raises(LongtailError, match="does not exist"):
        file_splits("imagenet-lt", tmp_path / "nowhere")
    (tmp_path / "ImageNet_LT_train.txt").write_text((inlt / "ImageNet_LT_train.txt").read_text())
    (tmp_path / "ImageNet_LT_test.txt").write_text((inlt / "ImageNet_LT_test.txt").read_text())
    with pytest.raises(LongtailError, match="relative to data.root"):  # the images are elsewhere
        file_splits("imagenet-lt", tmp_path)
    (tmp_path / "ImageNet_LT_train.txt").write_text((inlt / "ImageNet_LT_train.txt").read_text())
    text = (inlt / "ImageNet_LT_test.txt").read_text() + "test/n00000000/0.JPEG 3\n"
    (tmp_path / "test.txt").write_text(text)
    with pytest.raises(LongtailError, match="label 3 .* out of range for 3 classes"):
        file_splits("imagenet-lt", inlt, test_split=str(tmp_path / "test.txt"))
    (tmp_path / "bad.txt").write_text("test/n00000000/0.JPEG x\n")
    with pytest.raises(LongtailError, match="bad.txt:1: label 'x' is not an integer"):
        file_splits("imagenet-lt", inlt, test_split=str(tmp_path / "bad.txt"))


# decoding, stop vs skip ---------------------------------------------------------------------------
def _with_broken_image(tmp_path, inlt):
    root = tmp_path / "broken"
    write_imagenet_lt(root, TRAIN, test_per_class=2)
    (root / "train" / "n00000001" / "2.JPEG").write_bytes(b"not a jpeg")
    (root / "test" / "n00000002" / "1.JPEG").write_bytes(b"\xff\xd8\xff truncated")
    return root


def test_unreadable_image_stops_or_is_skipped_and_counted(tmp_path, inlt):
    root = _with_broken_image(tmp_path, inlt)
    stop = file_splits("imagenet-lt", root)
    loader = FileLoader(stop.train, train=False)
    with pytest.raises(LongtailError, match=r"cannot read image .*n00000001/2.JPEG") as e:
        list(loader.run([[(i, 0) for i in range(len(stop.train))]]))
    assert "on_bad_image=skip" in e.value.fix
    skip = file_splits("imagenet-lt", root, on_bad_image="skip")
    result = train_one(tiny_cfg("imagenet-lt", root, epochs=1), tmp_path / "run", splits=skip, progress=False)
    assert result["train_unreadable_images"]["count"] == 1
    assert result["unreadable_images"]["count"] == 1 and result["num_test"] == 5
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert "n00000002/1.JPEG" in report["unreadable_images"]["examples"][0]
    md = (tmp_path / "run" / "report.md").read_text()  # where a reader looks, not only report.json
    assert "**1 unreadable training images were left out**" in md and "n00000001/2.JPEG" in md
    assert "**1 unreadable test images were left out**" in md and "n00000002/1.JPEG" in md


# transforms and the loader ----------------------------------------------------------------------
def test_transforms_shapes_and_seeds():
    import numpy as np

    im = image(1, np.random.RandomState(0), size=48)
    for t in (train_transform(24), PilTrainTransform(24)):
        with _seeded(5):
            a = t(im)
        with _seeded(5):
            b = t(im)
        assert a.shape == (3, 24, 24) and a.dtype == torch.uint8 and torch.equal(a, b)
    for t in (eval_transform(24), PilEvalTransform(24, 27)):
        x = t(im)
        assert x.shape == (3, 24, 24) and torch.equal(x, t(im))
    state = torch.get_rng_state()
    with _seeded(1):
        torch.rand(3)
    assert torch.equal(state, torch.get_rng_state())  # the main process's RNG is left alone


def test_epoch_batches_do_not_depend_on_workers(inlt):
    def epoch(workers):
        splits = file_splits("imagenet-lt", inlt, num_workers=workers)
        cfg = tiny_cfg("imagenet-lt", inlt, sampler="class-balanced")
        task = build_task(cfg, splits.train, splits.train.class_counts())
        assert isinstance(task, LoaderTask)
        task.on_epoch_start(0)
        return list(task.batches(0, epoch_generator(3, 0, torch.device("cpu"))))

    a, b = epoch(0), epoch(2)
    assert [len(x.labels) for x in a] == [8, 8, 5]
    for x, y in zip(a, b):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels) and torch.equal(x.index, y.index)
        assert x.images.dtype == torch.float32 and x.images.shape[1:] == (3, 32, 32)


def test_training_on_files_reduces_loss_and_resumes(tmp_path, inlt):
    splits = file_splits("imagenet-lt", inlt)
    cfg = tiny_cfg("imagenet-lt", inlt, epochs=3)
    full = train_one(cfg, tmp_path / "full", splits=splits, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert full["train_counts"] == TRAIN and full["num_test"] == 12 and full["class_names"][0] == "n00000000"
    assert train_one(cfg, tmp_path / "cut", splits=splits, progress=False, stop_after=2) == {}
    resumed = train_one(cfg, tmp_path / "cut", splits=splits, progress=False)
    assert resumed["per_class"] == full["per_class"] and resumed["nll"] == pytest.approx(full["nll"], rel=1e-6)


# backbones ----------------------------------------------------------------------------------------
def test_torchvision_backbones_in_the_classifier_seam():
    pytest.importorskip("torchvision")
    from longtail.models.heads import CosineHead

    torch.manual_seed(0)
    model = make_model("resnet10", 5)
    assert model.num_features == 512 and not any(k.startswith("backbone.fc") for k in model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    feats = model.features(x)
    assert feats.shape == (2, 512) and model(x).shape == (2, 5)
    model.reset_head(CosineHead(model.num_features, 5))
    assert model(x).shape == (2, 5) and torch.equal(model.features(x), feats)
    assert make_model("resnet10", 3, in_channels=1)(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    with torch.device("meta"):  # shapes only: no memory, no time
        assert make_model("resnet50", 10).num_features == 2048
        assert make_model("resnext50_32x4d", 10).num_features == 2048


def test_timm_backbones_by_name():
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(LongtailError, match="needs timm"):
            make_model("timm:resnet18", 3)
        return
    model = make_model("timm:resnet18", 3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3) and model.num_features == 512


def test_unknown_model_names_timm():
    with pytest.raises(LongtailError, match="timm:NAME"):
        make_model("resnet51", 3)


def test_file_sets_subset_and_device():
    data = FileImageSet("root", ["a.jpg", "b.jpg", "c.jpg"], torch.tensor([0, 1, 1]), ("x", "y"))
    sub = data.subset(torch.tensor([2, 0]))
    assert sub.files == ("c.jpg", "a.jpg") and sub.labels.tolist() == [1, 0] and sub.source_index.tolist() == [2, 0]
    assert replace(data, image_size=64).image_shape == (3, 64, 64)
    with pytest.raises(LongtailError, match="label 2 of c.jpg is out of range"):
        FileImageSet("root", ["a.jpg", "b.jpg", "c.jpg"], torch.tensor([0, 1, 2]), ("x", "y"))


@pytest.mark.parametrize("method", ["moco", "rotation"])
def test_pretraining_on_image_files(tmp_path, inlt, method):
    """ImageNet-LT-format files are decoded once, then pre-trained on like tensors; the backbone loads."""
    from longtail.config import apply_overrides
    from longtail.ssl import default_config, load_pretrained_backbone, pretrain_run

    cfg = default_config(method, "imagenet-lt")
    cfg = apply_overrides(cfg, {"data.root": str(inlt), "data.image_size": "32", "model.arch": "resnet10",
                                "train.epochs": "1", "train.batch_size": "8", "train.device": "cpu",
                                "ssl.moco_queue": "16", "ssl.moco_hidden": "32", "ssl.moco_dim": "16",
                                "ssl.probe_epochs": "2", "ssl.knn_k": "5"})
    out = pretrain_run(method, cfg, tmp_path / "pre", progress=False, log=lambda m: None)
    assert out["train_size"] == sum(TRAIN) and "knn" in out
    from longtail.models import make_model

    model = make_model("resnet10", len(TRAIN))
    loaded, total = load_pretrained_backbone(model, tmp_path / "pre", log=lambda m: None)
    assert loaded == total > 0
