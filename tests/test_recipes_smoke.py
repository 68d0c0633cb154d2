"""Every named recipe builds its model, task and loss from its config and takes one training step, on the CPU,
on a tiny stand-in for its data (synthetic tensors, or image files in the data set's own layout).

The stand-ins: the data set's channels and number of classes as 8-pixel uint8 tensors (CIFAR, SVHN, digits;
pre-training, which decodes image files to tensors, gets CIFAR-10's), four classes of 16-pixel crops written
in the data set's own file layout (ImageNet-LT, iNaturalist 2018, folder; decoded into memory for the recipes that
set ``data.in_memory``, as their runs are), an unlabeled pool (FixMatch, ACR) and
pseudo-labeled rows (the ``*-pseudo`` recipes). Fine-tuning recipes load the backbone of a one-step run of
the pre-training recipe they name. Not run here: the second stage of the two-stage recipes
(``Recipe.decouple``, tests/test_decouple.py) and the loading of the real data sets.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from longtail.checkpoints import load_pretrained_backbone
from longtail.config import RunConfig
from longtail.data.pools import UnlabeledSet
from longtail.data.registry import Splits, decode_in_memory
from longtail.data.semi import SemiSplits
from longtail.driver import Context
from longtail.experiment import SupervisedStage
from longtail.graphs import EagerStep
from longtail.loop import epoch_generator
from longtail.recipes import RECIPES, Recipe
from longtail.runs import RunDir
from longtail.ssl.run import build_pretraining, resolve_ssl

from conftest import synthetic_set
from imagefiles import file_splits, write_imagenet_lt, write_images, write_inat

CPU = torch.device("cpu")
CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10, "digits": 10}
CHANNELS = {"digits": 1}  # 3 otherwise
SIDE = 8  # pixels: the CIFAR ResNets pool to 1 x 1 from any size; small keeps 53 recipes under a minute
FILE_COUNTS = [5, 3, 2, 1]  # image-file stand-ins: four classes, long-tailed


def tensor_splits(cfg: RunConfig) -> Splits:
    """A long-tailed synthetic train set (3, 2 or 1 image per class in turn, 4 for the first) and a test set."""
    k, channels = CLASSES[cfg.data.dataset], CHANNELS.get(cfg.data.dataset, 3)
    train = synthetic_set([4] + [3 - c % 3 for c in range(1, k)], size=SIDE, channels=channels, name="train")
    test = synthetic_set([1] * k, size=SIDE, channels=channels, seed=1, name="test")
    return Splits(train, test)


def file_based(cfg: RunConfig, root: Path) -> Splits:
    ds = cfg.data.dataset
    if ds == "imagenet-lt":
        write_imagenet_lt(root, FILE_COUNTS, test_per_class=1)
    elif ds == "inat2018":
        write_inat(root, FILE_COUNTS, [3, 11, 40, 7], test_per_class=1)
    else:  # folder: DIR/train/<class>/*, DIR/test/<class>/*
        names = [f"class{c}" for c in range(len(FILE_COUNTS))]
        write_images(root, "train", FILE_COUNTS, names)
        write_images(root, "test", [1] * len(FILE_COUNTS), names, seed=1)
    splits = file_splits(ds, root, image_size=16)
    if cfg.data.in_memory:  # folder-fast-*: tensors, as load_splits decodes them
        return decode_in_memory(splits, view=cfg.data.decode_view)
    return splits


def semi_splits(recipe: Recipe, base: Splits) -> Splits:
    """The extra rows a semi-supervised recipe trains on: an unlabeled pool (FixMatch, ACR), or pseudo-labeled
    rows (the ``*-pseudo`` recipes, which take them from ``--set data.pseudo_labels=DIR``)."""
    k, train = base.train.num_classes, base.train
    if recipe.config.semi.method in ("fixmatch", "acr"):
        if recipe.config.semi.method == "acr":  # ACR draws whole batches (drop_last): 64 labeled, 64 of the pool
            train = synthetic_set([7] * k, size=SIDE, seed=4, name="train")
        pool = synthetic_set([7 if recipe.config.semi.method == "acr" else 3] * k, size=SIDE, seed=2, name="pool")
        unlabeled = UnlabeledSet(pool.images, pool.class_names, pool.mean, pool.std,
                                 source_index=torch.arange(len(pool)))  # ACR's pool may hold labeled images
        return SemiSplits(train, base.test, unlabeled=unlabeled)
    if recipe.name.endswith("-pseudo"):
        pseudo = synthetic_set([2] * k, size=SIDE, seed=3, name="pseudo")
        merged = type(train)(torch.cat([train.images, pseudo.images]), torch.cat([train.labels, pseudo.labels]),
                             train.class_names, mean=train.mean, std=train.std, name="train+pseudo")
        is_pseudo = torch.cat([torch.zeros(len(train), dtype=torch.bool), torch.ones(len(pseudo), dtype=torch.bool)])
        return SemiSplits(merged, base.test, is_pseudo=is_pseudo)
    return base


def stand_in(recipe: Recipe, cfg: RunConfig, root: Path) -> Splits:
    if cfg.data.dataset in ("imagenet-lt", "inat2018", "folder") and recipe.pretrain is None:
        return file_based(cfg, root)
    if cfg.data.dataset not in CLASSES:  # pre-training on ImageNet-LT: tensors, as it decodes the files once
        cfg = replace(cfg, data=replace(cfg.data, dataset="cifar10"))
    return semi_splits(recipe, tensor_splits(cfg))


def one_step(model: torch.nn.Module, task, optimizer: torch.optim.Optimizer, cfg: RunConfig) -> float:
    """One step of the loop's eager stepper, on the first batch of epoch 0."""
    step = EagerStep(model, task, optimizer, CPU, cfg.train.amp)
    step.start_epoch(cfg.train.lr)
    model.train()
    task.on_epoch_start(0)
    batch = next(iter(task.batches(0, epoch_generator(cfg.seed, 0, CPU))))
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    loss = float(step(batch))
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before)), "the step changed no parameter"
    return loss


def pretrain_step(recipe: Recipe, cfg: RunConfig, splits: Splits) -> torch.nn.Module:
    method = recipe.pretrain
    assert method is not None
    model, task, optimizer = build_pretraining(method, cfg, resolve_ssl(method, cfg, None), splits.train, CPU,
                                               log=lambda _: None)
    loss = one_step(model, task, optimizer, cfg)
    assert torch.isfinite(torch.tensor(loss)), recipe.name
    return model


def fine_tune_init(cfg: RunConfig, tmp_path: Path, splits: Splits) -> Path:
    """A one-step run of the pre-training recipe ``cfg.train.init_from`` names, saved where it points."""
    source = RECIPES[Path(cfg.train.init_from or "").name]
    model = pretrain_step(source, replace(source.config, train=replace(source.config.train, device="cpu")), splits)
    folder = tmp_path / source.name
    (folder / "checkpoints").mkdir(parents=True)
    torch.save({"model": model.state_dict()}, folder / "checkpoints" / "last.pt")
    return folder


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_builds_and_takes_one_step(name, tmp_path):
    recipe = RECIPES[name]
    cfg = replace(recipe.config, train=replace(recipe.config.train, device="cpu"))
    splits = stand_in(recipe, cfg, tmp_path / "data")
    if recipe.pretrain is not None:  # self-supervised pre-training: its own model, task and optimizer
        pretrain_step(recipe, cfg, splits)
        return
    counts = splits.train.class_counts()
    # the model, task and optimizer as the run driver builds them (a frozen backbone included)
    built = SupervisedStage(cfg, RunDir(tmp_path / "run")).build(Context(splits, counts, CPU, True, print, False))
    model = built.model
    if cfg.train.init_from:  # fine-tuning from the pre-training recipe: its backbone must fit this model
        loaded, total = load_pretrained_backbone(model, fine_tune_init(cfg, tmp_path, splits), log=None)
        assert loaded == total
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()} if cfg.train.freeze_backbone else None
    loss = one_step(built.trains or model, built.task, built.optimizer, cfg)
    assert torch.isfinite(torch.tensor(loss)) and loss > 0, name
    if frozen is not None:  # the head trained, the backbone (BatchNorm statistics included) did not move
        assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in frozen.items()), name
