"""Checkpoints: writing and reading them (checksummed, as data), and the models they hold.

- :func:`save_checkpoint` / :func:`load_checkpoint`: one file per checkpoint, written atomically with a
  SHA-256 checksum of its payload and the checkpoint before it kept as ``previous.pt``; read with
  ``weights_only=True`` (``longtail.storage.load_file``) and verified.
- :func:`model_from_checkpoint`: the classifier of a checkpoint, plain or decoupled, with the weights the run
  is evaluated with (:func:`evaluated_weights`: the EMA of the weights when ``optim.ema`` kept one).
- :func:`load_pretrained_backbone`: a pre-training run's backbone into a classifier, loudly.

Initialise a classifier's backbone from a pre-training run, loudly.

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

import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from . import __version__
from .config import RunConfig
from .errors import LongtailError
from .models import Classifier, build_model
from .models.wrappers import HEAD_WRAPPERS
from .storage import atomic_write_bytes, digest, load_file, write_error

CHECKPOINT_FORMAT = "longtail-checkpoint"
CHECKPOINT_VERSION = 2  # 2: a checksum of the payload ("checksum"); 1 (none) is still read
RESTART_FIX = "pass --restart to start the run over (this deletes the run folder's files)"


def save_checkpoint(path: Path, *, config: RunConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    next_epoch: int, records: list[dict[str, Any]], extra: dict[str, Any] | None = None,
                    keep_previous: bool | None = None) -> None:
    """Write a checkpoint atomically, with a checksum of its payload.

    Weights that are not finite are never written (the last good checkpoint stays). With
    ``keep_previous`` (default: for ``last.pt``) the checkpoint it replaces is kept as ``previous.pt``
    beside it, so that a damaged newest checkpoint does not lose the run."""
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise LongtailError(f"training diverged before epoch {next_epoch}: {bad} holds NaN or infinite values; "
                            f"{path} was left as it was",
                            "lower the learning rate (--lr) or check the data, then " + RESTART_FIX)
    state = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "longtail_version": __version__,
        "config": config.to_dict(),
        "next_epoch": next_epoch,
        "model": weights,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "records": records,
        "extra": extra or {},
    }
    state["checksum"] = digest(state)
    path = Path(path)
    if keep_previous is None:
        keep_previous = path.name == "last.pt"
    if keep_previous and path.is_file():
        tmp_new = path.with_name(f".{path.name}.new.tmp")
        atomic_write_bytes(tmp_new, lambda f: torch.save(state, f))
        try:
            os.replace(path, previous_checkpoint(path))
            os.replace(tmp_new, path)
        except OSError as e:
            raise write_error(path, e) from e
    else:
        atomic_write_bytes(path, lambda f: torch.save(state, f))


def run_root(checkpoint: Path) -> Path:
    """The run folder of a checkpoint file (``RUN/checkpoints/last.pt`` -> ``RUN``; a loose file: its folder)."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def previous_checkpoint(path: Path) -> Path:
    """Where the checkpoint that ``path`` replaced is kept (``last.pt`` -> ``previous.pt``)."""
    path = Path(path)
    return path.with_name("previous.pt" if path.name == "last.pt" else f"previous-{path.name}")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint as data (never code), check that it is one of ours and that its checksum holds."""
    path = Path(path)
    prev = previous_checkpoint(path)
    fix = ("pass a checkpoint written by `longtail train`"
           + (f"; the one it replaced, {prev}, may be intact: pass that file" if prev.is_file() and prev != path
              else "")
           + "; or train the run again (`longtail train ... --restart`, which deletes the run folder's files)")
    state = load_file(path, what="checkpoint", fix=fix)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise LongtailError(f"{path} is not a longtail checkpoint", "pass a checkpoint written by `longtail train`")
    if state.get("format_version", 0) > CHECKPOINT_VERSION:
        raise LongtailError(f"{path} was written by a newer longtail ({state.get('longtail_version')})",
                            "upgrade longtail to read it")
    if "checksum" in state or state.get("format_version", 0) >= 2:
        expected = state.pop("checksum", None)
        try:
            actual = digest(state)
        except TypeError as e:
            raise LongtailError(f"the checkpoint {path} is damaged: {e}", fix) from None
        if expected != actual:
            raise LongtailError(f"the checkpoint {path} is damaged: its contents do not match their checksum", fix)
    return state


def load_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load weights strictly, turning a mismatch into a message that names it."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or shapes:
        detail = "; ".join(filter(None, [
            f"missing {len(missing)} tensors (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
            f"shape mismatch {shapes[0]}" if shapes else "",
        ]))
        raise LongtailError(f"checkpoint {source} does not fit this model: {detail}",
                            "evaluate it with the recipe/model/data it was trained with (its config.json)")
    model.load_state_dict(state_dict)


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder, a seed folder or a .pt file -> the checkpoint file."""
    p = Path(path)
    if p.is_dir():
        cand = p / "checkpoints" / "last.pt"
        if cand.is_file():
            return cand
        raise LongtailError(f"{p} holds no checkpoints/last.pt",
                            "pass a run folder written by `longtail train` (for several seeds, one seed-N folder)")
    if not p.exists():
        raise LongtailError(f"{p} does not exist", "pass a run folder or a checkpoint file")
    return p


def refuse_pretraining(state: dict[str, Any], source: str) -> None:
    """Stop when ``state`` is a pre-training checkpoint: its head predicts the pretext task (rotations, ...), not
    the classes, so it is no classifier to evaluate, decouple or label with."""
    pretrain = (state.get("extra") or {}).get("pretrain")
    if pretrain:
        method = pretrain.get("method", "self-supervised") if isinstance(pretrain, dict) else "self-supervised"
        raise LongtailError(f"{source} is a pre-training run ({method}): it has learned features, not the classes, "
                            "so it cannot be evaluated, decoupled or used to label as a classifier",
                            f"train a classifier from it first, e.g. `longtail train RECIPE --init-from "
                            f"{run_root(Path(source))}`; a finished pre-training's report.md holds its probes")


def model_from_checkpoint(state: dict[str, Any], num_classes: int, in_channels: int, source: str) -> Classifier:
    """The model of a checkpoint, plain or decoupled (re-wrapping its head as recorded), weights loaded."""
    refuse_pretraining(state, source)
    cfg = RunConfig.from_dict(state["config"])
    model = build_model(cfg, num_classes, in_channels)
    for kind in (state.get("extra") or {}).get("decouple", {}).get("head_wrappers", []):
        if kind not in HEAD_WRAPPERS:
            raise LongtailError(f"{source} has a head wrapper {kind!r} this longtail does not know",
                                "upgrade longtail to read it")
        model.reset_head(HEAD_WRAPPERS[kind](model.head, num_classes))
    load_model_state(model, evaluated_weights(state), source)
    return model


def evaluated_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a checkpoint's run is evaluated with: the EMA of its weights when it keeps one
    (``optim.ema``: the optimizer state's ``ema``, :mod:`longtail.optim`), else ``state["model"]``.
    Resuming reads ``state["model"]``, the trained weights, instead."""
    ema = (state.get("optimizer") or {}).get("ema")
    return ema["weights"] if isinstance(ema, dict) and isinstance(ema.get("weights"), dict) else state["model"]


# pre-trained backbones --------------------------------------------------------------------------------

#: top-level module names of pre-training heads (and of supervised heads): never backbone tensors
HEAD_MODULES = ("head", "projector", "predictor", "momentum_backbone", "momentum_projector", "queue",
                "queue_ptr", "rotation_head", "fc", "linear")
BACKBONE_PREFIX = "backbone."


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict in ``path``, and the backbone architecture when the file is a longtail checkpoint."""
    arch = None
    obj: Any = load_file(path, what="pre-trained weights file",
                         fix="pass a run folder written by `longtail pretrain` or a .pt state dict")
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        arch = (obj.get("config") or {}).get("model", {}).get("arch")
        obj = evaluated_weights(obj)  # a run trained with an EMA (optim.ema) passes on its EMA weights
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
