"""Head wrappers of the second stages (Kang et al. 2020; Menon et al. 2021) and how they fold back.

``ScaledHead`` (LWS) and ``LogitAdjustedHead`` (post-hoc logit adjustment) wrap a trained head;
``fold_head`` turns a wrapped linear head back into a plain one where that is exact, and
``head_wrappers`` names the wrappers so that a checkpoint can record them and
``longtail.checkpoints.model_from_checkpoint`` can rebuild them. ``tau_normalize`` is tau-norm.
"""

from __future__ import annotations

import copy
from typing import Callable, Protocol, cast

import torch
import torch.nn as nn

from ..counts import ClassCounts
from ..errors import LongtailError
from .classifier import Classifier
from .heads import CosineHead


class ScaledHead(nn.Module):
    """Learnable weight scaling (LWS, Kang et al. 2020): ``z_c = f_c * inner(x)_c``.

    ``scale`` = ``(f_1..f_C)`` starts at 1, so a fresh ``ScaledHead`` gives the inner head's logits.
    """

    kind = "scaled"

    def __init__(self, inner: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.inner = inner
        device = next(inner.parameters()).device
        self.scale = nn.Parameter(torch.ones(num_classes, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.scale

    def fold(self) -> nn.Module:
        """``f_c (w_c . x + b_c) = (f_c w_c) . x + f_c b_c``: a plain linear head; self otherwise."""
        inner = fold_head(self.inner)
        if not isinstance(inner, nn.Linear):
            self.inner = inner
            return self
        s = self.scale.detach()
        return _linear_with(inner, inner.weight.detach() * s[:, None], _bias(inner) * s)


class LogitAdjustedHead(nn.Module):
    """Post-hoc logit adjustment (Menon et al. 2021): ``z_c = inner(x)_c + offset_c``.

    ``offset = -tau * log pi`` (a buffer, see :meth:`for_counts`); ``pi_c = n_c / N`` is the
    training prior, so the argmax targets the balanced error instead of the training mix.
    """

    kind = "logit-adjusted"
    offset: torch.Tensor  # a buffer (register_buffer below)

    def __init__(self, inner: nn.Module, offset: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        device = next(inner.parameters()).device
        self.register_buffer("offset", offset.detach().float().to(device).clone())

    @classmethod
    def for_counts(cls, inner: nn.Module, counts: ClassCounts, tau: float) -> "LogitAdjustedHead":
        return cls(inner, -(tau * counts.log_prior()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + self.offset.to(x.device)

    def fold(self) -> nn.Module:
        """``w_c . x + b_c - tau log pi_c``: a plain linear head with bias ``b - tau log pi``; self otherwise."""
        inner = fold_head(self.inner)
        if not isinstance(inner, nn.Linear):
            self.inner = inner
            return self
        return _linear_with(inner, inner.weight.detach(), _bias(inner) + self.offset)


#: wrapper name (as saved in checkpoints) -> an empty wrapper around ``inner`` for ``C`` classes
HEAD_WRAPPERS: dict[str, Callable[[nn.Module, int], nn.Module]] = {
    ScaledHead.kind: lambda inner, c: ScaledHead(inner, c),
    LogitAdjustedHead.kind: lambda inner, c: LogitAdjustedHead(inner, torch.zeros(c)),
}


def _bias(head: nn.Linear) -> torch.Tensor:
    return head.bias.detach() if head.bias is not None else torch.zeros(head.out_features, device=head.weight.device)


def _linear_with(like: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """A copy of the linear head ``like`` (same class, so the same checkpoint keys) with new values."""
    head = copy.deepcopy(like)
    with torch.no_grad():
        head.weight.copy_(weight)
        if head.bias is not None:
            head.bias.copy_(bias)
    return head.requires_grad_(True)


class _Foldable(Protocol):
    def fold(self) -> nn.Module: ...


def fold_head(head: nn.Module) -> nn.Module:
    """The head as a plain head where exactly possible (see the wrappers' ``fold``), else as it is."""
    return cast(_Foldable, head).fold() if hasattr(head, "fold") else head


def head_wrappers(head: nn.Module) -> list[str]:
    """Wrapper names from the innermost to the outermost, e.g. ``["scaled"]``; ``[]`` for a plain head."""
    names: list[str] = []
    while hasattr(head, "inner") and getattr(head, "kind", None) in HEAD_WRAPPERS:
        names.insert(0, cast(str, head.kind))  # a key of HEAD_WRAPPERS
        head = cast(nn.Module, head.inner)
    return names


def tau_normalize(head: nn.Module, tau: float) -> nn.Module:
    """tau-normalisation (Kang et al. 2020): ``w_c <- w_c / ||w_c||_2^tau``, bias set to 0.

    ``tau = 0`` leaves ``W`` unchanged (so it is the identity on a head whose bias is 0); ``tau = 1``
    gives every class a unit-norm weight. The bias is dropped as in Kang et al.'s code (for a
    linear head it is zeroed, so the checkpoint keys stay those of a plain head). A cosine head
    gets the same rescaled weight, but it normalises ``w_c`` in its forward pass, so its logits do
    not change for any tau: a cosine classifier is already norm-balanced.
    """
    if not isinstance(head, (nn.Linear, CosineHead)):
        raise LongtailError(f"tau-norm needs a linear or cosine head, this model has {type(head).__name__}",
                            "apply tau-norm to the base run, not to a run already decoupled with lws or logit-adjust")
    new = copy.deepcopy(head)
    with torch.no_grad():
        w = head.weight.detach()
        new.weight.copy_(w / w.norm(dim=1, keepdim=True).clamp_min(1e-12).pow(tau))
        bias = getattr(new, "bias", None)
        if bias is not None:
            bias.zero_()
    return new


#: the frozen backbone's BatchNorm while cRT / LWS train: ``train`` (the references: its running statistics
#: follow the class-balanced batches) or ``frozen`` (eval mode: the backbone's tensors stay bit-identical)
BN_MODES = ("train", "frozen")


class FrozenBackbone(nn.Module):
    """The view of a ``Classifier`` that ``fit`` trains when only the head may change.

    The backbone's parameters have ``requires_grad=False`` and its features are computed without
    autograd. ``bn="train"`` (the references: Kang et al.'s ``run_networks.py`` and BagofTricks-LT put every
    network, the fixed feature model included, in training mode): BatchNorm normalises each batch by its
    own statistics and its running statistics follow the class-balanced batches. ``bn="frozen"``: the
    backbone stays in eval mode, so its tensors, running statistics included, stay bit-identical.
    """

    def __init__(self, model: Classifier, bn: str = "train") -> None:
        super().__init__()
        if bn not in BN_MODES:
            raise LongtailError(f"unknown BatchNorm mode {bn!r} for the second stage",
                                f"use one of: {', '.join(BN_MODES)}")
        self.model, self.bn = model, bn
        model.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenBackbone":
        super().train(mode)
        if self.bn == "frozen":
            self.model.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.model.features(x)
        return self.model.forward_head(features)
