"""Wide ResNet for 32x32 images as FixMatch and USB train it: WRN-28-2 (1.47 M parameters with 10 classes).

Zagoruyko & Komodakis (2016), depth ``6n + 4`` and widen factor ``k``, in the form of USB's
``semilearn/nets/wrn/wrn.py`` (the network behind USB's imbalanced FixMatch numbers; a port of the
FixMatch TensorFlow model)::

    conv3x3 16 (with bias)                                   32 x 32
    stage 1: n pre-activation blocks, 16k channels, stride 1 32 x 32   first block: activate_before_residual
    stage 2: n blocks, 32k channels, stride 2                16 x 16
    stage 3: n blocks, 64k channels, stride 2                 8 x 8
    BN (eps 1e-3) -> leaky ReLU -> global average pool       -> features (B, 64k)

A block is ``x + conv(act(bn(conv(act(bn(x))))))`` with ``act`` the leaky ReLU (slope 0.1) and every
BatchNorm's running statistics moving by ``bn_momentum`` = 0.001 per step (PyTorch's convention:
``running = 0.999 running + 0.001 batch``). A block that changes the width adds a 1x1 convolution on the
shortcut; what it feeds that convolution and the first 3x3 follows USB exactly:

* the first block of stage 1 (``activate_before_residual``): both get ``act(bn1(x))``;
* the first blocks of stages 2 and 3: both get the raw ``x``, so their ``bn1`` takes no part in the
  output (a quirk of the PyTorch port; the TensorFlow original feeds ``act(bn1(x))`` to the 3x3 there).
  We keep that ``bn1`` so that the parameter count and a USB state dict match, freeze it
  (``requires_grad`` off: no gradient, no weight decay, no unused-parameter error under DDP) and skip
  computing it, which leaves the output unchanged.

Initialisation as USB's: convolutions Kaiming-normal (fan out; ``nonlinearity='leaky_relu'`` with
``kaiming_normal_``'s slope ``a=0`` is a gain of sqrt 2), BatchNorm scale 1 and shift 0, and the
linear classifier Xavier-normal with zero bias (:meth:`WideResNet.init_head`, which
``longtail.models.make_model`` calls on the head). :meth:`WideResNet.no_weight_decay` names the
parameters USB's optimizer leaves out of weight decay (every name with ``bn`` or ``bias``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

#: registry name -> (depth, widen factor)
WRN_CONFIGS: dict[str, tuple[int, int]] = {"wrn-28-2": (28, 2), "wrn-28-8": (28, 8)}
#: the same networks in the form of kekmodel/FixMatch-pytorch's ``models/wideresnet.py``, which ACR (Gank0078/ACR)
#: builds on: no bias on the first convolution and the last BatchNorm's eps 1e-5 (PyTorch's default), otherwise
#: USB's form exactly (the blocks, their quirk, initialisation); 1,467,610 parameters with 10 classes
KEKMODEL_WRN_CONFIGS: dict[str, tuple[int, int]] = {"wrn-28-2-kekmodel": (28, 2), "wrn-28-8-kekmodel": (28, 8)}


class WideBlock(nn.Module):
    """A pre-activation basic block: (B, in_planes, H, W) -> (B, out_planes, H / stride, W / stride)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, *, activate_before_residual: bool = False,
                 bn_momentum: float = 0.001, slope: float = 0.1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.act = nn.LeakyReLU(slope)
        self.shortcut: nn.Conv2d | None = None
        self.activate_before_residual = activate_before_residual
        if in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
            if not activate_before_residual:
                self.bn1.requires_grad_(False)  # unused (see the module's docstring)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return x + self.conv2(self.act(self.bn2(self.conv1(self.act(self.bn1(x))))))
        if self.activate_before_residual:
            x = self.act(self.bn1(x))
        return self.shortcut(x) + self.conv2(self.act(self.bn2(self.conv1(x))))


class WideResNet(nn.Module):
    """Backbone only: (B, in_channels, H, W) -> (B, 64 * widen_factor) features; the head lives in ``Classifier``."""

    def __init__(self, depth: int = 28, widen_factor: int = 2, *, in_channels: int = 3, bn_momentum: float = 0.001,
                 slope: float = 0.1, stem_bias: bool = True, final_eps: float = 1e-3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a Wide ResNet has depth 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=stem_bias)

        def stage(c_in: int, c_out: int, stride: int, first_activates: bool) -> nn.Sequential:
            return nn.Sequential(*(
                WideBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1,
                          activate_before_residual=first_activates, bn_momentum=bn_momentum, slope=slope)
                for i in range(n)))

        self.block1 = stage(widths[0], widths[1], 1, True)
        self.block2 = stage(widths[1], widths[2], 2, False)
        self.block3 = stage(widths[2], widths[3], 2, False)
        self.bn = nn.BatchNorm2d(widths[3], momentum=bn_momentum, eps=final_eps)
        self.act = nn.LeakyReLU(slope)
        self.out_features = widths[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.act(self.bn(out)).mean(dim=(2, 3))

    @staticmethod
    def init_head(head: nn.Module) -> None:
        """USB's classifier init: Xavier-normal weights, zero bias (a linear head; other heads keep theirs)."""
        if isinstance(head, nn.Linear):
            nn.init.xavier_normal_(head.weight)
            if head.bias is not None:
                nn.init.zeros_(head.bias)

    def no_weight_decay(self) -> list[str]:
        """Names of the parameters USB keeps out of weight decay: every BatchNorm parameter and bias."""
        return [name for name, _ in self.named_parameters() if "bn" in name or "bias" in name]


def wide_resnet_backbone(name: str):
    """The registry's constructor ``in_channels -> WideResNet`` of a named depth and width."""
    if name in KEKMODEL_WRN_CONFIGS:
        depth, k = KEKMODEL_WRN_CONFIGS[name]
        return lambda c: WideResNet(depth, k, in_channels=c, stem_bias=False, final_eps=1e-5)
    depth, k = WRN_CONFIGS[name]
    return lambda c: WideResNet(depth, k, in_channels=c)
