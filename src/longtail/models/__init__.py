"""Models as ``Classifier(backbone, head)``: the backbone gives features, the head gives logits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .classifier import MODELS, Classifier, make_backbone, make_model
from .heads import HEADS, CosineHead, LinearHead, make_head
from .resnet_cifar import ResNetCifar, resnet32

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["Classifier", "CosineHead", "LinearHead", "HEADS", "MODELS", "ResNetCifar", "build_model", "make_backbone",
           "make_head", "make_model", "resnet32"]


def build_model(cfg: RunConfig, num_classes: int, in_channels: int) -> Classifier:
    """The model a run's ``model`` section describes, for ``num_classes`` classes."""
    return make_model(cfg.model.arch, num_classes, head=cfg.model.head, in_channels=in_channels)
