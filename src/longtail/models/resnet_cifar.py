"""ResNet for 32x32 images (He et al. 2016, section 4.2), as used by the long-tailed references.

Depth 6n+2: a 3x3 stem with 16 channels, three stages of n basic blocks with widths 16/32/64
(strides 1/2/2), global average pooling. Shortcuts that change shape are "option A":
subsample by 2 and zero-pad the new channels (no parameters), as in Cao et al.'s code.
ResNet-32 is n = 5 (0.46 M parameters).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: (B, C, H, W) -> (B, C + 2*pad, H/2, W/2) by striding and zero channels."""

    def __init__(self, pad_channels: int) -> None:
        super().__init__()
        self.pad_channels = pad_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad_channels
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = ZeroPadShortcut((planes - in_planes) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """Backbone only: (B, in_channels, H, W) -> (B, 64) features; the head lives in ``Classifier``."""

    def __init__(self, blocks_per_stage: int = 5, *, in_channels: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        in_planes = widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks_per_stage):
                stride = 2 if (stage > 0 and i == 0) else 1
                layers.append(BasicBlock(in_planes, width, stride))
                in_planes = width
        self.layers = nn.Sequential(*layers)
        self.out_features = in_planes
        for m in self.modules():  # Kaiming normal, as the reference's _weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def resnet32(in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(5, in_channels=in_channels)
