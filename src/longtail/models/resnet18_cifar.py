"""ResNet-18 for 32x32 images: the ImageNet ResNet-18 with a 3x3 stride-1 stem and no max-pooling.

Self-supervised CIFAR code uses this network, in two spellings that compute the same function family
with the same 11,168,832 backbone parameters (11,173,962 with a 10-class linear head):

* ``resnet18-cifar``: Liu et al. (ICLR 2022), ``Liuhong99/Imbalanced-SSL`` ``cifar/simsiam/resnet_cifar.py``,
  which is kuangliu's ``ResNet18`` (pytorch-cifar): conv3x3(64) + BN + ReLU, four stages of two basic blocks
  (64/128/256/512, strides 1/2/2/2), projection shortcuts (1x1 conv + BN) where the shape changes,
  average pooling of the 4x4 map. Parameter names ``conv1``, ``layer1.0.shortcut.0``, ...; PyTorch's
  default initialisation, as the source (it sets none).
* ``resnet18-cifar-tv``: MoCo's CIFAR-10 demo (facebookresearch/moco ``colab/moco_cifar10_demo.ipynb``,
  ``ModelBase``): torchvision's ``resnet18`` with ``conv1`` replaced by a 3x3 stride-1 convolution and the
  max-pooling removed; torchvision's names (``layer1.0.downsample.0``) and initialisation, except ``conv1``
  (a fresh ``nn.Conv2d``, default initialisation, as in the demo).

Both pool adaptively (the same as the source's ``avg_pool2d(out, 4)`` on 32x32 inputs; smaller inputs work
too) and give (B, 512) features; the classifier is the ``Classifier``'s head.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

#: backbone parameters of both variants (conv + BN; Liu et al.'s ResNet18 without its ``fc``)
RESNET18_CIFAR_PARAMETERS = 11_168_832


class Block(nn.Module):
    """Basic block: two 3x3 convolutions with BN; a 1x1 conv + BN shortcut when stride or width change."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()  # the source's empty Sequential: identity, no parameters
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18Cifar(nn.Module):
    """Liu et al.'s (kuangliu's) CIFAR ResNet-18 backbone: (B, in_channels, H, W) -> (B, 512)."""

    def __init__(self, in_channels: int = 3, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.in_planes = 64
        self.layer1 = self._stage(64, blocks[0], 1)
        self.layer2 = self._stage(128, blocks[1], 2)
        self.layer3 = self._stage(256, blocks[2], 2)
        self.layer4 = self._stage(512, blocks[3], 2)
        self.out_features = self.in_planes

    def _stage(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(Block(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def resnet18_cifar_torchvision(in_channels: int = 3) -> nn.Module:
    """MoCo's CIFAR demo backbone: torchvision's ResNet-18, 3x3 stride-1 ``conv1``, no max-pool, no ``fc``."""
    from .torchvision_backbones import torchvision_resnet

    net = torchvision_resnet("resnet18", 3)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)  # the demo: kernel 3, stride 1
    net.maxpool = nn.Identity()  # the demo drops pool1
    return net


#: registry entries (``longtail.models.MODELS``): name -> constructor(in_channels)
CIFAR_RESNET18: dict[str, Callable[[int], nn.Module]] = {
    "resnet18-cifar": lambda c: ResNet18Cifar(c),
    "resnet18-cifar-tv": resnet18_cifar_torchvision,
}

__all__ = ["CIFAR_RESNET18", "RESNET18_CIFAR_PARAMETERS", "ResNet18Cifar", "resnet18_cifar_torchvision"]
