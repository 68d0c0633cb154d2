"""GLMC's network: one backbone, two classifier heads and a projector / predictor pair (Du et al., CVPR 2023).

As ``ResNet_modify`` of ynu-yangpeng/GLMC (``GLMC-2023/model/ResNet_cifar.py``, commit 2c0261c): the features
``f`` (B, D) of the backbone feed a standard head ``fc`` (their ``fc``), a re-balanced head ``head`` (their
``fc_cb``), and a projector ``z = projector(f)`` (B, P) (their ``projection_head``, one linear layer) followed
by a predictor ``p = predictor(z)`` (B, P) (their ``contrast_head``, one linear layer), P = 128 on CIFAR.
The training task (:mod:`longtail.glmc`) reads all four through :meth:`GLMCClassifier.train_outputs`;
``forward`` is the re-balanced head alone, the head their ``validate`` evaluates, so evaluation, reports,
checkpoints, MaxNorm (``optim.maxnorm`` caps ``head``, their ``MaxNorm_via_PGD`` caps ``fc_cb``) and the
decoupling stages see a plain :class:`~longtail.models.Classifier`.

Initialisation as theirs: Kaiming-normal weights for every linear layer (the heads' come from
:mod:`longtail.models.heads`), PyTorch's default biases.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .classifier import Classifier
from .heads import make_head


class GLMCClassifier(Classifier):
    """``forward(x) = head(backbone(x))``, the re-balanced head; :meth:`train_outputs` gives GLMC's four outputs."""

    def __init__(self, backbone: nn.Module, head: nn.Module, fc: nn.Module, projector: nn.Module,
                 predictor: nn.Module) -> None:
        super().__init__(backbone, head)
        self.fc, self.projector, self.predictor = fc, projector, predictor

    @classmethod
    def from_classifier(cls, model: Classifier, num_classes: int, *, head: str = "linear",
                        proj_dim: int = 128) -> "GLMCClassifier":
        """``model``'s backbone and head (the re-balanced head), plus a standard head of kind ``head`` and the
        projector / predictor of width ``proj_dim``, drawn from the global generator in that order."""
        d = model.num_features
        fc = make_head(head, d, num_classes)
        projector, predictor = nn.Linear(d, proj_dim), nn.Linear(proj_dim, proj_dim)
        for layer in (projector, predictor):
            nn.init.kaiming_normal_(layer.weight)
        return cls(model.backbone, model.head, fc, projector, predictor)

    def train_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(fc logits (B, C), head logits (B, C), z (B, P), p (B, P))``: their ``forward(x, train=True)``."""
        f = self.backbone(x)
        z = self.projector(f)
        return self.fc(f), self.head(f), z, self.predictor(z)


__all__ = ["GLMCClassifier"]
