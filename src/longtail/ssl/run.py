"""``pretrain_run``: self-supervised pre-training of a backbone into a run folder.

The run folder is that of ``longtail train`` (config.json, metrics.jsonl, checkpoints/last.pt,
report.json/.md), resumable the same way. The report evaluates the *representation* on the
test set: the main summary is the class-balanced linear probe on frozen features, with the k-NN
and plain linear probe beside it (and, for rotation, the pretext accuracy, labelled as such). The
probes and the k-NN learn from the long-tailed training set (``ssl.probe_data=longtailed``) or from
the balanced set of the same source (``balanced``: n_max images of every class, the full CIFAR-10
training set for CIFAR-10, as Liu et al. 2022 evaluate); the report says which, and how many images.

Under ``torchrun`` every process trains its share of each batch (DDP; MoCo shuffles its keys across
the processes and keeps one queue of the whole batch's keys), image files are decoded 1/N per
process, and rank 0 alone writes the run folder and evaluates.

Labels: pre-training never reads the training labels, except ``ssl.rw_weights=class`` (rwSAM
with class-frequency weights) and the evaluation, which trains probes on the labelled training
set and reports per class.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, cast

import torch
import torch.nn as nn

from .. import distributed
from ..config import DataConfig, RunConfig, training_differences
from ..data.augment import Augment
from ..data.files import FileImageSet
from ..data.imageset import ImageSet
from ..data.materialize import materialize
from ..data.registry import DATASETS, Splits, load_labeled_splits
from ..devices import use_channels_last
from ..driver import Built, Context, Member, Stage, drive
from ..errors import LongtailError
from ..loop import EpochRecord, extract_features
from ..models import init_from_training_images, make_model
from ..optim import optim_settings
from ..report import summary_table, write_report
from ..runs import EpochLog, RunDir
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
from .tasks import ExampleWeights, MoCoTask, RotationTask, SimSiamTask


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
    if optim_settings(cfg):
        raise LongtailError(f"{', '.join(optim_settings(cfg))} are for supervised training; pre-training's SAM is "
                            "rwSAM (method *-rwsam, ssl.sam_rho, ssl.sam_adaptive)",
                            "leave the optim section at its defaults for `longtail pretrain`")
    if cfg.augment != type(cfg.augment)():  # the pretext tasks have their own views (ssl.*)
        raise LongtailError("the augment section (RandAugment, Cutout, mixup / CutMix) is for supervised and FixMatch "
                            "training; pre-training's views are set by the ssl section (ssl.crop_min_scale, ...)",
                            "leave the augment section at its defaults for `longtail pretrain`")
    torch.manual_seed(cfg.seed)  # model initialisation
    backbone = make_model(cfg.model.arch, 1, in_channels=train.image_shape[0]).backbone
    init_from_training_images(backbone, train, device)  # FastNet's frozen patch whitening, as a run sets it
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

    weights: ExampleWeights | None = None
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
    task.freeze_bn_in_descent = ssl.sam_bn_stats == "first"
    if shard.world > 1 and base != "moco":  # MoCo takes the global batch itself (shuffled keys)
        task = distributed.ShardedTask(task, shard)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer = torch.optim.SGD(trainable, lr=t.lr, momentum=t.momentum,
                                                       weight_decay=t.weight_decay)
    if rwsam:
        optimizer = SAM(optimizer, rho=ssl.sam_rho, adaptive=ssl.sam_adaptive)
        optimizer.add_phase_hook(distributed.unwrap_task(task).set_phase)
    return model, task, optimizer


def balanced_probe_set(data: DataConfig) -> ImageSet:
    """The balanced labelled set of ``data``'s source for ``ssl.probe_data=balanced``: ``n_max`` images of every
    class (the data set's reference n_max unless ``data.n_max`` is set; CIFAR-10: all 50,000 training images,
    CIFAR-100: all 50,000), normalised as the run's training set. Small-image data sets only."""
    if data.dataset not in DATASETS:
        raise LongtailError(f"ssl.probe_data=balanced needs a balanced source, and {data.dataset!r} has none here",
                            f"use it with {', '.join(DATASETS)}, or ssl.probe_data=longtailed")
    split = load_labeled_splits(replace(data, imbalance_ratio=1.0, val_per_class=0, pack=None))
    return cast(ImageSet, split.train)


def _meta(method: str, ssl: SSLConfig) -> dict[str, Any]:
    return {"method": method, "ssl": asdict(ssl)}


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
                 restart: bool = False, probe_set: ImageSet | None = None) -> dict[str, Any]:
    """Pre-train a backbone with ``method`` (``METHODS``) into the run folder ``out``; resumes an existing one
    (``restart``: clears it once the settings and data have been checked). The folder is locked meanwhile.
    ``probe_set``: the labelled set of ``ssl.probe_data=balanced`` (default: :func:`balanced_probe_set`).

    Returns the representation report (``linear_probe_balanced`` summary at the top level, plus
    ``knn``, ``linear_probe``, ``method``, ``ssl`` and, for rotation, ``rotation_test_accuracy``),
    or ``{}`` when ``stop_after`` ended the run early.
    """
    check_method(method)
    stage = PretrainStage(method, cfg, resolve_ssl(method, cfg, ssl), RunDir(out), probe_set=probe_set)
    return drive(stage, splits=splits, command=command, progress=progress, stop_after=stop_after, log=log,
                 restart=restart)


def _backbone(built: Built) -> nn.Module:
    """The backbone of the pre-training model (the model of every method has one)."""
    return cast(nn.Module, built.model.backbone)


class PretrainStage(Stage):
    """Self-supervised pre-training of a backbone (rotation, MoCo v2, SimSiam; re-weighted SAM)."""

    best_by = None  # the k-NN score is logged, no best checkpoint is kept

    def __init__(self, method: str, cfg: RunConfig, ssl: SSLConfig, run: RunDir, *,
                 probe_set: ImageSet | None = None) -> None:
        self.method, self.cfg, self.ssl = method, cfg, ssl
        self.members = [Member(cfg, run)]
        self.probe_set = probe_set
        if ssl.probe_data == "balanced" and probe_set is None and cfg.data.dataset not in DATASETS:
            balanced_probe_set(cfg.data)  # stops with the reason before training, not after

    def _probe_set(self, device: torch.device) -> ImageSet | None:
        """What the probes and the k-NN learn from: None (the long-tailed training set) or the balanced set."""
        if self.ssl.probe_data != "balanced":
            return None
        return (self.probe_set if self.probe_set is not None else balanced_probe_set(self.cfg.data)).to(device)

    def data(self, splits: Splits, device: torch.device, log: Callable[[str], None]) -> Splits:
        if splits.on_files:  # ImageNet-LT, iNaturalist, folders: decode once, then augment on the device
            # on files, every split is image files
            train, test = cast(FileImageSet, splits.train), cast(FileImageSet, splits.test)
            val = cast("FileImageSet | None", splits.val)
            world = distributed.current().world
            log(f"decoding {len(train)} training and {len(test)} test images once "
                f"({train.image_size} px) for pre-training"
                + (f", 1/{world} in each process" if world > 1 else ""))
            splits = Splits(materialize(train, device=device), materialize(test, device=device),
                            materialize(val, device=device) if val is not None else None,
                            val_info=splits.val_info)
        return splits.to(device)

    def build(self, ctx: Context) -> Built:
        train = cast(ImageSet, ctx.splits.train)  # tensors: data() decoded any image files
        side = min(train.image_shape[1:])
        if 0 < self.ssl.probe_test_resize < side:  # stop before training, not at the report
            raise LongtailError(f"ssl.probe_test_resize={self.ssl.probe_test_resize} is smaller than the {side} px "
                                "images: their centre crop would not fit",
                                f"use 0 (the test images as they are) or at least {side}, e.g. "
                                f"{int(side * 8 / 7)} as Liu et al. for 32 px")
        model, task, optimizer = build_pretraining(self.method, self.cfg, self.ssl, train, ctx.device, log=ctx.log)
        # MoCo's queue is the same on every process by construction: no need to broadcast buffers every step.
        return Built(model, task, optimizer, ctx.splits.train.image_shape,
                     broadcast_buffers=not isinstance(model, MoCo))

    def same(self, member: Member) -> Callable[[], bool]:
        run = member.run

        def same() -> bool:
            previous = run.existing_config()
            meta = json.loads(run.config_file.read_text()).get("pretrain") if run.config_file.is_file() else None
            if isinstance(meta, dict) and isinstance(meta.get("ssl"), dict):  # a folder from before a setting existed
                meta = {**meta, "ssl": {**json.loads(json.dumps(asdict(SSLConfig()))), **meta["ssl"]}}
            return not ((previous is not None and bool(training_differences(previous, self.cfg)))
                        or (meta is not None and meta != json.loads(json.dumps(_meta(self.method, self.ssl)))))
        return same

    def write_config(self, member: Member, command: list[str] | None) -> None:
        member.run.create(member.cfg, command, extra={"pretrain": _meta(self.method, self.ssl)})

    def validator(self, built: Built, ctx: Context) -> Callable[[], dict[str, float]]:
        backbone, train, val, t = _backbone(built), ctx.splits.train, ctx.splits.val, self.cfg.train

        def val_knn() -> dict[str, float]:
            probs = knn_probabilities(extract_features(backbone, train, ctx.device, t.amp), train.labels,
                                      extract_features(backbone, val, ctx.device, t.amp), train.num_classes,
                                      k=self.ssl.knn_k, temperature=self.ssl.knn_temperature)
            hits = probs.argmax(1) == val.labels.to(probs.device)  # type: ignore[union-attr]
            return {"val_knn_top1": 100.0 * float(hits.float().mean())}
        return val_knn

    def end_epoch(self, rec: EpochRecord, built: Built, logs: list[EpochLog], ctx: Context) -> None:
        task = distributed.unwrap_task(built.task)
        task.end_epoch()  # MoCo: enqueue the last step's keys before the checkpoint
        row = {**asdict(rec), **task.epoch_metrics()}  # a collective under torchrun
        logs[0].end_epoch(row, built.model, built.optimizer, validate=self.validator(built, ctx),
                          extra=lambda: {"pretrain": _meta(self.method, self.ssl),
                                         "task": task.state_dict()})

    def report(self, built: Built, ctx: Context, timing: dict[str, float], records: list[list[dict[str, Any]]],
               start_epoch: int) -> dict[str, Any]:
        if not ctx.main:  # the representation report is rank 0's (the model is the same on every process)
            return {}
        method, ssl, t, run = self.method, self.ssl, self.cfg.train, self.members[0].run
        # tensors: data() decoded any image files
        train, test = cast(ImageSet, ctx.splits.train), cast(ImageSet, ctx.splits.test)
        backbone, device = _backbone(built), ctx.device
        t_eval = time.perf_counter()
        probe = self._probe_set(device)
        evaluations = representation_report(backbone, train, test, device, amp=t.amp, knn_k=ssl.knn_k,
                                             knn_temperature=ssl.knn_temperature, probe_epochs=ssl.probe_epochs,
                                             probe_lr=ssl.probe_lr, probe_batch_size=ssl.probe_batch_size,
                                             seed=self.cfg.seed, probe_set=probe, probe_schedule=ssl.probe_schedule,
                                             probe_standardize=ssl.probe_standardize,
                                             probe_augment=ssl.probe_augment,
                                             probe_interpolation=ssl.probe_interpolation,
                                             probe_test_resize=ssl.probe_test_resize)
        probe_size = len(train if probe is None else probe)
        probe_text = (f"the long-tailed training set ({probe_size:,} images)" if probe is None else
                      f"the balanced training set of the same source ({probe_size:,} images, "
                      f"{len(probe) // max(1, probe.num_classes):,} a class), not the long-tailed one")
        notes = []
        if ssl.probe_augment:
            bicubic = " (bicubic)" if ssl.probe_interpolation == "bicubic" else ""
            notes.append(f"the probes: of images augmented afresh every epoch, resized crop{bicubic} of 0.8-1 of the "
                         "area and flip, the backbone in eval mode; the k-NN and the test set: un-augmented")
        if ssl.probe_test_resize:
            notes.append(f"the test images resized to {ssl.probe_test_resize} px (bicubic) and centre-cropped back")
        augment_text = f" ({'; '.join(notes)})" if notes else ""
        evaluations = {k: evaluations[k] for k in ("linear_probe_balanced", "linear_probe", "knn")}
        main = evaluations["linear_probe_balanced"]
        extra: dict[str, Any] = {
            "recipe": self.cfg.recipe, "method": method, "epoch": t.epochs, "split": "test", "seed": self.cfg.seed,
            "evaluation": f"linear probe (class-balanced cross-entropy) on frozen backbone features of {probe_text}"
                          f"{augment_text}",
            "probe_data": ssl.probe_data, "probe_train_size": probe_size, "probe_augment": ssl.probe_augment,
            "probe_interpolation": ssl.probe_interpolation, "probe_test_resize": ssl.probe_test_resize,
            "knn_top1": evaluations["knn"]["top1"], "linear_probe_top1": evaluations["linear_probe"]["top1"],
            "knn": evaluations["knn"], "linear_probe": evaluations["linear_probe"],
            "ssl": asdict(ssl), "config": self.cfg.to_dict(), "device": str(device), "train_size": len(train),
            "test_size": len(test), "timing": dict(timing),
        }
        extra_lines = [f"Probe data: the k-NN and the linear probes learn from {probe_text} "
                       f"(`ssl.probe_data={ssl.probe_data}`); the test set is the balanced test set.", ""]
        if ssl.probe_augment:
            extra_lines += ["Probe augmentation (`ssl.probe_augment=true`, as Liu et al.'s main_lincls.py): every "
                            "probe epoch trains on the frozen backbone's features (eval mode) of freshly augmented "
                            f"images, a resized crop of 0.8-1 of the area (`ssl.probe_interpolation="
                            f"{ssl.probe_interpolation}`) and a horizontal flip; the k-NN and the test set use "
                            "un-augmented images.", ""]
        if ssl.probe_test_resize:
            extra_lines += [f"Test images (`ssl.probe_test_resize={ssl.probe_test_resize}`, as main_lincls.py's "
                            "Resize + CenterCrop): the k-NN and the probes score the test images resized bicubically "
                            f"to {ssl.probe_test_resize} px on the shorter side and centre-cropped back to their "
                            "size; the k-NN's training images are as they are.", ""]
        if method == "rotation":
            acc = rotation_accuracy(built.model, test, device, t.amp)
            extra["rotation_test_accuracy"] = acc
            extra_lines += [f"Rotation prediction accuracy (the 4-way pretext task, not classification), test images "
                           f"in all four rotations: {acc:.2f} %", ""]
        extra["timing"]["eval_s"] = time.perf_counter() - t_eval
        title = (f"{self.cfg.recipe}: {method} pre-training (seed {self.cfg.seed}, last epoch, frozen features, "
                 "test set)")
        # the k-NN and plain-probe scores are in the table above the detail of the class-balanced probe
        write_report(run.root, main, title=title, extra=extra, hide=("knn_top1", "linear_probe_top1"))
        # Put the comparison of the three evaluations in front of write_report's page for the main one.
        page = (run.root / "report.md").read_text()
        body = page.split("\n", 1)[1] if page.startswith("# ") else page
        atomic_write_text(run.root / "report.md", _report_markdown(title, method, evaluations, extra_lines)
                          + "\n## The class-balanced linear probe in detail\n" + body)
        return {**main, **extra}
