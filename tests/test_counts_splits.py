import numpy as np
import pytest
import torch

from longtail import ClassCounts, LongtailError, profile_counts
from longtail.data.splits import longtail_indices, validation_split

from conftest import synthetic_set


def test_reference_sizes():
    assert profile_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(profile_counts(5000, 10, 100)) == 12406
    assert sum(profile_counts(5000, 10, 50)) == 13996
    assert sum(profile_counts(5000, 10, 10)) == 20431
    assert sum(profile_counts(500, 100, 100)) == 10847
    assert sum(profile_counts(500, 100, 50)) == 12608
    assert sum(profile_counts(500, 100, 10)) == 19573
    assert sum(profile_counts(1000, 10, 100)) == 2478
    assert sum(profile_counts(1000, 10, 50)) == 2795


def test_step_profile_and_bad_input():
    assert profile_counts(500, 10, 10, "step") == [500] * 5 + [50] * 5
    with pytest.raises(LongtailError, match="imbalance_ratio"):
        profile_counts(500, 10, 0.5)
    with pytest.raises(LongtailError, match="profile"):
        profile_counts(500, 10, 10, "linear")


def test_class_counts_derived():
    c = ClassCounts.from_profile(5000, 10, 100)
    assert c.total == 12406 and c.num_classes == 10
    assert c.imbalance_ratio == pytest.approx(100)
    assert torch.allclose(c.prior().sum(), torch.tensor(1.0))
    g = c.groups()
    assert g["many"] == [0, 1, 2, 3, 4, 5, 6, 7] and g["medium"] == [8, 9] and g["few"] == []
    assert ClassCounts((150, 100, 20, 19)).groups() == {"many": [0], "medium": [1, 2], "few": [3]}


def test_class_counts_errors():
    with pytest.raises(LongtailError, match="out of range"):
        ClassCounts.from_labels([0, 1, 5], 3)
    with pytest.raises(LongtailError, match="no training examples"):
        ClassCounts.from_labels([0, 0, 2], 3).require_nonempty(["a", "b", "c"])


def _reference_algorithm(labels: np.ndarray, counts: list[int], seed: int) -> np.ndarray:
    """The seed repository's IMBALANCECIFAR10.gen_imbalanced_data, written out independently."""
    np.random.seed(seed)
    out = []
    for the_class, n in zip(np.unique(labels), counts):
        idx = np.where(labels == the_class)[0]
        np.random.shuffle(idx)
        out.append(idx[:n])
    return np.concatenate(out)


def test_longtail_indices_match_reference_on_cifar_shaped_labels():
    # CIFAR-10-shaped labels: 5000 per class in a fixed shuffled order.
    labels = np.random.RandomState(123).permutation(np.repeat(np.arange(10), 5000))
    counts = ClassCounts.from_profile(5000, 10, 100)
    ours = longtail_indices(labels, counts, seed=0)
    assert len(ours) == 12406
    np.testing.assert_array_equal(ours, _reference_algorithm(labels, list(counts.counts), 0))
    assert np.bincount(labels[ours]).tolist() == list(counts.counts)
    assert not np.array_equal(ours, longtail_indices(labels, counts, seed=1))


def test_longtail_indices_too_few_images():
    with pytest.raises(LongtailError, match="asks for"):
        longtail_indices(np.array([0, 0, 1]), ClassCounts((2, 2)))


def test_validation_split_is_balanced_disjoint_and_seeded():
    source = synthetic_set([30, 30, 30])
    train = source.subset(torch.tensor(list(range(0, 30)) + list(range(30, 45)) + list(range(60, 65))))
    pool = source.subset(torch.tensor(list(range(45, 60)) + list(range(65, 90))))
    tr, val = validation_split(train, per_class=6, seed=0, pool=pool)
    assert val.class_counts().counts == (6, 6, 6)
    # class 0 has no pool: it gives 6 of its own; classes 1 and 2 come from the pool untouched
    assert tr.class_counts().counts == (24, 15, 5)
    assert set(tr.source_index.tolist()).isdisjoint(val.source_index.tolist())
    tr2, val2 = validation_split(train, per_class=6, seed=0, pool=pool)
    assert torch.equal(val.source_index, val2.source_index)
    with pytest.raises(LongtailError, match="too few"):
        validation_split(train, per_class=6, seed=0)  # class 2 has 5 and no pool


def test_load_splits_validation_comes_from_unused_images():
    from longtail.config import DataConfig
    from longtail.data.semi import load_splits

    plain = load_splits(DataConfig(dataset="digits", imbalance_ratio=100))
    s = load_splits(DataConfig(dataset="digits", imbalance_ratio=100, val_per_class=5))
    assert s.val.class_counts().counts == (5,) * 10
    assert set(s.train.source_index.tolist()).isdisjoint(s.val.source_index.tolist())
    # every digit has spare images outside the long-tailed subset: training counts stay the reference's
    assert s.train.class_counts() == plain.train.class_counts()
    assert torch.equal(s.train.source_index, plain.train.source_index)


def test_svhn_long_tailed_split_from_mat_files(tmp_path):
    import scipy.io

    from longtail.config import DataConfig
    from longtail.data.semi import load_splits

    rng = np.random.RandomState(0)
    for split, per_class in (("train", 12), ("test", 3)):
        y = np.repeat(np.arange(1, 11), per_class)[:, None]  # SVHN labels 1..10, 10 is digit 0
        x = rng.randint(0, 256, (32, 32, 3, len(y))).astype(np.uint8)
        (tmp_path / "svhn").mkdir(exist_ok=True)
        scipy.io.savemat(tmp_path / "svhn" / f"{split}_32x32.mat", {"X": x, "y": y})
    s = load_splits(DataConfig(dataset="svhn", root=str(tmp_path), imbalance_ratio=10, n_max=10, download=False))
    assert s.train.class_counts().counts == tuple(profile_counts(10, 10, 10))
    assert s.train.class_names[0] == "1" and s.train.class_names[9] == "0"
    assert len(s.test) == 30
