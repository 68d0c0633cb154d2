"""Data as the references cut and normalise it: the DARP/ABC split, per-source normalisation and
augmentation, and where a validation split's images come from."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from longtail.config import DataConfig
from longtail.data.cifar import DATASET_INFO
from longtail.data.files import FileImageSet
from longtail.data.imageset import ImageSet
from longtail.data.loader import PilTrainTransform, train_transform
from longtail.data.normalization import (
    CIFAR_REFERENCE,
    HALF,
    IMAGENET,
    INAT2018,
    NORMALIZATIONS,
    normalization_override,
    with_normalization,
)
from longtail.data.pools import darp_counts, darp_split
from longtail.data.registry import load_balanced, load_labeled_splits
from longtail.data.semi import build_semi_splits, load_splits
from longtail.data.splits import validation_info, validation_split
from longtail.data.svhn import MEAN as SVHN_MEAN
from longtail.data.svhn import STD as SVHN_STD
from longtail.errors import LongtailError

from conftest import REAL_CIFAR10, require_real_cifar10, synthetic_set
from imagefiles import file_splits, write_imagenet_lt, write_inat


# --- a transcription of the references ---------------------------------------------------------
def ref_make_imb_data(max_num, class_num, gamma):
    """DARP common.py / ABC ABCfix.py ``make_imb_data`` (imbalance type 'long')."""
    mu = np.power(1 / gamma, 1 / (class_num - 1))
    class_num_list = []
    for i in range(class_num):
        if i == (class_num - 1):
            class_num_list.append(int(max_num / gamma))
        else:
            class_num_list.append(int(max_num * np.power(mu, i)))
    return list(class_num_list)


def ref_train_split(labels, n_labeled_per_class, n_unlabeled_per_class, num_classes=10, fix=False):
    """DARP dataset/all_cifar10.py ``train_split`` (ABC dataset/fix_cifar10.py is the ``fix=False`` case)."""
    labels = np.array(labels)
    train_labeled_idxs = []
    train_unlabeled_idxs = []
    for i in range(num_classes):
        idxs = np.where(labels == i)[0]
        train_labeled_idxs.extend(idxs[:n_labeled_per_class[i]])
        if fix:
            train_unlabeled_idxs.extend(idxs[:n_labeled_per_class[i] + n_unlabeled_per_class[i]])
        else:
            train_unlabeled_idxs.extend(idxs[n_labeled_per_class[i]:n_labeled_per_class[i] + n_unlabeled_per_class[i]])
    return train_labeled_idxs, train_unlabeled_idxs


def shuffled_source(per_class: int, num_classes: int = 10, seed: int = 0) -> ImageSet:
    """A balanced set whose labels come in a random order (so 'first n of a class' is not 'first n rows')."""
    labels = torch.from_numpy(np.random.RandomState(seed).permutation(np.arange(per_class * num_classes) % num_classes))
    images = torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8)
    return ImageSet(images, labels, tuple(f"c{c}" for c in range(num_classes)), mean=(0.5,), std=(0.25,), name="src")


# --- DARP split ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n1,m1,gamma_l,gamma_u", [(1500, 3000, 100, 100), (1500, 6000, 100, 100),
                                                  (1500, 3000, 100, 1), (450, 900, 10, 50)])
def test_darp_counts_are_the_references_make_imb_data(n1, m1, gamma_l, gamma_u):
    assert darp_counts(n1, 10, gamma_l) == ref_make_imb_data(n1, 10, gamma_l)
    # DARP passes the unlabeled head size as a float (args.ratio * args.num_max); ABC likewise
    assert darp_counts(m1, 10, gamma_u) == ref_make_imb_data(float(m1), 10, gamma_u)
    assert darp_counts(m1, 100, gamma_u) == ref_make_imb_data(m1, 100, gamma_u)


def test_darp_split_takes_the_first_images_of_each_class_in_file_order():
    source = shuffled_source(950)
    n_l, n_u = ref_make_imb_data(300, 10, 100), ref_make_imb_data(600.0, 10, 100)
    ref_l, ref_u = ref_train_split(source.labels.numpy(), n_l, n_u)
    lab, unl = darp_split(source, n1=300, m1=600, gamma_l=100, gamma_u=100)
    np.testing.assert_array_equal(lab.source_index.numpy(), ref_l)
    np.testing.assert_array_equal(unl.source_index.numpy(), ref_u)
    assert torch.equal(lab.labels, source.labels[lab.source_index])
    assert torch.equal(unl.hidden_labels, source.labels[unl.source_index])
    # the seed does not enter the references' split
    assert torch.equal(darp_split(source, n1=300, m1=600, seed=5)[0].source_index, lab.source_index)
    # DARP's FixMatch loader (fix=True) and USB put the labeled images into the unlabeled part too
    _, incl = darp_split(source, n1=300, m1=600, include_labeled=True)
    np.testing.assert_array_equal(incl.source_index.numpy(), ref_train_split(source.labels.numpy(), n_l, n_u,
                                                                             fix=True)[1])
    # reversed unlabeled profile: same rule with the counts reversed
    _, rev = darp_split(source, n1=300, m1=600, reverse=True)
    np.testing.assert_array_equal(rev.source_index.numpy(), ref_train_split(source.labels.numpy(), n_l, n_u[::-1])[1])


def test_the_shuffled_variant_draws_the_same_counts_elsewhere():
    source = shuffled_source(950)
    lab, unl = darp_split(source, n1=300, m1=600)
    s_lab, s_unl = darp_split(source, n1=300, m1=600, order="shuffled", seed=0)
    assert s_lab.class_counts() == lab.class_counts() and s_unl.hidden_counts() == unl.hidden_counts()
    assert not torch.equal(s_lab.source_index, lab.source_index)
    assert not torch.isin(s_lab.source_index, s_unl.source_index).any()
    assert not torch.equal(darp_split(source, n1=300, m1=600, order="shuffled", seed=1)[0].source_index,
                           s_lab.source_index)
    with pytest.raises(LongtailError, match="order"):
        darp_split(source, n1=300, m1=600, order="random")


@dataclass(frozen=True)
class _DarpConfig(DataConfig):
    """A DataConfig with the optional DARP settings that longtail.data reads when a config has them."""

    darp_order: str | None = None
    darp_include_labeled: bool = False


def test_darp_protocol_config_uses_the_file_order_and_optional_settings():
    data = DataConfig(dataset="digits", protocol="darp", darp_n1=60, darp_m1=80, darp_gamma_l=10, darp_gamma_u=10)
    splits = build_semi_splits(data)
    source, _ = load_balanced(data)
    ref_l, ref_u = ref_train_split(source.labels.numpy(), ref_make_imb_data(60, 10, 10),
                                   ref_make_imb_data(80, 10, 10))
    rows = source.source_index.numpy()  # digits' training rows are a subset of the 1,797 images
    np.testing.assert_array_equal(splits.train.source_index.numpy(), rows[ref_l])
    np.testing.assert_array_equal(splits.unlabeled.source_index.numpy(), rows[ref_u])
    assert splits.info["darp_order"] == "file" and splits.info["darp_include_labeled"] is False
    shuffled = build_semi_splits(_DarpConfig(**{**data.__dict__, "darp_order": "shuffled"}))
    assert shuffled.info["darp_order"] == "shuffled"
    assert not torch.equal(shuffled.train.source_index, splits.train.source_index)
    incl = build_semi_splits(_DarpConfig(**{**data.__dict__, "darp_include_labeled": True}))
    assert torch.isin(incl.train.source_index, incl.unlabeled.source_index).all()
    assert len(incl.unlabeled) == len(splits.train) + len(splits.unlabeled)


def _real_labels() -> np.ndarray:
    """The training labels of the real CIFAR-10, read straight from its batch files."""
    labels = []
    for i in range(1, 6):
        with open(REAL_CIFAR10 / f"data_batch_{i}", "rb") as f:
            labels += pickle.load(f, encoding="latin1")["labels"]
    return np.array(labels)


@pytest.mark.realdata
# DARP's defaults (num_max 1500, ratio 2: M1 = 3000) and ABC's README command for CIFAR-10
# (num_max 1000, label_ratio 20: M1 = (100 - 20) / 20 * 1000 = 4000)
@pytest.mark.parametrize("n1,m1", [(1500, 3000), (1000, 4000)])
def test_darp_protocol_on_real_cifar10_is_the_references_split(n1, m1):
    root = require_real_cifar10()
    cfg = DataConfig(dataset="cifar10", root=str(root), protocol="darp", darp_n1=n1, darp_m1=m1, download=False)
    splits = build_semi_splits(cfg)
    labels = _real_labels()
    n_l, n_u = ref_make_imb_data(n1, 10, 100), ref_make_imb_data(float(m1), 10, 100)
    ref_l, ref_u = ref_train_split(labels, n_l, n_u)
    np.testing.assert_array_equal(splits.train.source_index.numpy(), ref_l)
    np.testing.assert_array_equal(splits.unlabeled.source_index.numpy(), ref_u)
    assert len(splits.train) == sum(n_l) and len(splits.unlabeled) == sum(n_u)
    assert torch.equal(splits.train.labels, torch.from_numpy(labels[ref_l]))
    if (n1, m1) == (1500, 3000):
        assert (len(splits.train), len(splits.unlabeled)) == (3720, 7443)
        # the shuffled variant (this library's split before) shares only 691 and 2,774 of these images
        s_lab, s_unl = darp_split(load_balanced(cfg)[0], n1=n1, m1=m1, order="shuffled", seed=0)
        assert len(np.intersect1d(s_lab.source_index, ref_l)) == 691
        assert len(np.intersect1d(s_unl.source_index, ref_u)) == 2774


@pytest.mark.realdata
def test_cifar10_lt_validation_note_says_the_head_class_gives_its_own_images():
    root = require_real_cifar10()
    s = load_splits(DataConfig(dataset="cifar10", root=str(root), imbalance_ratio=100, val_per_class=20,
                               download=False))
    info = s.val_info
    assert info["from_train"] == [20] + [0] * 9
    assert info["train_before"][0] == 5000 and info["train_after"][0] == 4980
    assert "'airplane'" in info["note"] and "4,980 left" in info["note"] and "180 from images" in info["note"]
    assert s.to("cpu").val_info == info
    assert load_splits(DataConfig(dataset="cifar10", root=str(root), download=False)).val_info is None


# --- validation info ------------------------------------------------------------------------------
def test_validation_info_counts_images_taken_from_the_training_subset():
    # the training subset used every image of class 0 (as CIFAR-10-LT's head class): its validation
    # images come out of the subset; classes 1 and 2 have unused images left in the pool
    source = synthetic_set([30, 30, 30])
    labels = source.labels.numpy()
    idx = np.concatenate([np.where(labels == 0)[0], np.where(labels == 1)[0][:12], np.where(labels == 2)[0][:4]])
    train = source.subset(torch.from_numpy(idx))
    pool = source.subset(torch.from_numpy(np.setdiff1d(np.arange(len(source)), idx)))
    after, val = validation_split(train, per_class=3, seed=0, pool=pool)
    info = validation_info(train, after, val)
    assert info["from_train"] == [3, 0, 0] and info["per_class"] == 3 and info["total"] == 9
    assert info["train_before"] == [30, 12, 4] and info["train_after"] == [27, 12, 4]
    assert info["note"] == ("validation split: 3 images per class (9); 6 from images the training subset does "
                            "not use, 3 of class 'class0' from its own training images (30 -> 27 left)")
    # with unused images of every class left, nothing comes from the training subset
    idx2 = np.concatenate([np.where(labels == c)[0][:n] for c, n in enumerate((20, 12, 4))])
    train2 = source.subset(torch.from_numpy(idx2))
    pool2 = source.subset(torch.from_numpy(np.setdiff1d(np.arange(len(source)), idx2)))
    after2, val2 = validation_split(train2, per_class=3, seed=0, pool=pool2)
    info2 = validation_info(train2, after2, val2)
    assert info2["from_train"] == [0, 0, 0] and info2["train_after"] == [20, 12, 4]
    assert info2["note"] == "validation split: 3 images per class (9), all from images the training subset does not use"
    # the digits recipe path fills Splits.val_info
    s = load_labeled_splits(DataConfig(dataset="digits", imbalance_ratio=100, val_per_class=5))
    assert s.val_info["total"] == len(s.val) == 50 and s.val_info["train_after"] == list(s.train.class_counts().counts)


def test_validation_info_on_a_split_held_out_of_files(tmp_path):
    root = write_imagenet_lt(tmp_path, [12, 8, 6])
    s = load_labeled_splits(SimpleNamespace(dataset="imagenet-lt", root=str(root), val_per_class=2, subset_seed=0,
                                            pack=None, pseudo_labels=None, unlabeled_pool=None, protocol="lt"))
    assert s.val_info["from_train"] == [2, 2, 2]
    assert "all taken out of the training subset" in s.val_info["note"]


# --- normalisation and augmentation per source ----------------------------------------------------
def test_cifar_constants_follow_ldam_drw_and_the_seed():
    # LDAM-DRW cifar_train.py and YyzHarry/imbalanced-semi-self train.py normalise CIFAR-100 with CIFAR-10's numbers
    ref = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert CIFAR_REFERENCE == ref
    for name in ("cifar10", "cifar100"):
        assert (DATASET_INFO[name].mean, DATASET_INFO[name].std) == ref


def test_svhn_constants_follow_the_seed():
    # YyzHarry/imbalanced-semi-self train.py: [.5, .5, .5] for data sets not named cifar*
    assert (SVHN_MEAN, SVHN_STD) == HALF == ((0.5,) * 3, (0.5,) * 3)


def test_inat_uses_its_own_statistics_and_no_colour_jitter(tmp_path):
    inat = file_splits("inat2018", write_inat(tmp_path / "inat", [4, 3], category_ids=[2, 5]))
    assert (inat.train.mean, inat.train.std) == INAT2018 == ((0.466, 0.471, 0.380), (0.195, 0.194, 0.192))
    assert (inat.test.mean, inat.test.std) == INAT2018
    assert inat.train.color_jitter == 0.0
    inlt = file_splits("imagenet-lt", write_imagenet_lt(tmp_path / "inlt", [4, 3]))
    assert (inlt.train.mean, inlt.train.std) == IMAGENET and inlt.train.color_jitter == 0.4


def test_train_transform_without_jitter_has_no_colour_jitter():
    pytest.importorskip("torchvision")
    from torchvision.transforms import v2

    def kinds(t):
        return [type(x) for x in t.transforms]

    assert v2.ColorJitter in kinds(train_transform(24))
    assert v2.ColorJitter not in kinds(train_transform(24, jitter=0.0))
    with pytest.raises(LongtailError, match="jitter"):
        train_transform(24, jitter=-1)


def test_pil_transform_without_jitter_is_crop_and_flip_only():
    from PIL import Image

    im = Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 48, 3), dtype=np.uint8))
    t = PilTrainTransform(24, jitter=0.0)
    torch.manual_seed(3)
    plain = t(im)
    torch.manual_seed(3)  # the same draws by hand: the crop box, then the flip, and nothing else
    box = t.crop_box(*im.size)
    flipped = float(torch.rand(1)) < 0.5
    expected = im.resize((24, 24), Image.Resampling.BILINEAR, box=box)
    if flipped:
        expected = expected.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert torch.equal(plain, torch.from_numpy(np.asarray(expected).copy()).permute(2, 0, 1))


def test_file_image_set_refuses_negative_jitter():
    with pytest.raises(LongtailError, match="jitter"):
        FileImageSet("root", ["a.jpg"], torch.tensor([0]), ("x",), color_jitter=-0.1)


def test_normalization_override_by_name():
    assert normalization_override(SimpleNamespace()) is None
    assert normalization_override(SimpleNamespace(normalization=None)) is None
    assert normalization_override(SimpleNamespace(normalization="cifar10-data")) == NORMALIZATIONS["cifar10-data"]
    with pytest.raises(LongtailError, match="normalization"):
        normalization_override(SimpleNamespace(normalization="nope"))
    data = synthetic_set([3, 2])
    out = with_normalization(data, IMAGENET)
    assert (out.mean, out.std) == IMAGENET and torch.equal(out.images, data.images)
    assert torch.equal(out.source_index, data.source_index)
    assert with_normalization(data, None) is data
    with pytest.raises(LongtailError, match="channels"):
        with_normalization(synthetic_set([3, 2], channels=1), IMAGENET)


@dataclass(frozen=True)
class _NormConfig(DataConfig):
    normalization: str | None = None


def test_normalization_setting_reaches_every_split(tmp_path):
    s = load_splits(_NormConfig(dataset="digits", imbalance_ratio=10, val_per_class=2))
    assert len(s.train.mean) == 1  # digits: its own one-channel statistics
    with pytest.raises(LongtailError, match="channels"):
        load_splits(_NormConfig(dataset="digits", imbalance_ratio=10, normalization="half"))
    root = write_inat(tmp_path, [5, 4], category_ids=[0, 1])
    f = load_splits(_NormConfig(dataset="inat2018", root=str(root), val_per_class=1, normalization="imagenet",
                                num_workers=0))
    for part in (f.train, f.val, f.test):
        assert (part.mean, part.std) == IMAGENET
    assert f.train.color_jitter == 0.0  # the setting changes the constants only
