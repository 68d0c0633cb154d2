"""``pretrain_run``: self-supervised pre-training of a backbone into a run folder.

The run folder is that of ``longtail train`` (config.json, metrics.jsonl, checkpoints/last.pt,
report.json/.md), resumable the same way. The report evaluates the *representation* on the
test set: the main summary is the class-balanced linear probe on frozen features, with the k-NN
and plain linear probe beside it (and, for rotation, the pretext accuracy, labelled as such).

Under ``torchrun`` every process trains its share of each batch (DDP; MoCo shuffles its keys across
the processes and keeps one queue of the whole batch's keys), image files are decoded 1/N per
process, and rank 0 alone writes the run folder and evaluates.

Labels: pre-training never reads the training labels, except ``ssl.rw_weights=class`` (rwSAM
with class-frequency weights) and the evaluation, which trains probes on the labelled training
set and reports per class.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .. import __version__, distributed
from ..checkpoints import load_model_state
from ..config import RunConfig
from ..data.augment import Augment
from ..data.imageset import ImageSet
from ..data.materialize import materialize
from ..data.registry import Splits
from ..data.semi import load_splits
from ..devices import use_channels_last
from ..distributed import start_process
from ..errors import LongtailError
from ..graphs import training_engine
from ..loop import EpochLines, EpochRecord, announces, extract_features, fit
from ..models import make_model
from ..report import summary_table, write_report
from ..runs import EpochLog, RunDir, clear_run_folder, require_run_folder, resume_or_start
from ..schedule import lr_function
from ..storage import atomic_write_text
from .augment import TwoViewAugment
from .config import SSLConfig, check_method, default_ssl
from .evaluate import (
    knn_probabilities,
    representation_report,
    rotation_accuracy,
)
from .models import MoCo, SimSiam, rotation_model
from .reweight import ClassFrequencyWeights, KDEWeights
from .sam import SAM
from .tasks import MoCoTask, RotationTask, SimSiamTask


def resolve_ssl(method: str, cfg: RunConfig, ssl: SSLConfig | None) -> SSLConfig:
    """Explicit settings, else ``cfg.ssl`` (when RunConfig has that section), else the data set's defaults."""
    if ssl is not None:
        return ssl
    from_cfg = getattr(cfg, "ssl", None)
    return from_cfg if isinstance(from_cfg, SSLConfig) else default_ssl(method, cfg.data.dataset)


def build_pretraining(method: str, cfg: RunConfig, ssl: SSLConfig, train: ImageSet, device: torch.device,
                      log: Callable[[str], None] = print) -> tuple[nn.Module, Any, torch.optim.Optimizer]:
    """(model, task, optimizer) of ``method``; the model is on ``device`` and seeded by ``cfg.seed``.

    Under ``torchrun`` the task is this process's share of every global batch (MoCo: its queries and
    shuffled keys; rotation and SimSiam: rows ``rank::world``) and SimSiam's BatchNorm layers are
    synchronised on GPUs (``ssl.simsiam_sync_bn``). The model is returned unwrapped: wrap it with
    ``longtail.distributed.wrap`` for training.
    """
    check_method(method)
    t = cfg.train
    if t.sampler != "instance" or t.weighting != "none" or t.drw_start is not None:
        raise LongtailError(f"self-supervised pre-training reads no labels, but the config asks for sampler "
                            f"{t.sampler!r} / weighting {t.weighting!r}",
                            "use train.sampler=instance and train.weighting=none for pre-training")
    if t.compile != "off":
        raise LongtailError(f"train.compile={t.compile} is for supervised training; pre-training runs eagerly",
                            "leave train.compile=off for `longtail pretrain`")
    torch.manual_seed(cfg.seed)  # model initialisation
    backbone = make_model(cfg.model.arch, 1, in_channels=train.image_shape[0]).backbone
    base, rwsam = method.split("-")[0], method.endswith("-rwsam")
    model: nn.Module
    if base == "rotation":
        model = rotation_model(backbone)
    elif base == "moco":
        model = MoCo(backbone, dim=ssl.moco_dim, hidden=ssl.moco_hidden, queue_size=ssl.moco_queue,
                     momentum=ssl.moco_momentum, temperature=ssl.moco_temperature, bn_splits=ssl.moco_bn_splits)
    else:
        model = SimSiam(backbone, dim=ssl.simsiam_dim, pred_hidden=ssl.simsiam_pred_hidden,
                        proj_layers=ssl.simsiam_proj_layers)
    shard = distributed.current()
    if base == "simsiam" and shard.world > 1 and ssl.simsiam_sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log("SimSiam: SyncBatchNorm needs GPUs; on the CPU each process normalises its own rows")
    model = model.to(device)
    if use_channels_last(t.channels_last):
        model = model.to(memory_format=torch.channels_last)

    weights = None
    if rwsam and ssl.rw_weights == "kde":
        weights = KDEWeights(backbone, train, device, amp=t.amp, every=ssl.rw_every, bandwidth=ssl.kde_bandwidth,
                             power=ssl.rw_power, max_weight=ssl.rw_max_weight)
    elif rwsam and ssl.rw_weights == "class":
        weights = ClassFrequencyWeights(train.labels, train.class_counts(), power=ssl.rw_power,
                                        max_weight=ssl.rw_max_weight)
    task: Any
    if base == "rotation":
        task = RotationTask(train, batch_size=t.batch_size, augment=Augment(crop_padding=t.crop_padding, flip=t.flip),
                            mode=ssl.rotations, example_weights=weights)
    else:
        aug = TwoViewAugment.from_config(ssl, min(train.image_shape[1:]))
        if base == "moco":
            task = MoCoTask(train, batch_size=t.batch_size, augment=aug, example_weights=weights, shard=shard)
        else:
            task = SimSiamTask(train, batch_size=t.batch_size, augment=aug, example_weights=weights)
    if shard.world > 1 and base != "moco":  # MoCo takes the global batch itself (shuffled keys)
        task = distributed.ShardedTask(task, shard)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer = torch.optim.SGD(trainable, lr=t.lr, momentum=t.momentum,
                                                       weight_decay=t.weight_decay)
    if rwsam:
        optimizer = SAM(optimizer, rho=ssl.sam_rho, adaptive=ssl.sam_adaptive)
        optimizer.add_phase_hook(task.set_phase)
    return model, task, optimizer


def _meta(method: str, ssl: SSLConfig) -> dict[str, Any]:
    return {"method": method, "ssl": asdict(ssl)}


def _write_config(run: RunDir, cfg: RunConfig, method: str, ssl: SSLConfig, command: list[str] | None) -> None:
    run.root.mkdir(parents=True, exist_ok=True)
    meta = {"config": cfg.to_dict(), "pretrain": _meta(method, ssl),
            "command": command if command is not None else sys.argv,
            "longtail_version": __version__, "torch_version": torch.__version__}
    atomic_write_text(run.config_file, json.dumps(meta, indent=2) + "\n")


def _previous_meta(run: RunDir) -> dict[str, Any] | None:
    if not run.config_file.is_file():
        return None
    return json.loads(run.config_file.read_text()).get("pretrain")


def _report_markdown(title: str, method: str, evaluations: dict[str, dict[str, Any]], extra_lines: list[str]) -> str:
    labels = {"linear_probe_balanced": "linear probe, class-balanced CE (main)",
              "linear_probe": "linear probe, plain CE", "knn": "k-NN (cosine, weighted)"}
    rows = [(labels[k], v) for k, v in evaluations.items()]
    return "\n".join([f"# {title}", "", f"Self-supervised pre-training ({method}). The backbone is frozen; "
                      "these are representation-quality numbers on the balanced test set (top-1 %), with the "
                      "shot groups of the long-tailed training set.", "", summary_table(rows), ""] + extra_lines)


def pretrain_run(method: str, cfg: RunConfig, out: str | Path, *, ssl: SSLConfig | None = None,
                 splits: Splits | None = None, command: list[str] | None = None, progress: bool | None = None,
                 stop_after: int | None = None, log: Callable[[str], None] = print,
                 restart: bool = False) -> dict[str, Any]:
    """Pre-train a backbone with ``method`` (``METHODS``) into the run folder ``out``; resumes an existing one
    (``restart``: clears it once the settings and data have been checked). The folder is locked meanwhile.

    Returns the representation report (``linear_probe_balanced`` summary at the top level, plus
    ``knn``, ``linear_probe``, ``method``, ``ssl`` and, for rotation, ``rotation_test_accuracy``),
    or ``{}`` when ``stop_after`` ended the run early.
    """
    check_method(method)
    ssl = resolve_ssl(method, cfg, ssl)
    run = RunDir(out)
    with run.lock(log) if distributed.launch_rank() == 0 else contextlib.nullcontext():
        require_run_folder(run.root)
        return _pretrain_run(method, cfg, run, ssl, splits=splits, command=command, progress=progress,
                             stop_after=stop_after, log=log, restart=restart)


def _pretrain_run(method: str, cfg: RunConfig, run: RunDir, ssl: SSLConfig, *, splits: Splits | None,
                  command: list[str] | None, progress: bool | None, stop_after: int | None,
                  log: Callable[[str], None], restart: bool) -> dict[str, Any]:
    device, main, log, progress = start_process(cfg.train.device, log, progress)
    t = cfg.train
    with distributed.main_first():
        splits = splits or load_splits(cfg.data)
    if splits.on_files:  # ImageNet-LT, iNaturalist, folders: decode once, then augment on the device

        log(f"decoding {len(splits.train)} training and {len(splits.test)} test images once "
            f"({splits.train.image_size} px) for pre-training"
            + (f", 1/{distributed.current().world} in each process" if distributed.current().world > 1 else ""))
        splits = Splits(materialize(splits.train, device=device), materialize(splits.test, device=device),
                        materialize(splits.val, device=device) if splits.val is not None else None)
    splits = splits.to(device)
    train, test = splits.train, splits.test
    model, task, optimizer = build_pretraining(method, cfg, ssl, train, device, log=log)
    backbone = model.backbone

    start_epoch, records = 0, []
    if main:
        if restart:  # settings and data are checked by now
            clear_run_folder(run.root)
        run.clean()
    distributed.barrier()

    def same() -> bool:
        previous, prev_meta = run.existing_config(), _previous_meta(run)
        return not ((previous is not None and previous != cfg) or (prev_meta is not None and prev_meta != json.loads(
            json.dumps(_meta(method, ssl)))))

    state = resume_or_start(run, cfg, log=log, same=same)
    if state is not None:
        load_model_state(model, state["model"], str(run.checkpoint))
        optimizer.load_state_dict(state["optimizer"])
        task.load_state_dict(state.get("extra", {}).get("task", {}))
        start_epoch, records = state["next_epoch"], list(state["records"])
        log(f"resuming {run.root} from epoch {start_epoch}/{t.epochs}")
    if main:
        _write_config(run, cfg, method, ssl, command)
    # MoCo's queue is the same on every process by construction: no need to broadcast buffers every step.
    train_model = distributed.wrap(model, device, broadcast_buffers=not isinstance(model, MoCo))

    epochs = EpochLog(run, cfg, records, writes=main, has_val=splits.val is not None, best_by=None)

    def val_knn() -> dict[str, float]:
        probs = knn_probabilities(extract_features(backbone, train, device, t.amp), train.labels,
                                  extract_features(backbone, splits.val, device, t.amp), train.num_classes,
                                  k=ssl.knn_k, temperature=ssl.knn_temperature)
        return {"val_knn_top1": 100.0 * float((probs.argmax(1) == splits.val.labels.to(probs.device)).float().mean())}

    lines = EpochLines(t.epochs, t.batch_size, start_epoch, log) if announces(progress, main) else None

    def on_epoch_end(rec: EpochRecord) -> bool:
        task.end_epoch()  # MoCo: enqueue the last step's keys before the checkpoint
        row = {**asdict(rec), **task.epoch_metrics()}  # a collective under torchrun: every process calls it
        epochs.end_epoch(row, model, optimizer, validate=val_knn,
                         extra=lambda: {"pretrain": _meta(method, ssl), "task": task.state_dict()})
        if lines is not None:
            lines(rec)
        return stop_after is not None and len(records) - start_epoch >= stop_after

    t_train = time.perf_counter()
    fit(train_model, task, optimizer, epochs=t.epochs, lr_at=lr_function(cfg), seed=cfg.seed, device=device,
        amp=t.amp, start_epoch=start_epoch, on_epoch_end=on_epoch_end, progress=progress,
        engine=training_engine(t.engine, t.compile, device))
    train_s = time.perf_counter() - t_train
    distributed.barrier()  # rank 0's checkpoint is on disk before anyone returns
    if stop_after is not None and len(records) < t.epochs:
        return {}
    if not main:  # the representation report is rank 0's (the model is the same on every process)
        return {}

    t_eval = time.perf_counter()
    evaluations = representation_report(backbone, train, test, device, amp=t.amp, knn_k=ssl.knn_k,
                                         knn_temperature=ssl.knn_temperature, probe_epochs=ssl.probe_epochs,
                                         probe_lr=ssl.probe_lr, probe_batch_size=ssl.probe_batch_size, seed=cfg.seed)
    evaluations = {k: evaluations[k] for k in ("linear_probe_balanced", "linear_probe", "knn")}
    main = evaluations["linear_probe_balanced"]
    extra: dict[str, Any] = {
        "recipe": cfg.recipe, "method": method, "epoch": t.epochs, "split": "test", "seed": cfg.seed,
        "evaluation": "linear probe (class-balanced cross-entropy) on frozen backbone features",
        "knn_top1": evaluations["knn"]["top1"], "linear_probe_top1": evaluations["linear_probe"]["top1"],
        "knn": evaluations["knn"], "linear_probe": evaluations["linear_probe"],
        "ssl": asdict(ssl), "config": cfg.to_dict(), "device": str(device), "train_size": len(train),
        "test_size": len(test), "timing": {"train_s": train_s, "eval_s": 0.0},
    }
    extra_lines = []
    if method == "rotation":
        acc = rotation_accuracy(model, test, device, t.amp)
        extra["rotation_test_accuracy"] = acc
        extra_lines = [f"Rotation prediction accuracy (the 4-way pretext task, not classification), test images "
                       f"in all four rotations: {acc:.2f} %", ""]
    extra["timing"]["eval_s"] = time.perf_counter() - t_eval
    title = f"{cfg.recipe}: {method} pre-training (seed {cfg.seed}, last epoch, frozen features, test set)"
    write_report(run.root, main, title=title, extra=extra)
    # Put the comparison of the three evaluations in front of write_report's page for the main one.
    page = (run.root / "report.md").read_text()
    body = page.split("\n", 1)[1] if page.startswith("# ") else page
    atomic_write_text(run.root / "report.md", _report_markdown(title, method, evaluations, extra_lines)
                      + "\n## Class-balanced linear probe in detail\n" + body)
    return {**main, **extra}
