"""The DARP protocol from a device pack (the GPU machine has no ../shared): ``benchmarks/darp_pack.py`` packs the
first images of each class, and ``longtail.data.semi.darp_source_from_pack`` splits them exactly as the full set."""

from __future__ import annotations

import json
import lzma
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail import LongtailError
from longtail.config import DataConfig
from longtail.data.semi import darp_splits

from conftest import load_benchmark

PER_FILE = 60  # 300 training images, 30 per class, in an interleaved file order


def fake_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cifar-10-batches-py under ``root`` (labels in a shuffled order, so file order matters); returns the arrays."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ytr = rng.permutation(np.arange(5 * PER_FILE) % 10)
    xtr = rng.integers(0, 256, (5 * PER_FILE, 3072), dtype=np.uint8)
    yte, xte = np.arange(50) % 10, rng.integers(0, 256, (50, 3072), dtype=np.uint8)
    for i in range(5):
        part = slice(i * PER_FILE, (i + 1) * PER_FILE)
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": xtr[part], "labels": ytr[part].tolist(), "batch_label": "x", "filenames": []}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": xte, "labels": yte.tolist(), "batch_label": "t", "filenames": []}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{c}" for c in range(10)]}, f)
    return xtr, ytr, xte, yte


def write_pack(out: Path, groups: dict[str, np.ndarray], xtr, ytr, xte, yte) -> None:
    """A pack in ../shared/tools/device-pack's format (cifar10-pack-1)."""
    order = np.concatenate(list(groups.values()))
    raw = b"".join([xtr[order].tobytes(), xte.tobytes(), ytr[order].astype(np.uint8).tobytes(),
                    yte.astype(np.uint8).tobytes()])
    out.with_suffix(".xz").write_bytes(lzma.compress(raw))
    spans, start = {}, 0
    for name, idx in groups.items():
        spans[name] = {"start": start, "count": len(idx), "train_index": idx.tolist()}
        start += len(idx)
    out.with_suffix(".json").write_text(json.dumps({"format": "cifar10-pack-1", "n_train": len(order),
                                                    "n_test": len(yte), "classes": [f"c{c}" for c in range(10)],
                                                    "groups": spans}))


@pytest.mark.parametrize("reverse,include_labeled,normalization", [(False, True, "cifar10-data"),
                                                                   (True, False, None)])
def test_the_split_of_a_pack_is_the_split_of_the_full_set(tmp_path, reverse, include_labeled, normalization):
    dp = load_benchmark("darp_pack")
    arrays = fake_cifar10(tmp_path / "data")
    n1, m1, gamma = 10, 16, 10.0
    setting = "reversed" if reverse else "consistent"
    idx = dp.darp_indices(arrays[1], settings=[setting], n1=n1, m1=m1, gamma=gamma)
    assert np.all(np.diff(idx) > 0)
    # a shuffled group order, as a pack may hold it: the source is put back in file order
    write_pack(tmp_path / "c10-darp", {"darp": np.random.default_rng(1).permutation(idx)}, *arrays)
    full = DataConfig(dataset="cifar10", root=str(tmp_path / "data"), download=False, protocol="darp", darp_n1=n1,
                      darp_m1=m1, darp_gamma_l=gamma, darp_gamma_u=gamma, darp_reverse=reverse,
                      darp_include_labeled=include_labeled, normalization=normalization)
    packed = replace(full, pack=str(tmp_path / "c10-darp"))
    (a, a_pool), (b, b_pool) = darp_splits(full), darp_splits(packed)
    for x, y in ((a.train, b.train), (a_pool, b_pool)):
        assert torch.equal(x.source_index, y.source_index) and torch.equal(x.images, y.images)
        assert x.name == y.name and (x.mean, x.std) == (y.mean, y.std)
    assert torch.equal(a.train.labels, b.train.labels) and torch.equal(a_pool.hidden_labels, b_pool.hidden_labels)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    # the pack holds nothing the split does not take (what makes it small)
    assert len(idx) == len(torch.unique(torch.cat([a.train.source_index, a_pool.source_index])))


def test_a_pack_without_the_darp_group_or_with_what_it_cannot_hold_is_refused(tmp_path):
    arrays = fake_cifar10(tmp_path / "data")
    write_pack(tmp_path / "lt", {"train": np.arange(40)}, *arrays)
    cfg = DataConfig(dataset="cifar10", pack=str(tmp_path / "lt"), protocol="darp", darp_n1=10, darp_m1=16)
    with pytest.raises(LongtailError, match="has no 'darp' group") as e:
        darp_splits(cfg)
    assert "darp_pack.py" in e.value.fix
    for bad in ({"val_per_class": 2}, {"darp_order": "shuffled"}):
        with pytest.raises(LongtailError, match="in file order, without a validation split"):
            darp_splits(replace(cfg, **bad))
    write_pack(tmp_path / "small", {"darp": np.where(arrays[1] == 0)[0][:5]}, *arrays)  # class 0 only, too few
    with pytest.raises(LongtailError, match="fewer than"):
        darp_splits(replace(cfg, pack=str(tmp_path / "small")))
