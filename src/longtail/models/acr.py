"""ACR's network (Wei & Gan, CVPR 2023; Gank0078/ACR ``models/wideresnet.py``): one backbone and two linear heads,
their ``fc`` (the standard head, trained on plain cross-entropy and FixMatch consistency) and ``fc1`` (the balanced
head, trained logit-adjusted, and the one they evaluate). ``forward`` is the balanced head, so evaluation, reports,
checkpoints and the second stages see a plain :class:`~longtail.models.Classifier`; the task
(:mod:`longtail.semi.acr`) reads both heads through :meth:`ACRClassifier.train_outputs`.
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .classifier import Classifier
from .heads import make_head


class ACRClassifier(Classifier):
    """One backbone, two linear heads (their WRN's ``fc`` and ``fc1``): ``fc`` the standard head, ``head`` the
    balanced one. ``forward(x) = head(backbone(x))``, the balanced head they evaluate; :meth:`train_outputs` gives
    both."""

    def __init__(self, backbone: nn.Module, head: nn.Module, fc: nn.Module) -> None:
        super().__init__(backbone, head)
        self.fc = fc

    @classmethod
    def from_classifier(cls, model: Classifier, num_classes: int, *, head: str = "linear") -> "ACRClassifier":
        """``model``'s backbone and head (the balanced head) plus a standard head of kind ``head``, initialised as the
        backbone initialises its head (WRN: Xavier-normal weights, zero bias, as their ``fc`` and ``fc1``)."""
        fc = make_head(head, model.num_features, num_classes)
        init_head = getattr(model.backbone, "init_head", None)
        if init_head is not None:
            init_head(fc)
        return cls(model.backbone, model.head, fc)

    def train_outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(standard head logits, balanced head logits)``, each (B, C)."""
        f = self.backbone(x)
        return self.fc(f), self.head(f)


__all__ = ["ACRClassifier"]
