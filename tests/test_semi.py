"""Semi-supervised learning: unlabeled pools, pseudo-labels, merged training data, tasks, FixMatch."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from longtail import LongtailError
from longtail.checkpoints import save_checkpoint
from longtail.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from longtail.counts import ClassCounts, profile_counts
from longtail.data.augment import Augment, Batch
from longtail.data.imageset import ImageSet
from longtail.data.pools import rest_pool
from longtail.data.pseudo_labels import describe_pool_spec
from longtail.data.splits import longtail_indices
from longtail.loop import fit, make_sgd
from longtail.losses import make_loss
from longtail.models import build_model, make_model
from longtail.samplers import make_sampler
from longtail.semi import (
    FixMatchTask,
    PseudoLabels,
    SemiSplits,
    SemiSupervisedTask,
    UnlabeledSet,
    build_semi_splits,
    consistency_loss,
    darp_counts,
    darp_split,
    hide_labels,
    load_image_folder,
    load_pseudo_labels,
    make_pool,
    parse_pool_spec,
    pool_size,
    pseudo_label,
    pseudo_label_report,
    pseudo_label_run,
    pseudo_targets,
    save_pseudo_labels,
    strong_augment,
    unlabeled_counts,
    unused_pool,
)
from longtail.tasks import SupervisedTask

from conftest import synthetic_set

pytestmark = pytest.mark.usefixtures("one_thread")


def balanced_source(per_class: int, num_classes: int = 10, size: int = 2) -> ImageSet:
    """A cheap balanced 'training set': tiny images, labels in data-set order 0,1,..,C-1,0,1,.."""
    labels = torch.arange(per_class * num_classes) % num_classes
    images = torch.randint(0, 256, (len(labels), 1, size, size), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    return ImageSet(images, labels, tuple(f"c{c}" for c in range(num_classes)), mean=(0.5,), std=(0.25,), name="src")


def counts_of(labels: torch.Tensor, c: int = 10) -> list[int]:
    return torch.bincount(labels.cpu(), minlength=c).tolist()


# pool sizes -------------------------------------------------------------------------------------


def test_unlabeled_counts_reproduce_the_reference_example():
    labeled = profile_counts(5000, 10, 50)
    assert sum(labeled) == 13996
    U = pool_size(sum(labeled), 5)
    assert U == 69980 == 5 * 13996
    assert unlabeled_counts(U, 10, 100) == [28208, 16909, 10133, 6074, 3639, 2180, 1306, 781, 467, 278]
    assert unlabeled_counts(1000, 10, 1) == [100] * 10  # rho_U = 1 is balanced
    with pytest.raises(LongtailError, match="rho_u"):
        unlabeled_counts(100, 10, 0.5)
    with pytest.raises(LongtailError, match="factor"):
        pool_size(100, 0)


def test_darp_counts_and_split_are_disjoint_seeded_and_reversible():
    assert darp_counts(1500, 10, 100) == [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    u = darp_counts(3000, 10, 100)
    assert u[0] == 3000 and u[-1] == 30
    source = balanced_source(4600)
    lab, unl = darp_split(source, n1=1500, m1=3000, gamma_l=100, gamma_u=100, seed=0)
    assert lab.class_counts().counts == tuple(darp_counts(1500, 10, 100))
    assert unl.hidden_counts().counts == tuple(u)
    assert not torch.isin(lab.source_index, unl.source_index).any()
    lab2, unl2 = darp_split(source, n1=1500, m1=3000, gamma_l=100, gamma_u=100, seed=0)
    assert torch.equal(lab.source_index, lab2.source_index) and torch.equal(unl.source_index, unl2.source_index)
    lab3, _ = darp_split(source, n1=1500, m1=3000, gamma_l=100, gamma_u=100, order="shuffled", seed=1)
    assert not torch.equal(lab.source_index, lab3.source_index)  # the seed moves only the shuffled variant
    assert torch.equal(darp_split(source, n1=1500, m1=3000, seed=1)[0].source_index, lab.source_index)
    _, rev = darp_split(source, n1=1500, m1=3000, gamma_l=100, gamma_u=100, reverse=True, seed=0)
    assert rev.hidden_counts().counts == tuple(u[::-1])
    # the labeled part does not depend on the unlabeled profile
    lab_rev, _ = darp_split(source, n1=1500, m1=3000, gamma_l=100, gamma_u=100, reverse=True, seed=0)
    assert torch.equal(lab.source_index, lab_rev.source_index)
    with pytest.raises(LongtailError, match="darp_n1 or data.darp_m1"):
        darp_split(balanced_source(3000), n1=1500, m1=3000, gamma_l=100, gamma_u=1)


def test_unused_pool_is_disjoint_seeded_and_shrinks_when_the_source_is_small():
    source = balanced_source(200, num_classes=4)
    labeled = source.subset(torch.from_numpy(longtail_indices(source.labels, ClassCounts((100, 46, 21, 10)), seed=0)))
    pool, info = unused_pool(source, labeled.source_index, labeled_total=len(labeled), rho_u=10, factor=0.5, seed=0)
    assert not info["shrunk"] and info["counts"] == unlabeled_counts(89, 4, 10)
    assert pool.hidden_counts().counts == tuple(info["counts"])
    assert not torch.isin(pool.source_index, labeled.source_index).any()
    again, _ = unused_pool(source, labeled.source_index, labeled_total=len(labeled), rho_u=10, factor=0.5, seed=0)
    other, _ = unused_pool(source, labeled.source_index, labeled_total=len(labeled), rho_u=10, factor=0.5, seed=1)
    assert torch.equal(pool.source_index, again.source_index)
    assert not torch.equal(pool.source_index, other.source_index)
    # true labels are hidden: an UnlabeledSet has no `labels`, only `hidden_labels`
    assert not hasattr(pool, "labels")
    assert torch.equal(pool.hidden_labels, source.labels[pool.source_index])

    said = []
    big, info = unused_pool(source, labeled.source_index, labeled_total=len(labeled), rho_u=10, factor=5, seed=0,
                            log=said.append)
    assert info["shrunk"] and info["requested_size"] == 885 and "largest pool" in said[0]
    assert info["counts"] == unlabeled_counts(info["profile_size"], 4, 10)  # the same profile
    free = [200 - n for n in (100, 46, 21, 10)]
    assert all(n <= f for n, f in zip(info["counts"], free)) and len(big) == sum(info["counts"])
    assert info["counts"][0] >= free[0] - 3  # as large as the head class allows (up to truncation)

    used_all_of_class_0 = torch.cat([labeled.source_index, source.source_index[source.labels == 0]])
    with pytest.raises(LongtailError, match="no room") as e:
        unused_pool(source, used_all_of_class_0, labeled_total=len(labeled), rho_u=10, factor=1)
    assert "n_max" in e.value.fix
    with pytest.raises(LongtailError, match="only"):
        make_pool(source, labeled.source_index, [101, 0, 0, 0])


def test_rest_pool_is_every_unused_image_in_source_order():
    source = balanced_source(50, num_classes=4)
    labeled = source.subset(torch.from_numpy(longtail_indices(source.labels, ClassCounts((50, 20, 8, 3)), seed=0)))
    val = source.subset(torch.tensor([i for i in range(len(source)) if i not in set(labeled.source_index.tolist())
                                      and source.labels[i] > 0][::10]))  # a few free images of classes 1..3
    used = torch.cat([labeled.source_index, val.source_index])
    pool, info = rest_pool(source, used)
    want = [50 - n - v for n, v in zip((50, 20, 8, 3), counts_of(val.labels, 4))]
    assert info == {"size": sum(want), "counts": want} and want[0] == 0  # the head class is used up
    assert pool.hidden_counts().counts == tuple(want) and len(pool) + len(used) == len(source)
    assert not torch.isin(pool.source_index, labeled.source_index).any()
    assert not torch.isin(pool.source_index, val.source_index).any()
    # the free rows in source order: nothing drawn, so nothing to seed
    free = [i for i in range(len(source)) if i not in set(used.tolist())]
    assert pool.source_index.tolist() == free
    assert torch.equal(pool.hidden_labels, source.labels[pool.source_index]) and not hasattr(pool, "labels")
    # where `unused` has no room (its profile needs head-class images), its error points at `rest`
    with pytest.raises(LongtailError, match="no room") as e:
        unused_pool(source, used, labeled_total=len(labeled), rho_u=10, factor=1)
    assert "--pool rest" in e.value.fix and "data.unlabeled_pool=rest" in e.value.fix


# pseudo-labels ----------------------------------------------------------------------------------


class LookupModel(nn.Module):
    """Logits chosen per image: the image's first pixel is its row id into ``table`` (N, C)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        row = torch.round(x[:, 0, 0, 0] * 255).long()  # mean 0, std 1: x = pixel / 255
        return self.table[row]


def lookup_pool(n: int, truth: list[int] | None = None, num_classes: int = 3) -> UnlabeledSet:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    hidden = torch.tensor(truth) if truth is not None else None
    return UnlabeledSet(images, tuple(f"k{c}" for c in range(num_classes)), mean=(0.0,), std=(1.0,),
                        hidden_labels=hidden, source_index=torch.arange(100, 100 + n))


def test_pseudo_labels_come_from_the_model_and_the_threshold_removes_unsure_rows():
    table = torch.tensor([[5.0, 0, 0], [0, 0, 5], [0.1, 0, 0], [0, 3, 0], [0, 0.2, 0.1]])
    pool = lookup_pool(5)
    pl = pseudo_label(LookupModel(table), pool, "cpu", batch_size=2)
    assert pl.labels.tolist() == [0, 2, 0, 1, 1]
    assert torch.allclose(pl.confidence, table.softmax(1).max(1).values)
    assert pl.kept.all() and torch.equal(pl.source_index, pool.source_index)
    sure = pseudo_label(LookupModel(table), pool, "cpu", threshold=0.8)
    assert sure.kept.tolist() == [True, True, False, True, False]
    assert pl.rethreshold(0.8).kept.tolist() == sure.kept.tolist()
    report = pseudo_label_report(sure, pool)
    assert report["kept"] == 3 and report["kept_counts"] == [1, 1, 1] and report["accuracy"] is None
    with pytest.raises(LongtailError, match="threshold"):
        pseudo_label(LookupModel(table), pool, "cpu", threshold=1.5)


def test_report_precision_and_recall_on_a_hand_example():
    truth = [0, 1, 1, 1, 2, 2]
    pl = PseudoLabels(torch.tensor([0, 0, 1, 1, 2, 0]), torch.tensor([0.9, 0.9, 0.9, 0.4, 0.9, 0.9]),
                      torch.arange(6), threshold=0.5)
    r = pseudo_label_report(pl, lookup_pool(6, truth))
    # kept rows 0, 1, 2, 4, 5 -> predicted 0, 0, 1, 2, 0 for true 0, 1, 1, 2, 2
    assert r["kept"] == 5 and r["kept_counts"] == [3, 1, 1] and r["true_counts"] == [1, 3, 2]
    assert [c["precision"] for c in r["per_class"]] == pytest.approx([1 / 3, 1.0, 1.0])
    assert [c["recall"] for c in r["per_class"]] == pytest.approx([1.0, 1 / 3, 1 / 2])
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["mean_recall"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    none_kept = pseudo_label_report(pl.rethreshold(1.0), lookup_pool(6, truth))
    assert none_kept["accuracy"] is None and none_kept["per_class"][0]["precision"] is None
    assert none_kept["per_class"][0]["recall"] == 0.0


def test_pseudo_label_files_round_trip(tmp_path):
    pl = PseudoLabels(torch.tensor([0, 2]), torch.tensor([0.9, 0.3]), torch.tensor([7, 3]), threshold=0.5)
    pool = lookup_pool(2, [0, 1])
    spec = {"kind": "unused", "rho_u": 10.0, "factor": 5.0}
    save_pseudo_labels(tmp_path / "pl", pl, spec, pseudo_label_report(pl, pool), class_names=pool.class_names)
    saved = load_pseudo_labels(tmp_path / "pl")
    assert torch.equal(saved.labels.labels, pl.labels) and torch.equal(saved.labels.source_index, pl.source_index)
    assert saved.labels.kept.tolist() == [True, False] and saved.pool_spec == spec
    assert saved.class_names == pool.class_names
    meta = json.loads((tmp_path / "pl" / "pseudo_labels.json").read_text())
    assert meta["report"]["kept"] == 1
    assert "| k0 | 1 | 1 | 100.0 |" in (tmp_path / "pl" / "pseudo_labels.md").read_text()
    with pytest.raises(LongtailError, match="no pseudo-labels") as e:
        load_pseudo_labels(tmp_path / "nothing")
    assert "longtail pseudo-label" in e.value.fix


def test_parse_pool_spec():
    assert parse_pool_spec("unused:rho_u=100,factor=5") == {"kind": "unused", "rho_u": 100.0, "factor": 5.0}
    assert parse_pool_spec("unused") == {"kind": "unused"}
    assert parse_pool_spec("darp") == {"kind": "darp"}
    assert parse_pool_spec("rest") == parse_pool_spec(" REST: ") == {"kind": "rest"}
    for text in ("unused:rho_u=100,factor=5", "unused", "rest", "darp", "folder:/a/b,c:d"):
        assert parse_pool_spec(describe_pool_spec(parse_pool_spec(text))) == parse_pool_spec(text)
    assert describe_pool_spec({"kind": "rest", "size": 3, "counts": [1, 2]}) == "rest"  # a resolved spec too
    with pytest.raises(LongtailError, match="cannot read") as e:
        parse_pool_spec("rest:seed=1")
    assert "no settings" in e.value.fix
    assert parse_pool_spec("folder:/a/b,c:d") == {"kind": "folder", "path": "/a/b,c:d"}
    for bad, match in (("tiny80m", "unknown unlabeled pool"), ("unused:rho=3", "cannot read"),
                       ("unused:factor=big", "not a valid"), ("folder:", "needs a path"), ("darp:m1=3", "cannot read")):
        with pytest.raises(LongtailError, match=match):
            parse_pool_spec(bad)


# from a trained run to training data (scikit-learn digits: no download) -------------------------------


def digits_run(tmp_path, **data) -> tuple[RunConfig, str]:
    cfg = RunConfig(recipe="semi-test", data=DataConfig(dataset="digits", imbalance_ratio=10, n_max=60, **data),
                    model=ModelConfig(arch="tiny"), train=TrainConfig(device="cpu", amp="off"))
    torch.manual_seed(0)
    model = build_model(cfg, 10, 1)
    save_checkpoint(tmp_path / "base" / "checkpoints" / "last.pt", config=cfg, model=model, optimizer=None,
                    next_epoch=1, records=[])
    return cfg, str(tmp_path / "base")


def test_pseudo_label_run_and_merged_training_data(tmp_path, monkeypatch):
    cfg, run = digits_run(tmp_path)
    assert build_semi_splits(cfg.data) is None  # plain long-tailed data: the registry's usual path
    out = tmp_path / "pl"
    res = pseudo_label_run(run, "unused:rho_u=10,factor=1", out, device="cpu", log=lambda s: None)
    labeled_counts = profile_counts(60, 10, 10)
    assert res["pool"]["requested_size"] == sum(labeled_counts) and not res["pool"]["shrunk"]
    assert res["pool"]["counts"] == unlabeled_counts(sum(labeled_counts), 10, 10)
    assert res["report"]["pool_size"] == res["pool"]["size"] and res["report"]["accuracy"] is not None
    for f in ("pseudo_labels.pt", "pseudo_labels.json", "pseudo_labels.md"):
        assert (out / f).is_file()

    saved = load_pseudo_labels(out)
    splits = build_semi_splits(replace(cfg.data, pseudo_labels=str(out)), log=lambda s: None)
    assert isinstance(splits, SemiSplits)
    n_lab = sum(labeled_counts)
    assert len(splits.train) == n_lab + len(saved.labels)
    assert splits.is_pseudo.tolist() == [False] * n_lab + [True] * len(saved.labels)
    # the training labels of the pool rows are the pseudo-labels, not the true ones
    assert torch.equal(splits.train.labels[n_lab:], saved.labels.labels)
    assert torch.equal(splits.train.source_index[n_lab:], saved.labels.source_index)
    assert not torch.isin(splits.train.source_index[n_lab:], splits.train.source_index[:n_lab]).any()
    want = [a + b for a, b in zip(labeled_counts, counts_of(saved.labels.labels))]
    assert list(splits.train.class_counts().counts) == want == splits.info["train_counts"]
    moved = splits.to("cpu")
    assert isinstance(moved, SemiSplits) and torch.equal(moved.is_pseudo, splits.is_pseudo)

    t = float(saved.labels.confidence.median())
    fewer = build_semi_splits(replace(cfg.data, pseudo_labels=str(out), pseudo_threshold=t), log=lambda s: None)
    keep = saved.labels.confidence >= t
    assert int(fewer.is_pseudo.sum()) == int(keep.sum()) < len(saved.labels)
    assert torch.equal(fewer.train.labels[n_lab:], saved.labels.labels[keep])

    # every run's load_splits (build_semi_splits first, then the labeled splits) gives the same data
    from longtail.data.semi import load_splits

    via_load_splits = load_splits(replace(cfg.data, pseudo_labels=str(out)), log=lambda s: None)
    assert torch.equal(via_load_splits.train.labels, splits.train.labels)
    assert len(load_splits(cfg.data).train) == n_lab

    # another labeled subset would train on images that are in the pool: refused
    with pytest.raises(LongtailError, match="also in the labeled training set"):
        build_semi_splits(replace(cfg.data, pseudo_labels=str(out), subset_seed=1), log=lambda s: None)
    with pytest.raises(LongtailError, match="darp"):
        pseudo_label_run(run, "darp", tmp_path / "x", device="cpu", log=lambda s: None)


def test_rest_pool_pseudo_labels_and_consistency_pool_end_to_end(tmp_path):
    """`pseudo-label --pool rest` and `data.unlabeled_pool=rest`: every digit the labeled subset and the validation
    split left, disjoint from both, in source order; training on the pseudo-labels takes all of them."""
    cfg, run = digits_run(tmp_path, val_per_class=5)
    labeled = build_semi_splits(replace(cfg.data, unlabeled_pool="rest"), log=lambda s: None)
    from longtail.data.registry import load_balanced

    source_total = len(load_balanced(cfg.data)[0])  # the digits' training part
    used = torch.cat([labeled.train.source_index, labeled.val.source_index])
    pool = labeled.unlabeled
    assert isinstance(labeled, SemiSplits) and labeled.is_pseudo is None
    assert len(pool) == source_total - len(used) == labeled.info["unlabeled_pool"]["size"]
    assert labeled.info["unlabeled_pool"]["kind"] == "rest"
    assert not torch.isin(pool.source_index, used).any()
    assert torch.equal(pool.source_index, pool.source_index.sort().values)  # source order

    res = pseudo_label_run(run, "rest", tmp_path / "pl", device="cpu", log=lambda s: None)
    assert res["pool"]["kind"] == "rest" and res["pool"]["size"] == len(pool)
    assert res["pool"]["counts"] == list(pool.hidden_counts().counts) == res["report"]["true_counts"]
    assert "`rest`" in (tmp_path / "pl" / "pseudo_labels.md").read_text()
    saved = load_pseudo_labels(tmp_path / "pl")
    assert torch.equal(saved.labels.source_index, pool.source_index)
    merged = build_semi_splits(replace(cfg.data, pseudo_labels=str(tmp_path / "pl")), log=lambda s: None)
    n_lab = len(labeled.train)
    assert len(merged.train) == n_lab + len(pool) == source_total - len(labeled.val)
    assert torch.equal(merged.train.labels[n_lab:], saved.labels.labels)  # pseudo-labels, not the true ones


def test_darp_protocol_splits_and_pool(tmp_path):
    data = DataConfig(dataset="digits", protocol="darp", darp_n1=60, darp_m1=80, darp_gamma_l=10, darp_gamma_u=10)
    splits = build_semi_splits(data)
    assert isinstance(splits, SemiSplits) and splits.is_pseudo is None
    assert splits.train.class_counts().counts == tuple(darp_counts(60, 10, 10))
    assert splits.unlabeled.hidden_counts().counts == tuple(darp_counts(80, 10, 10))
    assert not torch.isin(splits.unlabeled.source_index, splits.train.source_index).any()
    rev = build_semi_splits(replace(data, darp_reverse=True))
    assert rev.unlabeled.hidden_counts().counts == tuple(darp_counts(80, 10, 10)[::-1])
    # pseudo-label the DARP pool with a run trained on the DARP labeled part, then merge
    cfg, run = digits_run(tmp_path, protocol="darp", darp_n1=60, darp_m1=80, darp_gamma_l=10, darp_gamma_u=10)
    pseudo_label_run(run, "darp", tmp_path / "pl", device="cpu", log=lambda s: None)
    merged = build_semi_splits(replace(cfg.data, pseudo_labels=str(tmp_path / "pl")), log=lambda s: None)
    assert len(merged.train) == sum(darp_counts(60, 10, 10)) + sum(darp_counts(80, 10, 10))
    with pytest.raises(LongtailError, match="unknown data protocol"):
        build_semi_splits(replace(data, protocol="ssl"))


# a folder of images -------------------------------------------------------------------------------


def write_images(folder) -> None:
    from PIL import Image

    (folder / "sub").mkdir(parents=True)
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / "b.png")
    Image.fromarray(rng.randint(0, 256, (6, 6), dtype=np.uint8)).save(folder / "a.png")  # greyscale
    Image.fromarray(rng.randint(0, 256, (20, 16, 3), dtype=np.uint8)).save(folder / "sub" / "c.jpg")
    (folder / "notes.txt").write_text("not an image")


def test_folder_of_images(tmp_path):
    write_images(tmp_path / "imgs")
    pool = load_image_folder(tmp_path / "imgs", size=8, channels=3, class_names=("x", "y"), mean=(0.5,) * 3,
                             std=(0.25,) * 3)
    assert pool.images.shape == (3, 3, 8, 8) and pool.images.dtype == torch.uint8
    assert pool.files == ("a.png", "b.png", "sub/c.jpg") and pool.hidden_labels is None
    grey = load_image_folder(tmp_path / "imgs", size=(4, 6), channels=1, class_names=("x",), mean=(0.5,), std=(0.2,))
    assert grey.images.shape == (3, 1, 4, 6)
    kw = dict(size=8, channels=3, class_names=("x",), mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(LongtailError, match="does not exist") as e:
        load_image_folder(tmp_path / "missing", **kw)
    assert e.value.fix
    (tmp_path / "empty").mkdir()
    with pytest.raises(LongtailError, match="holds no"):
        load_image_folder(tmp_path / "empty", **kw)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(LongtailError, match="cannot read image .*broken.png") as e:
        load_image_folder(tmp_path / "imgs", **kw)
    assert "remove or replace" in e.value.fix


def test_folder_pool_pseudo_labels_end_to_end(tmp_path):
    write_images(tmp_path / "imgs")
    cfg, run = digits_run(tmp_path)
    res = pseudo_label_run(run, f"folder:{tmp_path / 'imgs'}", tmp_path / "pl", device="cpu", log=lambda s: None)
    assert res["report"]["pool_size"] == 3 and res["report"]["accuracy"] is None
    splits = build_semi_splits(replace(cfg.data, pseudo_labels=str(tmp_path / "pl")), log=lambda s: None)
    assert int(splits.is_pseudo.sum()) == 3 and splits.train.image_shape == (1, 8, 8)
    (tmp_path / "imgs" / "sub" / "c.jpg").unlink()
    with pytest.raises(LongtailError, match="changed"):
        build_semi_splits(replace(cfg.data, pseudo_labels=str(tmp_path / "pl")), log=lambda s: None)


# training tasks -------------------------------------------------------------------------------------


def merged_set():
    lab = synthetic_set([20, 10, 6, 4])
    pse = synthetic_set([8, 8, 8, 8], seed=3, name="pseudo")
    from longtail.data.imageset import concat

    train = concat([lab, pse])
    return train, torch.cat([torch.zeros(len(lab), dtype=torch.bool), torch.ones(len(pse), dtype=torch.bool)])


def one_batch(train, n=24):
    g = torch.Generator().manual_seed(0)
    task = SupervisedTask(train, make_loss("ce", train.class_counts()), batch_size=n)
    return next(iter(task.batches(0, g)))


@pytest.mark.parametrize("loss_name", ["ce", "ldam", "balanced-softmax"])
def test_semi_task_with_weight_one_is_the_supervised_task(loss_name):
    train, is_pseudo = merged_set()
    counts = train.class_counts()
    torch.manual_seed(0)
    model = make_model("tiny", 4, in_channels=3).eval()
    batch = one_batch(train)
    sup = SupervisedTask(train, make_loss(loss_name, counts), batch_size=24)
    semi = SemiSupervisedTask(train, make_loss(loss_name, counts), is_pseudo=is_pseudo, batch_size=24)
    assert torch.equal(sup.loss(model, batch), semi.loss(model, batch))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for a, b in zip(sup.batches(0, g1), semi.batches(0, g2)):
        assert torch.equal(a.index, b.index) and torch.equal(a.images, b.images)


def test_pseudo_weight_weights_each_pseudo_labeled_example():
    train, is_pseudo = merged_set()
    counts = train.class_counts()
    torch.manual_seed(0)
    model = make_model("tiny", 4, in_channels=3).eval()
    batch = one_batch(train, n=60)
    class_w = torch.tensor([0.5, 1.0, 1.5, 1.0])
    # CE: its weighted reduction divides by the sum of the weights, which the group weighting assumes (the
    # weighted focal loss takes a plain mean, as its source does: see longtail.losses.focal)
    task = SemiSupervisedTask(train, make_loss("ce", counts), is_pseudo=is_pseudo, batch_size=60,
                              pseudo_weight=0.3)
    task.class_weight = class_w
    # naive reference: per-example CE, weight g_i * a_{y_i}
    logits = model(batch.images)
    p = logits.softmax(1).gather(1, batch.labels[:, None]).squeeze(1)
    per = -p.log()
    g = torch.where(is_pseudo[batch.index], 0.3, 1.0) * class_w[batch.labels]
    assert is_pseudo[batch.index].any() and (~is_pseudo[batch.index]).any()
    assert task.loss(model, batch).item() == pytest.approx(((g * per).sum() / g.sum()).item(), rel=1e-5)
    zero = SemiSupervisedTask(train, make_loss("ce", counts), is_pseudo=is_pseudo, batch_size=60, pseudo_weight=0.0)
    lab_only = SupervisedTask(train, make_loss("ce", counts), batch_size=60)
    mask = ~is_pseudo[batch.index]
    ref = lab_only.loss(model, Batch(batch.images[mask], batch.labels[mask], batch.index[mask]))
    assert zero.loss(model, batch).item() == pytest.approx(ref.item(), rel=1e-5)


def test_pseudo_weight_with_the_weighted_focal_loss_keeps_its_plain_mean():
    """Focal with class weights takes a plain mean of w_y * loss (LDAM-DRW's FocalLoss): with pseudo-labels,
    each example's term is multiplied by its group weight and the sum divided by the groups' weighted count."""
    train, is_pseudo = merged_set()
    counts = train.class_counts()
    torch.manual_seed(0)
    model = make_model("tiny", 4, in_channels=3).eval()
    batch = one_batch(train, n=60)
    class_w = torch.tensor([0.5, 1.0, 1.5, 1.0])
    focal = make_loss("focal", counts, gamma=1.0)
    task = SemiSupervisedTask(train, focal, is_pseudo=is_pseudo, batch_size=60, pseudo_weight=0.3)
    task.class_weight = class_w
    logits = model(batch.images)
    rows = torch.stack([focal(logits[i:i + 1], batch.labels[i:i + 1], weight=class_w) for i in range(60)])
    g = torch.where(is_pseudo[batch.index], 0.3, 1.0)
    assert task.loss(model, batch).item() == pytest.approx(((g * rows).sum() / g.sum()).item(), rel=1e-5)
    same = SemiSupervisedTask(train, focal, is_pseudo=is_pseudo, batch_size=60, pseudo_weight=1.0)
    same.class_weight = class_w
    assert same.loss(model, batch).item() == pytest.approx(focal(logits, batch.labels, weight=class_w).item(),
                                                           rel=1e-5)


def test_labeled_fraction_gives_the_right_share_per_batch():
    train, is_pseudo = merged_set()  # 40 labeled, 32 pseudo-labeled
    task = SemiSupervisedTask(train, make_loss("ce", train.class_counts()), is_pseudo=is_pseudo, batch_size=16,
                              labeled_fraction=0.25, augment=Augment(crop_padding=1))
    batches = list(task.batches(0, torch.Generator().manual_seed(0)))
    assert len(batches) == task.steps_per_epoch == 5
    for b in batches:
        assert b.images.shape[0] == 16 and int((~is_pseudo[b.index]).sum()) == 4
    seen = torch.cat([b.index for b in batches])
    assert len(set(seen[~is_pseudo[seen]].tolist())) == 20  # 5 x 4 labeled rows, no repeats within a pass
    again = list(task.batches(0, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a.index, b.index) for a, b in zip(batches, again))
    cb = make_sampler("class-balanced", train.labels, 4)
    with pytest.raises(LongtailError, match="sampler"):
        SemiSupervisedTask(train, make_loss("ce", train.class_counts()), is_pseudo=is_pseudo, batch_size=16,
                           labeled_fraction=0.5, sampler=cb)
    with pytest.raises(LongtailError, match="labeled_fraction"):
        SemiSupervisedTask(train, make_loss("ce", train.class_counts()), is_pseudo=is_pseudo, batch_size=16,
                           labeled_fraction=1.5)


def test_semi_task_trains():
    train, is_pseudo = merged_set()
    torch.manual_seed(0)
    model = make_model("tiny", 4, in_channels=3)
    task = SemiSupervisedTask(train, make_loss("ce", train.class_counts()), is_pseudo=is_pseudo, batch_size=16,
                              pseudo_weight=0.5, labeled_fraction=0.5)
    recs = fit(model, task, make_sgd(model, lr=0.05, momentum=0.9, weight_decay=0), epochs=4, lr_at=lambda e: 0.05,
               seed=0, device=torch.device("cpu"), amp="off", progress=False)
    assert recs[-1].train_loss < recs[0].train_loss


# FixMatch -------------------------------------------------------------------------------------------


def test_pseudo_targets_mask_low_confidence_and_the_consistency_loss():
    weak = torch.tensor([[10.0, 0, 0], [0.1, 0, 0], [0, 0, 8.0], [1.0, 1.0, 0]])
    labels, mask, probs = pseudo_targets(weak, threshold=0.95)
    assert labels[mask].tolist() == [0, 2] and mask.tolist() == [True, False, True, False]
    strong = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    ce = torch.nn.functional.cross_entropy(strong, labels, reduction="none")
    assert consistency_loss(strong, labels, mask).item() == pytest.approx((ce[0] + ce[2]).item() / 4)
    assert consistency_loss(strong, labels, torch.zeros(4, dtype=torch.bool)).item() == 0.0
    # logit adjustment moves an unsure prediction towards the rare class; DA scales the probabilities
    prior = torch.tensor([0.9, 0.09, 0.01])
    adj, _, _ = pseudo_targets(torch.tensor([[1.0, 0.0, 0.0]]), threshold=0.0, logit_shift=prior.log())
    assert adj.tolist() == [2]
    _, _, p = pseudo_targets(torch.zeros(1, 3), threshold=0.0, align=torch.tensor([2.0, 1.0, 1.0]))
    assert p[0].tolist() == pytest.approx([0.5, 0.25, 0.25])


def test_strong_augment_is_seeded_and_in_range():
    images = synthetic_set([6, 6]).images
    a = strong_augment(images, torch.Generator().manual_seed(0), weak=Augment(crop_padding=2))
    b = strong_augment(images, torch.Generator().manual_seed(0), weak=Augment(crop_padding=2))
    c = strong_augment(images, torch.Generator().manual_seed(1), weak=Augment(crop_padding=2))
    assert a.shape == images.shape and a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert ((a == 0.5).all(dim=1).sum(dim=(1, 2)) >= 4).all()  # every image has its cutout square (side 4)


@pytest.mark.parametrize("alignment", ["none", "da", "la"])
def test_fixmatch_task_loss_is_finite_and_trains(alignment):
    lab = synthetic_set([16, 8, 4, 2])
    unl = hide_labels(synthetic_set([12, 6, 3, 3], seed=2), name="unlabeled")
    torch.manual_seed(0)
    model = make_model("tiny", 4, in_channels=3)
    task = FixMatchTask(lab, unl, make_loss("ce", lab.class_counts()), batch_size=8, mu=2, threshold=0.5,
                        alignment=alignment, augment=Augment(crop_padding=1))
    batch = next(iter(task.batches(0, torch.Generator().manual_seed(0))))
    assert batch.u_weak.shape[0] == batch.u_strong.shape[0] == 2 * batch.images.shape[0]
    loss = task.loss(model, batch)
    assert torch.isfinite(loss) and 0.0 <= float(task.last_mask_rate) <= 1.0
    recs = fit(model, task, make_sgd(model, lr=0.05, momentum=0.9, weight_decay=0), epochs=2,
               lr_at=lambda e: 0.05, seed=0, device=torch.device("cpu"), amp="off", progress=False)
    assert all(np.isfinite(r.train_loss) for r in recs) and recs[0].steps == task.steps_per_epoch == 4
    # with threshold 1 nothing is confident (for a fresh model): the loss is the supervised loss alone
    torch.manual_seed(0)
    model = make_model("tiny", 4, in_channels=3).eval()
    strict = FixMatchTask(lab, unl, make_loss("ce", lab.class_counts()), batch_size=8, mu=2, threshold=1.0,
                          alignment=alignment)
    b = next(iter(strict.batches(0, torch.Generator().manual_seed(0))))
    sup = make_loss("ce", lab.class_counts())(model(torch.cat([b.images, b.u_weak, b.u_strong]))[:8], b.labels)
    assert strict.loss(model, b).item() == pytest.approx(sup.item(), rel=1e-5) and float(strict.last_mask_rate) == 0
    with pytest.raises(LongtailError, match="alignment"):
        FixMatchTask(lab, unl, make_loss("ce", lab.class_counts()), batch_size=8, alignment="magic")


def test_fixmatch_full_batches_tops_up_the_last_labeled_batch():
    """USB draws full labeled batches only: with full_batches the epoch's last batch is topped up from a second
    draw of the sampler (30 images at batch 8: 4 batches of 8, not 3 of 8 and one of 6); without it, as before."""
    lab = synthetic_set([16, 8, 4, 2])
    unl = hide_labels(synthetic_set([12, 6, 3, 3], seed=2), name="unlabeled")
    crit = make_loss("ce", lab.class_counts())
    sizes = {}
    for full in (False, True):
        task = FixMatchTask(lab, unl, crit, batch_size=8, mu=2, full_batches=full)
        batches = list(task.batches(0, torch.Generator().manual_seed(0)))
        sizes[full] = [b.images.shape[0] for b in batches]
        assert all(b.u_weak.shape[0] == 2 * b.images.shape[0] for b in batches)
        first = torch.cat([b.index for b in batches])[:30]
        assert sorted(first.tolist()) == list(range(30))  # the first 30 rows are one whole pass over the images
    assert sizes[False] == [8, 8, 8, 6] and sizes[True] == [8, 8, 8, 8]
