"""Initialise a classifier's backbone from a pre-training run, loudly.

The reference code (Yang & Xu 2020) loaded pre-trained weights with ``strict=False`` into a
model whose keys lacked the ``module.`` prefix of the saved ``DataParallel`` state: nothing
matched, nothing was said, and "SSP" runs trained from scratch. Here every backbone tensor must
be found, with the right shape, or the load stops with a ``LongtailError`` that names the first
missing tensor; only head tensors (``longtail.ssl.models.HEAD_MODULES``: projector, predictor,
rotation or classifier head, momentum encoder, queue) may be left behind.

Accepted sources: a run folder (``checkpoints/last.pt`` is used), a longtail checkpoint, or a
``.pt`` file holding a state dict (bare, or under ``state_dict``/``model``) of a longtail model
(``backbone.*`` keys) or of a bare backbone. ``module.`` prefixes are stripped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import LongtailError
from ..runs import CHECKPOINT_FORMAT, resolve_checkpoint
from ..storage import load_file
from .models import HEAD_MODULES

BACKBONE_PREFIX = "backbone."


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict in ``path``, and the backbone architecture when the file is a longtail checkpoint."""
    arch = None
    obj: Any = load_file(path, what="pre-trained weights file",
                         fix="pass a run folder written by `longtail pretrain` or a .pt state dict")
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        arch = (obj.get("config") or {}).get("model", {}).get("arch")
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LongtailError(f"{path} holds no state dict of tensors",
                            "pass a run folder written by `longtail pretrain` or a .pt state dict")
    return obj, arch


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop every leading ``module.`` (from ``DataParallel`` / ``DistributedDataParallel``)."""
    out = {}
    for k, v in state.items():
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def _is_head(key: str) -> bool:
    return key.split(".", 1)[0] in HEAD_MODULES


def load_pretrained_backbone(model: nn.Module, path: str | Path, *,
                             log: Callable[[str], None] | None = print) -> tuple[int, int]:
    """Copy the backbone tensors of a pre-training run or checkpoint into ``model.backbone``.

    Returns ``(loaded, total)``: backbone tensors loaded and backbone tensors of ``model`` (equal
    on success). Raises ``LongtailError`` when no backbone tensor matches, when some are missing
    or have another shape, or when the file holds tensors that are neither backbone nor a head.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise LongtailError("the model has no .backbone to initialise", "pass a longtail Classifier")
    ckpt = resolve_checkpoint(path)
    raw, arch = _read_state_dict(ckpt)
    state = strip_module_prefix(raw)
    own = backbone.state_dict()
    total = len(own)

    prefixed = any(k.startswith(BACKBONE_PREFIX) for k in state)
    heads = sorted({k.split(".", 1)[0] for k in state if _is_head(k)})
    if prefixed:
        source = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
        other = [k for k in state if not k.startswith(BACKBONE_PREFIX) and not _is_head(k)]
    else:  # a bare backbone's state dict (heads may sit beside it)
        source = {k: v for k, v in state.items() if not _is_head(k)}
        other = []

    made_with = f"it was pre-trained with model.arch={arch}; " if arch else ""
    fix = (f"{made_with}pre-train with the same model (--set model.arch=...) as the run it initialises, and pass "
           "its run folder or checkpoints/last.pt")
    missing = [k for k in own if k not in source]
    if len(missing) == total:
        example = next(iter(state))
        raise LongtailError(
            f"no backbone tensor of this model is in {ckpt}: the first missing is backbone.{missing[0]}, "
            f"and the file holds keys like {example!r}", fix)
    if missing:
        raise LongtailError(
            f"{ckpt} holds only {total - len(missing)} of the {total} backbone tensors of this model; "
            f"the first missing is backbone.{missing[0]}", fix)
    shapes = [f"backbone.{k}: file {tuple(source[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if source[k].shape != v.shape]
    if shapes:
        raise LongtailError(f"{ckpt} does not fit this backbone: {shapes[0]}", fix)
    unexpected = [f"backbone.{k}" if prefixed else k for k in source if k not in own] + other
    if unexpected:
        raise LongtailError(f"{ckpt} holds tensors that are neither this backbone's nor a known head's, e.g. "
                            f"{unexpected[0]!r} ({len(unexpected)} in all)", fix)

    backbone.load_state_dict({k: source[k] for k in own}, strict=True)
    if log is not None:
        ignored = f"; ignored the heads: {', '.join(heads)}" if heads else ""
        log(f"initialised the backbone from {ckpt}: loaded {total}/{total} backbone tensors{ignored}")
    return total, total
