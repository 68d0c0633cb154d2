"""Your own small images with the fast family (issue 15): ``data.in_memory`` decodes an image folder once into
tensors (each image whole under ``data.decode_view=whole``: 32x32 images kept exactly; the evaluation view under
the default ``eval``), ``folder-fast-la`` / ``folder-fast-ce`` train FastNet on it, and FastNet on image files that
are not in memory stops with a clear error instead of training with an uninitialised whitening layer."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longtail import LongtailError
from longtail.cli import main
from longtail.config import DataConfig
from longtail.data.files import FileImageSet
from longtail.data.imageset import ImageSet
from longtail.data.loader import PilEvalTransform, eval_transform
from longtail.data.registry import decode_in_memory
from longtail.data.semi import load_splits
from longtail.experiment import train_one
from longtail.models import init_from_training_images, make_model
from longtail.models.fastnet import init_whitening
from longtail.recipes import RECIPES

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = [12, 4, 2]  # long-tailed: 3 classes
TEST = [3, 3, 3]
NAMES = ["ant", "bee", "cat"]
TINY = ["--epochs", "1", "--device", "cpu", "--quiet", "--set", "data.num_workers=0"]


def write_folder(root: Path, size: int = 32) -> Path:
    """``root/train/<class>/k.png`` and ``root/test/<class>/k.png``: RGB squares whose brightness encodes the class."""
    rng = np.random.RandomState(0)
    for split, counts in (("train", TRAIN), ("test", TEST)):
        for c, n in enumerate(counts):
            folder = root / split / NAMES[c]
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                arr = np.clip(rng.randn(size, size, 3) * 20 + 40 + 80 * c, 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("my_images"))


def data_cfg(root: Path, **kw) -> DataConfig:
    """The folder-fast recipes' data settings (in memory, each image whole) on ``root``."""
    return DataConfig(**{**dict(dataset="folder", root=str(root), image_size=32, num_workers=0, in_memory=True,
                                decode_view="whole"), **kw})


def pixels(path: Path) -> torch.Tensor:
    """An image file's RGB pixels as uint8 (3, H, W), read with PIL."""
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


def whole_view_pil(path: Path, size: int = 32) -> torch.Tensor:
    """The whole-image view computed with PIL alone: short side resized to ``size`` (bilinear, only when it is not
    ``size`` already), then the centre ``size`` x ``size``."""
    with Image.open(path) as im:
        im = im.convert("RGB")
    w, h = im.size
    if min(w, h) != size:
        scale = size / min(w, h)
        im = im.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return torch.from_numpy(np.asarray(im.crop((left, top, left + size, top + size))).copy()).permute(2, 0, 1)


def train_cli(root: Path, out: Path, *extra: str, recipe: str = "folder-fast-la") -> int:
    return main(["train", recipe, "--data-root", str(root), "--out", str(out), *TINY, *extra])


# the recipes ---------------------------------------------------------------------------------------
def test_folder_fast_recipes_copy_the_fast_family():
    fast = RECIPES["cifar10-lt-fast-la"].config
    for name, loss in (("folder-fast-la", "logit-adjust"), ("folder-fast-ce", "ce")):
        cfg = RECIPES[name].config
        assert cfg.data.dataset == "folder" and cfg.data.in_memory and cfg.data.image_size == 32
        assert cfg.data.decode_view == "whole"  # 32x32 images kept exactly, as the fast CIFAR recipes train on them
        assert cfg.data.normalization is None  # ImageNet's constants, as every folder recipe
        assert cfg.model == fast.model and cfg.train == fast.train and cfg.loss.name == loss
        assert "32 px" in RECIPES[name].description and "data.image_size" in RECIPES[name].description


# the setting -----------------------------------------------------------------------------------------
def test_in_memory_decodes_every_split_once_as_the_evaluation_view(folder):
    splits = load_splits(data_cfg(folder, val_per_class=1, decode_view="eval"))
    assert DataConfig().decode_view == "eval"  # the default: today's view, e.g. for 224-px ImageNet-LT in memory
    assert not splits.on_files
    for part in (splits.train, splits.test, splits.val):
        assert isinstance(part, ImageSet) and part.images.dtype == torch.uint8 and part.image_shape == (3, 32, 32)
    assert splits.train.class_counts().counts == tuple(n - 1 for n in TRAIN)  # one per class held out
    assert splits.val.class_counts().counts == (1, 1, 1) and len(splits.test) == sum(TEST)
    assert splits.train.mean == (0.485, 0.456, 0.406)  # the file pipeline's normalisation, ImageNet's
    # the same held-out rows as without in_memory
    files = load_splits(data_cfg(folder, val_per_class=1, in_memory=False))
    assert torch.equal(files.val.source_index, splits.val.source_index)
    # each image is the loader's evaluation view (resize to 37, centre crop 32), as before data.decode_view
    with Image.open(files.test.path(4)) as im:
        assert torch.equal(splits.test.images[4], eval_transform(32)(im.convert("RGB")))
        assert torch.equal(splits.test.images[4], eval_transform(32, "eval")(im.convert("RGB")))
    assert not torch.equal(splits.test.images[4], pixels(files.test.path(4)))  # resampled: 37 px, then cut
    assert splits.decoded == {"image_size": 32, "view": "eval", "images": {"train": 15, "test": 9, "val": 3},
                              "bytes": 27 * 3 * 32 * 32}


def test_in_memory_whole_view_keeps_32px_images_exactly(folder):
    splits = load_splits(data_cfg(folder, val_per_class=1))  # decode_view=whole, as the folder-fast recipes
    files = load_splits(data_cfg(folder, val_per_class=1, in_memory=False))
    for split in ("train", "val", "test"):
        decoded, on_files = getattr(splits, split), getattr(files, split)
        assert torch.equal(decoded.source_index, on_files.source_index)
        want = torch.stack([pixels(on_files.path(i)) for i in range(len(on_files))])
        assert decoded.images.dtype == torch.uint8 and torch.equal(decoded.images, want)  # every pixel as it is
    assert splits.decoded == {"image_size": 32, "view": "whole", "images": {"train": 15, "test": 9, "val": 3},
                              "bytes": 27 * 3 * 32 * 32}
    # the transform itself, with torchvision and with the PIL implementation used without it
    with Image.open(files.test.path(4)) as im:
        rgb = im.convert("RGB")
    assert torch.equal(eval_transform(32, "whole")(rgb), pixels(files.test.path(4)))
    assert torch.equal(PilEvalTransform(32, 32)(rgb), pixels(files.test.path(4)))
    with pytest.raises(LongtailError, match="unknown evaluation view"):
        eval_transform(32, "crop")


def test_in_memory_whole_view_of_non_square_images_cuts_only_the_long_side(tmp_path):
    """(width, height): short side 32 already (not resampled, only the long side cut), or twice that (resized to
    32 on the short side, bilinear as the loader, then cut); landscape and portrait."""
    sizes = {"ant": [(40, 32), (32, 40)], "bee": [(80, 64), (64, 96)]}
    rng = np.random.RandomState(1)
    for split in ("train", "test"):
        for name, shapes in sizes.items():
            (tmp_path / split / name).mkdir(parents=True)
            for k, (w, h) in enumerate(shapes):
                arr = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
                Image.fromarray(arr).save(tmp_path / split / name / f"{k}.png")
    splits = load_splits(data_cfg(tmp_path))
    files = load_splits(data_cfg(tmp_path, in_memory=False))
    for split in ("train", "test"):
        decoded, on_files = getattr(splits, split), getattr(files, split)
        assert decoded.image_shape == (3, 32, 32)
        for i in range(len(on_files)):
            path = on_files.path(i)
            want = whole_view_pil(path)
            assert torch.equal(decoded.images[i], want), path
            with Image.open(path) as im:
                rgb = im.convert("RGB")
            assert torch.equal(PilEvalTransform(32, 32)(rgb), want), path  # without torchvision: the same
            w, h = rgb.size
            if (w, h) == (40, 32):  # not resampled: the original's columns 4..35
                assert torch.equal(decoded.images[i], pixels(path)[:, :, 4:36])
            elif (w, h) == (32, 40):  # rows 4..35
                assert torch.equal(decoded.images[i], pixels(path)[:, 4:36, :])
    # the eval view of the same files: resized to 37 on the short side first, so not the whole-view square
    evaluated = load_splits(data_cfg(tmp_path, decode_view="eval"))
    assert not torch.equal(evaluated.test.images, splits.test.images)


def test_decode_view_is_checked():
    with pytest.raises(LongtailError, match="data.decode_view") as e:
        DataConfig(dataset="folder", in_memory=True, decode_view="crop")
    assert "eval" in e.value.fix and "whole" in e.value.fix


def test_in_memory_at_other_sizes_and_fastnet_on_them(folder):
    for size in (16, 48, 64):
        train = load_splits(data_cfg(folder, image_size=size)).train
        assert train.image_shape == (3, size, size)
        model = make_model("fastnet-m", 3)
        init_from_training_images(model.backbone, train, torch.device("cpu"))
        assert model(torch.randn(2, 3, size, size)).shape == (2, 3)


def test_in_memory_is_refused_for_data_sets_in_memory_already():
    with pytest.raises(LongtailError, match="held in memory already") as e:
        load_splits(DataConfig(dataset="digits", in_memory=True))
    assert "data.in_memory=false" in e.value.fix


def test_unreadable_images_stop_or_are_left_out_and_listed(tmp_path):
    root = write_folder(tmp_path / "imgs")
    (root / "train" / "ant" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(LongtailError, match=r"cannot read image .*broken.png"):
        load_splits(data_cfg(root))
    splits = load_splits(data_cfg(root, on_bad_image="skip"))
    assert splits.train.class_counts().counts == tuple(TRAIN)  # the 13th ant is left out
    bad = splits.decoded["unreadable_images"]
    assert list(bad) == ["train"] and bad["train"]["count"] == 1 and "broken.png" in bad["train"]["examples"][0]
    assert decode_in_memory(splits) is splits  # in memory already: unchanged


# the error instead of the silent skip -----------------------------------------------------------------
def test_fastnet_on_files_not_in_memory_stops_before_training(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli(folder, out, "--set", "data.in_memory=false") == 2
    err = capsys.readouterr().err
    assert "patch whitening" in err and "not held in memory" in err and "--set data.in_memory=true" in err
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    # other models train on the files as before; FastNet with weights to load (init_from, pretrained) too
    files = load_splits(data_cfg(folder, in_memory=False))
    assert isinstance(files.train, FileImageSet)
    init_from_training_images(make_model("resnet8", 3).backbone, files.train, torch.device("cpu"))
    init_from_training_images(make_model("fastnet-m", 3).backbone, files.train, torch.device("cpu"),
                              weights_from="runs/pretrained")
    with pytest.raises(LongtailError, match="data.in_memory=true"):
        init_from_training_images(make_model("fastnet-m", 3).backbone, files.train, torch.device("cpu"))


# a run -----------------------------------------------------------------------------------------------------
def test_folder_fast_run_whitening_report_evaluate_and_determinism(folder, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        assert train_cli(folder, out) == 0
    reports = [json.loads((out / "report.json").read_text()) for out in runs]
    report = reports[0]
    assert report["train_counts"] == TRAIN and report["test_per_class"] == TEST
    assert report["class_names"] == NAMES and report["train_size"] == 18 and report["test_size"] == 9
    assert report["in_memory"] == {"image_size": 32, "view": "whole", "images": {"train": 18, "test": 9},
                                   "bytes": 27 * 3 * 32 * 32}
    assert report["config"]["data"]["in_memory"] is True and report["config"]["data"]["decode_view"] == "whole"
    assert reports[1]["per_class"] == report["per_class"] and reports[1]["nll"] == report["nll"]  # same seed

    # the whitening layer was set from the decoded training images, not left at its default
    state = torch.load(runs[0] / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]
    trained = state["backbone.whiten.weight"]
    fresh = make_model("fastnet-m", 3)
    assert not torch.allclose(trained, fresh.backbone.whiten.weight)
    train = load_splits(data_cfg(folder)).train
    init_whitening(fresh, train.images, mean=train.mean, std=train.std)
    assert torch.allclose(trained, fresh.backbone.whiten.weight)

    # evaluate decodes the test set as the run did and scores the same model the same
    assert main(["evaluate", str(runs[0]), "--device", "cpu"]) == 0
    again = json.loads((runs[0] / "report.json").read_text())
    assert again["per_class"] == report["per_class"] and again["in_memory"] == report["in_memory"]


def test_folder_fast_ce_trains_with_train_one(folder, tmp_path):
    cfg = RECIPES["folder-fast-ce"].config
    cfg = replace(cfg, data=replace(cfg.data, root=str(folder), num_workers=0),
                  train=replace(cfg.train, epochs=1, device="cpu"))
    result = train_one(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    assert result["train_counts"] == TRAIN and result["recipe"] == "folder-fast-ce"
