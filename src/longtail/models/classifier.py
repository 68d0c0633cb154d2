"""``Classifier(backbone, head)`` with a ``features()`` seam, and the model registry.

Backbones by name: the CIFAR ResNets (``resnet32``, ``resnet20``, ``resnet8``), torchvision's
ImageNet ResNets (``resnet10``, ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``,
``resnext50_32x4d``; see :mod:`longtail.models.torchvision_backbones`), any timm model as
``timm:NAME`` (when timm is installed), and ``tiny`` for tests.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..errors import LongtailError
from .heads import make_head
from .resnet_cifar import ResNetCifar
from .torchvision_backbones import (
    TORCHVISION_BACKBONES,
    backbone_builder,
    timm_backbone,
)


class Classifier(nn.Module):
    """``forward(x) = head(features(x))``.

    The seam is what decoupled training (new head on a frozen backbone), tau-normalisation and
    self-supervised heads need; ``reset_head`` swaps the head.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def num_features(self) -> int:
        return int(self.backbone.out_features)  # type: ignore[arg-type]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def reset_head(self, head: nn.Module) -> None:
        self.head = head


class TinyNet(nn.Module):
    """A two-convolution backbone for tests: (B, C, H, W) -> (B, 16).

    ``norm="group"`` uses GroupNorm, which has no batch statistics: its training step does not
    depend on how a batch is split across processes (used to test distributed training).
    """

    def __init__(self, in_channels: int = 3, width: int = 16, norm: str = "batch") -> None:
        super().__init__()

        def norm_layer(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if norm == "batch" else nn.GroupNorm(4, c)

        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, 1, 1), norm_layer(8), nn.ReLU(),
            nn.Conv2d(8, width, 3, 2, 1), norm_layer(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


#: backbone name -> constructor(in_channels)
MODELS: dict[str, Callable[[int], nn.Module]] = {
    "resnet32": lambda c: ResNetCifar(5, in_channels=c),
    "resnet20": lambda c: ResNetCifar(3, in_channels=c),
    "resnet8": lambda c: ResNetCifar(1, in_channels=c),
    "tiny": lambda c: TinyNet(c),
    **{name: backbone_builder(name) for name in TORCHVISION_BACKBONES},
}


def make_backbone(arch: str, in_channels: int = 3) -> nn.Module:
    """A registered backbone, or ``timm:NAME``."""
    if arch.startswith("timm:"):
        return timm_backbone(arch.removeprefix("timm:"), in_channels)
    if arch not in MODELS:
        raise LongtailError(f"unknown model {arch!r}", f"use one of: {', '.join(MODELS)}, or timm:NAME")
    return MODELS[arch](in_channels)


def make_model(arch: str, num_classes: int, *, head: str = "linear", in_channels: int = 3) -> Classifier:
    backbone = make_backbone(arch, in_channels)
    classifier = make_head(head, backbone.out_features, num_classes)  # type: ignore[arg-type]
    init_head = getattr(backbone, "init_head", None)  # a backbone whose source initialises its head its own way
    if init_head is not None:
        init_head(classifier)
    return Classifier(backbone, classifier)
