"""Classifier heads: features (B, D) -> logits (B, C)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LongtailError


class LinearHead(nn.Linear):
    """A plain linear classifier with Kaiming-normal weights (the reference's init)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(in_features, num_classes)
        nn.init.kaiming_normal_(self.weight)


class CosineHead(nn.Module):
    """Cosine classifier (the reference's ``NormedLinear``): logits ``cos(f, w_c)`` in [-1, 1].

    No bias, no scale: LDAM multiplies by its own scale s (30 in the reference).
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.weight.data.uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)
        self.in_features, self.out_features = in_features, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()


HEADS = {"linear": LinearHead, "cosine": CosineHead}


def make_head(name: str, in_features: int, num_classes: int) -> nn.Module:
    if name not in HEADS:
        raise LongtailError(f"unknown head {name!r}", f"use one of: {', '.join(HEADS)}")
    return HEADS[name](in_features, num_classes)
