"""Your own images from a pre-trained backbone (issue 16): --set model.pretrained=FILE loads a local weights file
(a torchvision state dict here, random weights saved by the test) with every backbone tensor matched, the
folder-finetune-* recipes need one, and train.freeze_backbone trains the head alone."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from longtail import LongtailError
from longtail.checkpoints import load_checkpoint
from longtail.cli import main
from longtail.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from longtail.experiment import train_one
from longtail.recipes import RECIPES

from imagefiles import write_images

TRAIN = [8, 4, 2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    names = ["ant", "bee", "cat"]
    write_images(root, "train", TRAIN, names)
    write_images(root, "test", [3, 3, 3], names, seed=1)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """torchvision's ResNet-10 layout (conv1, layer1..4, fc) with random weights, as torch.save writes a state dict."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(123)
    net = tv.models.resnet.ResNet(tv.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=1000)
    path = tmp_path_factory.mktemp("w") / "resnet10.pth"
    torch.save(net.state_dict(), path)
    return path, net.state_dict()


def cfg(folder, **train) -> RunConfig:
    return RunConfig(recipe="finetune-test", data=DataConfig(dataset="folder", root=str(folder), image_size=32,
                                                             num_workers=0),
                     model=ModelConfig(arch="resnet10"), loss=RunConfig().loss,
                     train=TrainConfig(**{**dict(epochs=2, batch_size=8, lr=0.05, device="cpu", schedule="cosine",
                                                 warmup_epochs=0, checkpoint_every=1), **train}))


def backbone(run):
    state = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}, state


def test_a_frozen_pretrained_backbone_stays_as_the_file_gives_it(folder, weights, tmp_path):
    path, source = weights
    c = cfg(folder, freeze_backbone=True)
    c = replace(c, model=replace(c.model, pretrained=str(path)))
    logs = []
    train_one(c, tmp_path / "linear", progress=False, log=logs.append)
    assert any("loaded" in line for line in logs)  # how many backbone tensors came from the file
    mine, state = backbone(tmp_path / "linear")
    assert mine and all(torch.equal(v, source[k]) for k, v in mine.items())  # BatchNorm statistics included
    assert not any(k.startswith("fc.") for k in mine) and state["head.weight"].shape == (3, 512)


def test_full_fine_tuning_starts_from_the_file_and_moves(folder, weights, tmp_path):
    path, source = weights
    c = cfg(folder)
    c = replace(c, model=replace(c.model, pretrained=str(path)))
    train_one(c, tmp_path / "full", progress=False)
    mine, _ = backbone(tmp_path / "full")
    assert any(not torch.equal(v, source[k]) for k, v in mine.items())  # it trained
    # one epoch from the file differs from one epoch from random weights: the file was read
    scratch = train_one(cfg(folder, epochs=1), tmp_path / "scratch", progress=False)
    tuned = train_one(replace(c, train=replace(c.train, epochs=1)), tmp_path / "tuned", progress=False)
    assert scratch["nll"] != tuned["nll"]


def test_a_file_that_does_not_fit_is_a_clear_error(folder, tmp_path):
    tv = pytest.importorskip("torchvision")
    other = tv.models.resnet.ResNet(tv.models.resnet.BasicBlock, [2, 2, 2, 2])  # ResNet-18: extra blocks
    torch.save(other.state_dict(), tmp_path / "r18.pth")
    c = cfg(folder)
    with pytest.raises(LongtailError) as e:
        train_one(replace(c, model=replace(c.model, pretrained=str(tmp_path / "r18.pth"))), tmp_path / "x",
                  progress=False)
    assert "r18.pth" in e.value.problem
    torch.save({"evil": object()}, tmp_path / "code.pth")  # a pickle that names a class: never read
    with pytest.raises(LongtailError, match="could run code|other than tensors"):
        train_one(replace(c, model=replace(c.model, pretrained=str(tmp_path / "code.pth"))), tmp_path / "y",
                  progress=False)
    both = replace(c, model=replace(c.model, pretrained=str(tmp_path / "r18.pth")),
                   train=replace(c.train, init_from=str(tmp_path / "r18.pth")))
    with pytest.raises(LongtailError, match="both model.pretrained and train.init_from"):
        train_one(both, tmp_path / "z", progress=False)


def test_the_finetune_recipes_need_weights_and_say_so(capsys):
    for name in ("folder-finetune-linear", "folder-finetune-full"):
        r = RECIPES[name]
        assert r.needs_pretrained and r.config.loss.name == "logit-adjust" and r.config.model.arch == "resnet50"
        assert main(["train", name, "--data-root", "/nonexistent"]) == 2
        err = capsys.readouterr().err
        assert "starts from pre-trained weights" in err and "--set model.pretrained=FILE" in err
    assert RECIPES["folder-finetune-linear"].config.train.freeze_backbone
    assert main(["train", "folder-finetune-full", "--show-config"]) == 0  # the settings show without weights
    assert json.dumps(capsys.readouterr().out)
