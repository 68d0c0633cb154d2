"""ImageNet-size backbones by name: torchvision's ResNets, and any timm model (``timm:NAME``).

Each is a backbone in the ``Classifier(backbone, head)`` sense: ``forward`` gives the pooled
features (B, D) and ``out_features`` is D (512 for ResNet-10/18/34, 2048 for ResNet-50 and
ResNeXt-50 32x4d). The classifier layer is the ``Classifier``'s head, so every remedy, cRT,
tau-norm and LWS work unchanged. Weights start random: nothing is downloaded.

ResNet-10 (Liu et al. 2019 train it from scratch on ImageNet-LT) is torchvision's ``ResNet`` with
one ``BasicBlock`` per stage. A torchvision backbone keeps torchvision's parameter names
(``conv1``, ``layer1.0.conv1``, ...), so a torchvision state_dict without ``fc.*`` loads into it.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..errors import LongtailError

#: name -> (block, layers, extra ResNet kwargs); built with torchvision.models.resnet.ResNet
_RESNETS: dict[str, tuple[str, list[int], dict[str, int]]] = {
    "resnet10": ("BasicBlock", [1, 1, 1, 1], {}),
    "resnet18": ("BasicBlock", [2, 2, 2, 2], {}),
    "resnet34": ("BasicBlock", [3, 4, 6, 3], {}),
    "resnet50": ("Bottleneck", [3, 4, 6, 3], {}),
    "resnet101": ("Bottleneck", [3, 4, 23, 3], {}),
    "resnext50_32x4d": ("Bottleneck", [3, 4, 6, 3], {"groups": 32, "width_per_group": 4}),
}
TORCHVISION_BACKBONES = tuple(_RESNETS)


def torchvision_resnet(name: str, in_channels: int = 3) -> nn.Module:
    """A torchvision ResNet without its ``fc``: (B, in_channels, H, W) -> (B, out_features)."""
    if name not in _RESNETS:
        raise LongtailError(f"unknown torchvision backbone {name!r}", f"use one of: {', '.join(_RESNETS)}")
    try:
        from torchvision.models import resnet
    except ImportError:
        raise LongtailError(f"model {name!r} needs torchvision", "pip install torchvision") from None
    block, layers, kw = _RESNETS[name]
    net = resnet.ResNet(getattr(resnet, block), layers, **kw)  # torchvision's init; random weights
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.out_features = net.fc.in_features
    net.fc = nn.Identity()  # forward now ends at the pooled, flattened features
    return net


def timm_backbone(name: str, in_channels: int = 3) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=0)``: pooled features, ``out_features`` set."""
    try:
        import timm
    except ImportError:
        raise LongtailError(f"model 'timm:{name}' needs timm", "pip install timm") from None
    try:
        net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
    except RuntimeError as e:  # timm's "Unknown model"
        raise LongtailError(f"timm has no model {name!r}: {e}", "see timm.list_models()") from None
    net.out_features = int(net.num_features)
    return net


def backbone_builder(name: str) -> Callable[[int], nn.Module]:
    """``in_channels -> backbone`` for a torchvision name."""
    return lambda c: torchvision_resnet(name, c)


__all__ = ["TORCHVISION_BACKBONES", "backbone_builder", "timm_backbone", "torchvision_resnet"]
