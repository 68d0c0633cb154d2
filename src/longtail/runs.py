"""Run folders and checkpoints.

A run folder holds everything needed to read and reproduce a run::

    config.json            the full RunConfig, the command line and the package version
    metrics.jsonl          one JSON line per epoch
    checkpoints/last.pt    model, optimizer and loop state (written atomically)
    report.json / .md      the final evaluation (last epoch), per_class_accuracy.png
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import RunConfig
from .errors import LongtailError

CHECKPOINT_FORMAT = "longtail-checkpoint"
CHECKPOINT_VERSION = 1


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: Path, *, config: RunConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    next_epoch: int, records: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "longtail_version": __version__,
        "config": config.to_dict(),
        "next_epoch": next_epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "records": records,
        "extra": extra or {},
    }
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint and check that it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise LongtailError(f"no checkpoint at {path}", "pass a run folder (with checkpoints/last.pt) or a .pt file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise LongtailError(f"cannot read checkpoint {path}: {e}", "the file is corrupt or not a PyTorch file; "
                            "re-run training, or resume from an earlier checkpoint") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise LongtailError(f"{path} is not a longtail checkpoint", "pass a checkpoint written by `longtail train`")
    if state.get("format_version", 0) > CHECKPOINT_VERSION:
        raise LongtailError(f"{path} was written by a newer longtail ({state.get('longtail_version')})",
                            "upgrade longtail to read it")
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


class RunDir:
    """The files of one run (one seed)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.checkpoint = self.root / "checkpoints" / "last.pt"
        self.best_val = self.root / "checkpoints" / "best-val.pt"  # best balanced accuracy on the validation split
        self.metrics = self.root / "metrics.jsonl"
        self.config_file = self.root / "config.json"

    def create(self, config: RunConfig, command: list[str] | None = None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        meta = {
            "config": config.to_dict(),
            "command": command if command is not None else sys.argv,
            "longtail_version": __version__,
            "torch_version": torch.__version__,
        }
        atomic_write_text(self.config_file, json.dumps(meta, indent=2) + "\n")

    def existing_config(self) -> RunConfig | None:
        if not self.config_file.is_file():
            return None
        return RunConfig.from_dict(json.loads(self.config_file.read_text())["config"])

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in records))
