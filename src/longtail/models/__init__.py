"""Models as ``Classifier(backbone, head)``: the backbone gives features, the head gives logits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .classifier import MODELS, Classifier, make_backbone, make_model
from .fastnet import FASTNET_WIDTHS, FastNet, FlipTTA, fastnet_backbone, init_whitening
from .heads import HEADS, CosineHead, LinearHead, make_head
from .resnet_cifar import ResNetCifar, resnet32

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["Classifier", "CosineHead", "FastNet", "FlipTTA", "LinearHead", "HEADS", "MODELS", "ResNetCifar",
           "build_model", "init_whitening", "make_backbone", "make_head", "make_model", "resnet32"]

# FastNet (airbench-style, small images) by width set: fastnet-s 16/64/64, fastnet-m 32/128/128,
# fastnet-l and fastnet 64/256/256 (longtail.models.fastnet)
MODELS.update({name: fastnet_backbone(name) for name in FASTNET_WIDTHS})


def build_model(cfg: RunConfig, num_classes: int, in_channels: int) -> Classifier:
    """The model a run's ``model`` section describes, for ``num_classes`` classes."""
    return make_model(cfg.model.arch, num_classes, head=cfg.model.head, in_channels=in_channels)
