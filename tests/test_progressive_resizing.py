"""Progressive resizing (``augment.low_res``, ``augment.low_res_share``): the first share of the epochs trains on
images scaled down after every other augmentation, the rest and the test at full size; off by default."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from longtail import LongtailError
from longtail.checkpoints import load_checkpoint
from longtail.config import DataConfig, ModelConfig, RunConfig, TrainConfig, apply_overrides
from longtail.data.augment import Augment, iterate_batches, resize
from longtail.data.registry import Splits
from longtail.experiment import augment_from_config, train_one

from conftest import synthetic_set

pytestmark = pytest.mark.usefixtures("one_thread")


def test_resize_is_an_antialiased_bilinear_average_in_uint8():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = resize(x, 24)
    assert y.shape == (3, 3, 24, 24) and y.dtype == torch.uint8
    ref = F.interpolate(x.float(), size=(24, 24), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(y, ref.round().clamp(0, 255).to(torch.uint8))
    assert torch.equal(resize(torch.full((1, 3, 32, 32), 200, dtype=torch.uint8), 16),
                       torch.full((1, 3, 16, 16), 200, dtype=torch.uint8))  # a flat image stays flat
    # shrinking by 2 averages each 2x2 block's neighbourhood: the mean brightness is kept
    assert abs(resize(x, 16).float().mean() - x.float().mean()) < 0.5
    assert resize(x, 32) is x
    f = x.float() / 255
    assert resize(f, 24).dtype == torch.float32


def test_only_the_first_epochs_are_scaled_and_the_rest_of_the_augmentation_is_unchanged():
    data = synthetic_set([8, 4, 4], size=32)
    order = torch.arange(len(data))
    plain = Augment(crop_padding=4, flip=True)
    low = Augment(crop_padding=4, flip=True, low_res=20, low_res_epochs=2)
    assert low.active and not Augment(crop_padding=0, flip=False, low_res=20, low_res_epochs=0).active
    for epoch in range(3):
        a = next(iterate_batches(data, order, 16, augment=plain, generator=torch.Generator().manual_seed(epoch),
                                 epoch=epoch))
        b = next(iterate_batches(data, order, 16, augment=low, generator=torch.Generator().manual_seed(epoch),
                                 epoch=epoch))
        if epoch < 2:  # the same crops and flips (the same draws), then scaled
            assert b.images.shape[-2:] == (20, 20)
            expect = resize(plain(data.images[order], torch.Generator().manual_seed(epoch)), 20)
            assert torch.equal(b.images, next(iterate_batches(
                replace(data, images=expect), order, 16)).images)
        else:
            assert torch.equal(a.images, b.images)
    with pytest.raises(ValueError, match="needs the epoch"):
        low(data.images, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=">= 0"):
        Augment(low_res=-1)


def config(epochs=4, **augment) -> RunConfig:
    cfg = RunConfig(recipe="lowres-test", data=DataConfig(dataset="synthetic"), model=ModelConfig(arch="fastnet-s"),
                    train=TrainConfig(epochs=epochs, batch_size=16, lr=0.01, momentum=0.9, nesterov=True,
                                      weight_decay=5e-4, schedule="onecycle", device="cpu", checkpoint_every=1,
                                      crop_padding=1))
    return apply_overrides(cfg, {f"augment.{k}": v for k, v in augment.items()})


def test_the_settings_reach_the_run_train_resume_and_are_refused_where_they_cannot_apply(tmp_path):
    splits = Splits(synthetic_set([24, 12, 6, 3], size=32), synthetic_set([5, 5, 5, 5], size=32, seed=1, name="test"))
    cfg = config(low_res=20, low_res_share=0.5)
    aug, _ = augment_from_config(cfg, splits.train)
    assert (aug.low_res, aug.low_res_epochs) == (20, 2)
    assert augment_from_config(config(), splits.train)[0].low_res_epochs == 0  # off by default
    assert augment_from_config(config(low_res_share=0.9), splits.train)[0].low_res_epochs == 0  # share alone: off
    assert augment_from_config(config(epochs=5, low_res=20), splits.train)[0].low_res_epochs == 3  # 2.5: halves up
    assert augment_from_config(config(epochs=7, low_res=20), splits.train)[0].low_res_epochs == 4  # 3.5
    with pytest.raises(LongtailError, match="not smaller than the 32-pixel images"):
        augment_from_config(config(low_res=32), splits.train)
    quiet = dict(splits=splits, progress=False, log=lambda m: None)
    full = train_one(cfg, tmp_path / "full", **quiet)
    train_one(config(), tmp_path / "plain", **quiet)
    a, p = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("full", "plain"))
    assert any(not torch.equal(a["model"][k], p["model"][k]) for k in a["model"])  # the setting reaches the batches
    assert train_one(cfg, tmp_path / "cut", stop_after=1, **quiet) == {}  # stopped inside the low-resolution epochs
    resumed = train_one(cfg, tmp_path / "cut", **quiet)
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert resumed["per_class"] == full["per_class"]

    for bad, match in [({"augment.low_res": 4}, "too small"), ({"augment.low_res": -2}, "augment.low_res"),
                       ({"augment.low_res_share": 1.5}, "augment.low_res_share")]:
        with pytest.raises(LongtailError, match=match):
            apply_overrides(RunConfig(), bad)
    with pytest.raises(LongtailError, match="low_res=20 on a FixMatch run"):
        augment_from_config(apply_overrides(cfg, {"semi.method": "fixmatch"}), splits.train)
    from longtail.data.files import FileImageSet
    files = FileImageSet("root", ["a.jpg", "b.jpg"], torch.tensor([0, 1]), ("x", "y"))
    with pytest.raises(LongtailError, match="as they are decoded"):
        augment_from_config(cfg, files)
