"""Pseudo-labelling: a trained run's model labels an unlabeled pool (Yang & Xu, NeurIPS 2020).

``longtail pseudo-label RUN --pool SPEC --out DIR`` (:func:`pseudo_label_run`) writes the folder that
:mod:`longtail.data.pseudo_labels` describes; training reads it with ``--set data.pseudo_labels=DIR``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from ..checkpoints import load_checkpoint, model_from_checkpoint, resolve_checkpoint
from ..config import RunConfig
from ..data.augment import Batch, normalize
from ..data.pools import UnlabeledSet
from ..data.pseudo_labels import (
    PseudoLabels,
    parse_pool_spec,
    pseudo_label_report,
    save_pseudo_labels,
)
from ..data.semi import build_pool
from ..devices import resolve_device
from ..errors import LongtailError
from ..loop import predict
from ..storage import check_writable_dir


def _pool_batches(pool: UnlabeledSet, device: torch.device, batch_size: int) -> Iterator[Batch]:
    # Moved to the device one batch at a time: a large pool need not fit there whole.
    dummy = torch.zeros(0, dtype=torch.long)
    for start in range(0, len(pool), batch_size):
        x = pool.images[start:start + batch_size].to(device)
        idx = torch.arange(start, start + x.shape[0])
        yield Batch(normalize(x, pool.mean, pool.std), dummy.new_zeros(x.shape[0]).to(device), idx)


def pseudo_label(model: nn.Module, pool: UnlabeledSet, device: torch.device | str, *, threshold: float = 0.0,
                 batch_size: int = 512, amp: str = "off") -> PseudoLabels:
    """Label every row of ``pool`` by the model's argmax (eval mode, no augmentation)."""
    device = torch.device(device)
    model = model.to(device)
    if len(pool) == 0:
        empty = torch.zeros(0)
        return PseudoLabels(empty.long(), empty, pool.source_index.cpu(), threshold)  # type: ignore[union-attr]
    logits, _ = predict(model, _pool_batches(pool, device, batch_size), device, amp)  # (N, C) float32, CPU
    if logits.shape[1] != pool.num_classes:
        raise LongtailError(f"the model has {logits.shape[1]} outputs "
                            f"but the pool's data set {pool.num_classes} classes",
                            "pseudo-label with a model trained on the same classes")
    confidence, labels = logits.softmax(dim=1).max(dim=1)
    return PseudoLabels(labels, confidence, pool.source_index.cpu(), float(threshold))  # type: ignore[union-attr]


def pseudo_label_run(run: str | Path, pool_spec: dict[str, Any] | str, out: str | Path, *, threshold: float = 0.0,
                     device: str = "auto", data_root: str | None = None, batch_size: int = 512,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Label the pool ``pool_spec`` describes with a trained run's model and save it into ``out``.

    ``run``: a run folder or checkpoint. Returns ``{"out", "pool", "report"}``.
    """
    spec = parse_pool_spec(pool_spec) if isinstance(pool_spec, str) else dict(pool_spec)
    check_writable_dir(out)  # before the work, not after it
    ckpt = resolve_checkpoint(run)
    state = load_checkpoint(ckpt)
    cfg = RunConfig.from_dict(state["config"])
    data = replace(cfg.data, pseudo_labels=None)  # the labeled data the run was trained on, never its pseudo-labels
    if data_root is not None:
        data = replace(data, root=data_root)
    dev = resolve_device(device)
    pool, resolved = build_pool(spec, data, log=log)
    if cfg.data.pseudo_labels and spec["kind"] != "folder":
        # a retrained run: its own pseudo-labeled images are not "unused", but build_pool only knows the labeled part
        log(f"note: {ckpt} was itself trained with pseudo-labels from {cfg.data.pseudo_labels}")
    resolved.update(run=str(ckpt), threshold=float(threshold))
    model = model_from_checkpoint(state, pool.num_classes, pool.image_shape[0], str(ckpt))
    pl = pseudo_label(model, pool, dev, threshold=threshold, batch_size=batch_size, amp=cfg.train.amp)
    report = pseudo_label_report(pl, pool)
    save_pseudo_labels(out, pl, resolved, report, class_names=pool.class_names, files=pool.files)
    acc = "" if report["accuracy"] is None else f", accuracy {100 * report['accuracy']:.1f} %"
    log(f"pseudo-labeled {len(pool)} images, kept {report['kept']}{acc}: {Path(out) / 'pseudo_labels.md'}")
    return {"out": str(out), "pool": resolved, "report": report}
