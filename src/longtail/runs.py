"""Run folders and checkpoints.

A run folder holds everything needed to read and reproduce a run::

    config.json            the full RunConfig, the command line and the package version
    metrics.jsonl          one JSON line per epoch
    checkpoints/last.pt    model, optimizer and loop state (written atomically, with a checksum); the optimizer's
                           holds MaxNorm's cap and the EMA of the weights when on (longtail.optim)
    checkpoints/previous.pt  the checkpoint before it: resumed from when last.pt is damaged
    .longtail.lock         while a process writes the folder: its pid and host (one writer at a time)
    report.json / .md      the final evaluation (last epoch), per_class_accuracy.png
    tensorboard/           TensorBoard event files, when train.tensorboard is on (longtail.tensorboard)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from . import __version__
from .checkpoints import RESTART_FIX, load_checkpoint, previous_checkpoint, save_checkpoint
from .config import EXECUTION_SETTINGS, RunConfig, config_differences, training_differences
from .errors import LongtailError
from .storage import LOCK_NAME, RunLock, atomic_write_text, remove_stale_temporaries


class RunDir:
    """The files of one run (one seed)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.checkpoint = self.root / "checkpoints" / "last.pt"
        self.previous = previous_checkpoint(self.checkpoint)
        self.best_val = self.root / "checkpoints" / "best-val.pt"  # best balanced accuracy on the validation split
        self.metrics = self.root / "metrics.jsonl"
        self.config_file = self.root / "config.json"
        self.tensorboard = self.root / "tensorboard"  # event files (train.tensorboard)
        self.plot = self.root / "per_class_accuracy.png"  # written with the report (longtail.report)

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

    def create(self, config: RunConfig, command: list[str] | None = None, *,
               extra: dict[str, Any] | None = None) -> None:
        """Write ``config.json``: the configuration, the command, the versions and a stage's ``extra`` entries
        (e.g. ``pretrain``: the method and its settings)."""
        meta = {
            "config": config.to_dict(),
            **(extra or {}),
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


def require_run_folder(folder: str | Path) -> None:
    """Stop when ``folder`` holds files that are not a longtail run: a run never writes among a user's own files."""
    folder = Path(folder)
    if folder.is_dir() and not is_run_folder(folder):
        if (folder / "checkpoints" / "last.pt").is_file():  # a run whose config.json is gone or damaged
            raise LongtailError(f"{folder} holds a checkpoint but its config.json is missing or damaged, so it cannot "
                                "be resumed safely", f"`longtail evaluate {folder}` still reads the checkpoint; to "
                                "train, pass a new --out (or delete the folder yourself)")
        raise LongtailError(f"{folder} holds files and is not a longtail run folder",
                            "pass an --out folder that is new, empty, or written by longtail")


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
    run of other settings (naming each difference). Settings that only change how the run executes
    (``config.EXECUTION_SETTINGS``: device, engine, ...) may differ; the log names them. ``same`` overrides
    the comparison of configs."""
    if not run.has_checkpoint():
        return None
    previous = run.existing_config()
    diff = training_differences(previous, cfg) if previous is not None else []
    if (not same()) if same is not None else bool(diff):
        detail = ("; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")) if diff else \
            "the method or its settings"
        raise LongtailError(f"{run.root} holds a run with other settings: {detail}",
                            "use another --out to keep both, or pass --restart to start this one over")
    execution = [line for line in config_differences(previous, cfg) if line.partition(":")[0] in EXECUTION_SETTINGS] \
        if previous is not None else []
    if execution:
        log(f"resuming {run.root} with other execution settings: " + "; ".join(execution))
    return run.resume_state(log)


class EpochLog:
    """What a run keeps of each epoch, the same for every driver (one seed, stacked seeds, pre-training):
    a row in ``metrics.jsonl``, the validation scores every ``train.eval_every`` epochs, ``best-val.pt``
    when ``best_by`` improved (chosen on the validation split, never on the test set), and the
    checkpoint every ``train.checkpoint_every`` epochs and at the last one. Only a process that
    ``writes`` (rank 0) writes files; every process keeps the rows."""

    def __init__(self, run: RunDir, cfg: RunConfig, records: list[dict[str, Any]], *, writes: bool,
                 has_val: bool, best_by: str | None = "val_balanced", epochs: int | None = None) -> None:
        self.run, self.cfg, self.records, self.writes = run, cfg, records, writes
        self.has_val, self.best_by = has_val, best_by
        self.epochs = cfg.train.epochs if epochs is None else epochs  # the run's last epoch: always checkpointed

    def validates(self, done: int) -> bool:
        every = self.cfg.train.eval_every
        return self.has_val and bool(every) and done % every == 0

    def checkpoints(self, done: int) -> bool:
        return done % max(self.cfg.train.checkpoint_every, 1) == 0 or done == self.epochs

    def wants_model(self, done: int) -> bool:
        """Whether :meth:`end_epoch` of epoch ``done`` will use the model (validation or checkpoint)."""
        return self.validates(done) or self.checkpoints(done)

    def end_epoch(self, row: dict[str, Any], model: torch.nn.Module | None, optimizer: Any,
                  validate: Callable[[], dict[str, Any]] | None = None,
                  extra: Callable[[], dict[str, Any]] | None = None,
                  evaluated: torch.nn.Module | None = None) -> None:
        """Record epoch ``row["epoch"]``: ``validate()`` gives the row's validation fields, ``extra()`` what
        the checkpoint carries besides model and optimizer. ``evaluated``: the network ``validate`` scores when
        not ``model`` (an EMA of its weights, ``optim.ema``): ``best-val.pt`` holds it."""
        done = int(row["epoch"]) + 1
        if validate is not None and self.validates(done):
            scores = validate()
            row.update(scores)
            if self.best_by is not None and self.best_by in scores:
                best = max((r[self.best_by] for r in self.records if self.best_by in r), default=None)
                if self.writes and (best is None or scores[self.best_by] > best):
                    save_checkpoint(self.run.best_val, config=self.cfg, optimizer=None,
                                    model=evaluated if evaluated is not None else model,  # type: ignore[arg-type]
                                    next_epoch=done, records=[])
        self.records.append(row)
        if self.writes:
            self.run.write_metrics(self.records)
            if self.checkpoints(done):
                save_checkpoint(self.run.checkpoint, config=self.cfg, model=model, optimizer=optimizer,  # type: ignore[arg-type]
                                next_epoch=done, records=self.records, extra=extra() if extra else None)
