"""Run folders and checkpoints.

A run folder holds everything needed to read and reproduce a run::

    config.json            the full RunConfig, the command line and the package version
    metrics.jsonl          one JSON line per epoch
    checkpoints/last.pt    model, optimizer and loop state (written atomically, with a checksum)
    checkpoints/previous.pt  the checkpoint before it: resumed from when last.pt is damaged
    .longtail.lock         while a process writes the folder: its pid and host (one writer at a time)
    report.json / .md      the final evaluation (last epoch), per_class_accuracy.png
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from . import __version__
from .config import RunConfig
from .errors import LongtailError
from .storage import (LOCK_NAME, RunLock, atomic_write_bytes, atomic_write_text, digest, load_file,  # noqa: F401 (re-exported)
                      remove_stale_temporaries)

CHECKPOINT_FORMAT = "longtail-checkpoint"
CHECKPOINT_VERSION = 2  # 2: a checksum of the payload ("checksum"); 1 (none) is still read
RESTART_FIX = "pass --restart to start the run over (this deletes the run folder's files)"


def save_checkpoint(path: Path, *, config: RunConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    next_epoch: int, records: list[dict[str, Any]], extra: dict[str, Any] | None = None,
                    keep_previous: bool = True) -> None:
    """Write a checkpoint atomically, with a checksum of its payload.

    Weights that are not finite are never written (the last good checkpoint stays). With
    ``keep_previous`` the checkpoint it replaces is kept as ``previous.pt`` beside it, so that a
    damaged newest checkpoint does not lose the run."""
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
    if keep_previous and path.is_file():
        tmp_new = path.with_name(f".{path.name}.new.tmp")
        atomic_write_bytes(tmp_new, lambda f: torch.save(state, f))
        try:
            os.replace(path, previous_checkpoint(path))
            os.replace(tmp_new, path)
        except OSError as e:
            from .storage import write_error

            raise write_error(path, e) from e
    else:
        atomic_write_bytes(path, lambda f: torch.save(state, f))


def previous_checkpoint(path: Path) -> Path:
    """Where the checkpoint that ``path`` replaced is kept (``last.pt`` -> ``previous.pt``)."""
    path = Path(path)
    return path.with_name("previous.pt" if path.name == "last.pt" else f"previous-{path.name}")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint as data (never code), check that it is one of ours and that its checksum holds."""
    path = Path(path)
    fix = "pass a checkpoint written by `longtail train`, or " + RESTART_FIX
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


class RunDir:
    """The files of one run (one seed)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.checkpoint = self.root / "checkpoints" / "last.pt"
        self.previous = previous_checkpoint(self.checkpoint)
        self.best_val = self.root / "checkpoints" / "best-val.pt"  # best balanced accuracy on the validation split
        self.metrics = self.root / "metrics.jsonl"
        self.config_file = self.root / "config.json"

    def lock(self, log: Callable[[str], None] = print) -> RunLock:
        """The run folder's lock (``with run.lock(): ...``): one writer at a time."""
        return RunLock(self.root, log=log)

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file() or self.previous.is_file()

    def clean(self) -> None:
        """Remove temporaries that a killed process left while writing (call while holding the lock)."""
        for folder in (self.root, self.checkpoint.parent):
            remove_stale_temporaries(folder)

    def resume_state(self, log: Callable[[str], None] = print) -> dict[str, Any] | None:
        """The newest usable checkpoint's state: ``last.pt``, else ``previous.pt`` (saying why), else None
        when there is none; a ``LongtailError`` naming ``--restart`` when every checkpoint is damaged."""
        problems = []
        for path in (self.checkpoint, self.previous):
            if not path.is_file():
                continue
            try:
                state = load_checkpoint(path)
            except LongtailError as e:
                problems.append(e.problem)
                continue
            if problems:
                log(f"warning: {problems[0]}; resuming from the checkpoint before it, {path.name} "
                    f"(epoch {state['next_epoch']})")
            return state
        if problems:
            raise LongtailError("no usable checkpoint to resume from: " + "; ".join(problems), RESTART_FIX)
        return None

    def create(self, config: RunConfig, command: list[str] | None = None) -> None:
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


def is_run_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is one that longtail wrote (a run, a pre-training run, or seed-N runs), or empty."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    entries = [p for p in folder.iterdir() if p.name != LOCK_NAME]
    if not entries:
        return True

    def has_meta(d: Path) -> bool:
        try:
            meta = json.loads((d / "config.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and "config" in meta and "longtail_version" in meta

    return has_meta(folder) or any(has_meta(p) for p in folder.glob("seed-*") if p.is_dir())


def clear_run_folder(folder: str | Path) -> None:
    """``--restart``: delete what a run folder holds (not its lock); refuses a folder longtail did not write."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not is_run_folder(folder):
        raise LongtailError(f"--restart would delete {folder}, which is not a longtail run folder",
                            "pass an --out folder that longtail wrote (or a new one); delete other folders yourself")
    try:
        for p in folder.iterdir():
            if p.name == LOCK_NAME:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    except OSError as e:
        raise LongtailError(f"--restart could not clear {folder}: {e}", "check the folder's permissions") from e


def resume_or_start(run: RunDir, cfg: RunConfig, *, log: Callable[[str], None] = print,
                    same: Callable[[], bool] | None = None) -> dict[str, Any] | None:
    """The checkpoint state to resume ``run`` from, or None to start it; stops when the folder holds a
    run of other settings (naming each difference). ``same`` overrides the comparison of configs."""
    if not run.has_checkpoint():
        return None
    previous = run.existing_config()
    differs = (not same()) if same is not None else (previous is not None and previous != cfg)
    if differs:
        from .config import config_differences

        diff = config_differences(previous, cfg) if previous is not None else []
        detail = ("; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")) if diff else \
            "the method or its settings"
        raise LongtailError(f"{run.root} holds a run with other settings: {detail}",
                            "use another --out to keep both, or pass --restart to start this one over")
    return run.resume_state(log)
