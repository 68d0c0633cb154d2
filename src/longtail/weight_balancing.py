"""Weight balancing (WB; Alshammari et al., "Long-tailed recognition via weight balancing", CVPR 2022).

Two stages, as their released code runs them (ShadeAlsha/LTR-weight-balancing, commit e89f292: the
CIFAR-100-LT demos ``demo1_first-stage-training`` / ``demo2_second-stage-training`` and ``utils/``):

1. Features: plain cross-entropy with a *tuned weight decay* (5e-3 in the demo, found by grid search), SGD
   momentum 0.9, lr 0.01, cosine to 0 over 320 epochs, batch 64, random crop 4 + flip, instance-balanced
   batches (the recipes ``cifar*-lt-wb``).
2. Classifier: the stage-1 linear classifier (weights *and* bias) is trained on, the backbone frozen
   (``requires_grad=False``, but ``model.train()``: its BatchNorm statistics follow the batches), with
   weight decay 0.1 and MaxNorm (:mod:`longtail.maxnorm`, threshold 0.1: cap ``min + 0.1 (max - min)`` of the
   per-class norms at the start of the stage, projected once after every epoch's training, as their
   ``train_model`` calls ``pgdFunc.PGD(model)``); 10 epochs, SGD momentum 0.9, lr 0.01 cosine, batch 64, the same
   instance-balanced loader and augmentation; the loss is their ``CB_loss(..., "softmax", beta=0.9999, ...)``,
   :func:`softmax_bce` below with class-balanced weights (``longtail.weights``, beta 0.9999). The stage is
   ``longtail decouple --method wb`` (:mod:`longtail.decouple`).

Their class-balanced "softmax" loss (``utils/class_balanced_loss.py``, from vandit15/Class-balanced-loss-pytorch)
is **not** a weighted softmax cross-entropy: it is the binary cross-entropy of the softmax probabilities
against one-hot targets, every one of the ``B x C`` entries weighted by the weight of its row's class and the
sum divided by ``B x C`` (``F.binary_cross_entropy(softmax(z), onehot, weight=w[y])``; vandit15's issues #8 and
#23 ask the same question). Checked against a transcription in tests/test_weight_balancing.py.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .errors import LongtailError

__all__ = ["SoftmaxBCE", "softmax_bce"]


def softmax_bce(logits: Tensor, targets: Tensor, *, weight: Tensor | None = None) -> Tensor:
    """WB's class-balanced loss: binary cross-entropy of ``p = softmax(z)`` against ``t = onehot(y)``::

        loss = 1 / (B C) * sum_i w[y_i] * sum_c -(t_ic log p_ic + (1 - t_ic) log(1 - p_ic))

    ``logits`` ``(B, C)``, ``targets`` ``(B,)``, ``weight`` ``(C,)`` per-class weights (None: all 1). Each log is
    clamped at -100, as ``F.binary_cross_entropy`` clamps it (which autocast refuses, hence written out here).

    >>> round(softmax_bce(torch.zeros(1, 2), torch.tensor([0])).item(), 4)  # -log(1/2) for both entries
    0.6931
    """
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise LongtailError(f"a loss needs logits (B, C) and targets (B,), got {tuple(logits.shape)} and "
                            f"{tuple(targets.shape)}", "pass the classifier's raw scores and integer labels")
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits  # float32 at least
    log_p = F.log_softmax(z, dim=1)
    t = F.one_hot(targets, z.shape[1]).to(z.dtype)
    per_entry = -(t * log_p.clamp_min(-100) + (1 - t) * torch.log1p(-log_p.exp()).clamp_min(-100))  # (B, C)
    if weight is not None:
        per_entry = per_entry * weight.to(device=z.device, dtype=z.dtype)[targets].unsqueeze(1)
    return per_entry.mean()


class SoftmaxBCE(nn.Module):
    """:func:`softmax_bce` as a loss module, called as every loss of :mod:`longtail.losses` is:
    ``loss(logits, targets, weight=None)`` (the class-balanced weights come from the task's weighting)."""

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return softmax_bce(logits, targets, weight=weight)
