"""The real CIFAR-10 in ../shared/data: the reference long-tailed subsets, exactly."""

import importlib.machinery
import importlib.util

import numpy as np
import pytest

from longtail.config import DataConfig
from longtail.counts import ClassCounts
from longtail.data.semi import load_splits
from longtail.data.splits import longtail_indices

from conftest import SHARED_DATA, require_real_cifar10

pytestmark = pytest.mark.realdata


def _device_pack_module():
    """The shared device-pack tool: an independent implementation of the reference subset."""
    path = SHARED_DATA.parent / "tools" / "device-pack"
    if not path.is_file():
        pytest.skip("../shared/tools/device-pack not found")
    loader = importlib.machinery.SourceFileLoader("device_pack", str(path))
    spec = importlib.util.spec_from_loader("device_pack", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.parametrize("rho,size", [(100, 12406), (50, 13996), (10, 20431)])
def test_cifar10_lt_subset_is_the_reference_one(rho, size):
    root = require_real_cifar10()
    splits = load_splits(DataConfig(dataset="cifar10", root=str(root), imbalance_ratio=rho, download=False))
    assert len(splits.train) == size and len(splits.test) == 10000
    labels = splits.train.labels.numpy()
    assert np.all(np.diff(labels) >= 0)  # grouped by class, as the reference builds it
    ref = _device_pack_module()
    _, all_labels = ref.load(str(root / "cifar-10-batches-py"), [f"data_batch_{i}" for i in range(1, 6)])
    np.testing.assert_array_equal(splits.train.source_index.numpy(), ref.reference_lt_indices(all_labels, rho))


def test_cifar10_validation_split_keeps_the_tail_intact():
    root = require_real_cifar10()
    s = load_splits(DataConfig(dataset="cifar10", root=str(root), imbalance_ratio=100, val_per_class=20,
                               download=False))
    # only the head class (all 5000 images used) gives up 20 images; the others come from unused images
    assert s.train.class_counts().counts == (4980, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50)
    assert s.val.class_counts().counts == (20,) * 10
    assert set(s.train.source_index.tolist()).isdisjoint(s.val.source_index.tolist())


def test_cifar100_sizes_from_the_profile():
    assert ClassCounts.from_profile(500, 100, 100).total == 10847
    labels = np.repeat(np.arange(100), 500)
    assert len(longtail_indices(labels, ClassCounts.from_profile(500, 100, 100))) == 10847
