"""TensorBoard event files of a run (``train.tensorboard``), written by rank 0 under ``RUN/tensorboard/``.

Per epoch (the global step is the number of epochs done, 1 for the first): ``train/loss``, ``train/lr``,
``train/images_per_s``, ``train/seconds``, each other numeric field of the epoch's row under ``train/``
(e.g. a pre-training task's own means) and the validation scores under ``val/`` when the epoch has them
(``val_top1`` -> ``val/top1``, ``val_balanced``, ``val_knn_top1``, ...). At the end of a run, at the step of
its last epoch: the test scores under ``test/`` (``top1``, ``balanced_accuracy``, ``many``, ``medium``,
``few``, ...), each class's accuracy as ``test/per_class/<class name>``, and the run's
``per_class_accuracy.png`` as the image ``test/per_class_accuracy``.

A resumed run purges what the folder's event files hold from the checkpoint's epoch on (TensorBoard's
``purge_step``) and writes that epoch's row again, so an epoch logged after the last checkpoint and
trained again appears once. Stacked seeds write one such folder per seed. ``tensorboard`` itself is an
optional extra (``pip install -e '.[tensorboard]'``) and is imported only when a run asks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .errors import LongtailError

INSTALL_FIX = ("install it: pip install -e '.[tensorboard]' (or pip install 'tensorboard>=2.10'), "
               "or turn it off: --set train.tensorboard=false")
#: Final test scores written as ``test/<key>`` when the report has them (pre-training adds its own).
TEST_KEYS = ("top1", "balanced_accuracy", "many", "medium", "few", "nll", "ece",
             "knn_top1", "linear_probe_top1", "rotation_test_accuracy")
_NOT_SCALARS = {"epoch", "steps", "capture_s", "train_loss", "lr", "seconds"}  # the step, or written by name


def summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``; a ``LongtailError`` naming the install when TensorBoard is absent."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise LongtailError(f"train.tensorboard is on, and TensorBoard cannot be imported ({e})", INSTALL_FIX) from e
    return SummaryWriter


def require() -> None:
    """Stop before a run starts when ``train.tensorboard`` is on and the ``tensorboard`` package is missing."""
    summary_writer_class()


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a plain number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def epoch_scalars(row: dict[str, Any], batch_size: int) -> dict[str, float]:
    """The scalars of one epoch's row (``metrics.jsonl``): tag -> value."""
    out = {"train/loss": float(row["train_loss"]), "train/lr": float(row["lr"]),
           "train/seconds": float(row["seconds"])}
    if row.get("steps") is not None:
        out["train/images_per_s"] = row["steps"] * batch_size / max(float(row["seconds"]), 1e-9)
    for key, value in row.items():
        number = _number(value)
        if key in _NOT_SCALARS or number is None:
            continue
        out[f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"] = number
    return out


def final_scalars(result: dict[str, Any]) -> dict[str, float]:
    """The scalars of a run's final report: its test scores and each class's accuracy."""
    out = {}
    for key in TEST_KEYS:
        number = _number(result.get(key))
        if number is not None:
            out[f"test/{key}"] = number
    per_class: Sequence[Any] = result.get("per_class") or []
    names = result.get("class_names")
    width = len(str(len(per_class) - 1))
    for c, acc in enumerate(per_class):
        number = _number(acc)
        if number is None:  # a class absent from the test set
            continue
        name = str(names[c]) if names else f"{c:0{width}d}"  # zero-padded: TensorBoard sorts tags as text
        out[f"test/per_class/{name}"] = number
    return out


def read_png(path: Path) -> Any:
    """The image at ``path`` as a uint8 array, height x width x 3 (RGB)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


class TensorBoardLog:
    """The event files of one or several run folders (``longtail.runs.RunDir``; stacked seeds: one per
    seed), indexed like the driver's members. ``start_epoch``: the epoch a resumed run restarts at (0: a
    fresh run); ``resumed_rows``: each member's rows restored from its checkpoint."""

    def __init__(self, runs: Sequence[Any], batch_sizes: Sequence[int], *, start_epoch: int = 0,
                 resumed_rows: Sequence[Sequence[dict[str, Any]]] | None = None) -> None:
        writer = summary_writer_class()
        self.runs = list(runs)
        self.batch_sizes = list(batch_sizes)
        # Events at steps >= start_epoch from an earlier session are purged; the checkpoint's own epoch
        # (step start_epoch) is written again from its row.
        self.writers = [writer(log_dir=str(r.tensorboard), purge_step=start_epoch) for r in self.runs]
        for i, rows in enumerate(resumed_rows or []):
            if start_epoch > 0 and len(rows) >= start_epoch:
                self.epoch(i, rows[start_epoch - 1])

    def epoch(self, member: int, row: dict[str, Any]) -> None:
        """Write epoch ``row["epoch"]``'s scalars (step: epochs done)."""
        step = int(row["epoch"]) + 1
        w = self.writers[member]
        for tag, value in epoch_scalars(row, self.batch_sizes[member]).items():
            w.add_scalar(tag, value, step)
        w.flush()

    def final(self, member: int, result: dict[str, Any], step: int) -> None:
        """Write the final report ``result`` (a test summary with its context) at ``step`` (the last epoch),
        and the run folder's per-class plot when it is there."""
        if not result:  # a process that wrote no report
            return
        w = self.writers[member]
        for tag, value in final_scalars(result).items():
            w.add_scalar(tag, value, step)
        plot = self.runs[member].plot
        if plot.is_file():
            w.add_image("test/per_class_accuracy", read_png(plot), step, dataformats="HWC")
        w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()
