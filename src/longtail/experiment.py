"""From a ``RunConfig`` to a trained, evaluated and reported run.

This module composes the pieces (data, model, loss, sampler, weighting, task, loop, reports);
it holds no method-specific logic of its own.

The same functions run in one process or in each of the processes that ``torchrun`` starts
(:mod:`longtail.distributed`): training is data-parallel, evaluation is sharded and gathered, and
rank 0 alone writes the run folder. Image-file data sets (:mod:`longtail.data.files`) train through
a :class:`~longtail.data.loader.LoaderTask` and are evaluated through DataLoader workers.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from . import distributed
from .checkpoints import (
    evaluated_weights,
    load_checkpoint,
    load_model_state,
    load_pretrained_backbone,
    model_from_checkpoint,
    refuse_pretraining,
    resolve_checkpoint,
    run_root,
)
from .config import RunConfig
from .counts import ClassCounts
from .data.augment import Augment, eval_batches, iterate_batches
from .data.files import FileImageSet
from .data.imageset import ImageSet
from .data.loader import LoaderTask, predict_files
from .data.mix import Mix
from .data.registry import Splits
from .data.semi import load_splits
from .devices import resolve_device, use_channels_last
from .driver import Built, Context, Member, Stage, drive
from .errors import LongtailError
from .glmc import glmc_task
from .loop import predict
from .losses import loss_from_config
from .metrics import summarize
from .mfw import MFWTask
from .models import Classifier, build_model, init_from_training_images, tta_model
from .models.wrappers import FrozenBackbone
from .optim import make_optimizer
from .report import write_report
from .runs import RunDir
from .samplers import make_sampler
from .semi.acr import ACRTask, acr_settings, check_acr, pool_labeled_rows
from .semi.fixmatch import FixMatchTask
from .semi.task import SemiSupervisedTask
from .storage import check_writable_dir
from .tasks import SupervisedTask, Task
from .weights import weighting_from_config


def build_task(cfg: RunConfig, train, counts: ClassCounts, splits: Splits | None = None) -> Task:
    """The task of a run: supervised (optionally with major feature weakening), supervised on labeled +
    pseudo-labeled data, or FixMatch consistency training on an unlabeled pool; adapted to image files
    and to several processes by :func:`adapt_task`."""
    return adapt_task(_base_task(cfg, train, counts, splits))


def adapt_task(task: Task) -> Task:
    """``task`` as it runs here: batches decoded from files (``LoaderTask``) when its training set is a
    ``FileImageSet``; each process's rows of every batch (``ShardedTask``) under ``torchrun``."""

    shard = distributed.current()
    name = type(task).__name__
    if shard.world > 1 and not task.multi_process:
        raise LongtailError(f"{name} is not supported with several processes",
                            "train it in one process (python -m longtail, not torchrun)")
    if isinstance(getattr(task, "train", None), FileImageSet):
        if not task.image_files:
            raise LongtailError(f"{name} is not supported with image files", "use a supervised recipe")

        return LoaderTask(task, shard=shard)
    if shard.world > 1:
        return distributed.ShardedTask(task, shard)
    return task


def _base_task(cfg: RunConfig, train, counts: ClassCounts, splits: Splits | None = None) -> Task:
    t = cfg.train
    # what every task below takes
    batch_size = t.batch_size
    weak = Augment(crop_padding=t.crop_padding, flip=t.flip, padding_mode=cfg.augment.crop_padding_mode)
    augment, mix = augment_from_config(cfg, train)  # crop + flip + RandAugment + Cutout; mixup / CutMix
    sampler = make_sampler(t.sampler, train.labels, train.num_classes, beta=t.cb_beta)
    weighting = weighting_from_config(t, counts)
    criterion = loss_from_config(cfg.loss, counts)
    is_pseudo = getattr(splits, "is_pseudo", None)
    if t.task == "glmc":  # GLMC (longtail.glmc): two heads, mixed views of re-sampled partners, its own loss
        return glmc_task(cfg, train, counts, splits, augment=augment, sampler=sampler)
    sm = cfg.semi
    if sm.method == "acr":  # ACR (longtail.semi.acr): two heads, adaptively logit-adjusted consistency
        unlabeled = getattr(splits, "unlabeled", None)
        if unlabeled is None:
            raise LongtailError("ACR needs unlabeled images", "use data.protocol=darp or data.unlabeled_pool=SPEC")
        check_acr(cfg)
        if not isinstance(train, ImageSet):
            raise LongtailError(f"ACR draws its views from images held in memory; the image files of "
                                f"data.dataset={cfg.data.dataset} are decoded per batch",
                                "use cifar10, cifar100 or svhn")
        # their pool holds the labeled images too (marked -2: left out of the estimate)
        marks = (pool_labeled_rows(train, unlabeled)
                 if cfg.data.protocol == "darp" and cfg.data.darp_include_labeled else None)
        if sm.acr_steps_per_epoch == 0:  # an epoch is one pass of whole batches over the labeled set
            sm = replace(sm, acr_steps_per_epoch=max(1, len(train) // batch_size))
        return ACRTask(train, unlabeled, batch_size=batch_size, mu=sm.mu, threshold=sm.threshold,
                       settings=acr_settings(sm), weak=weak, strong=augment if cfg.augment.randaugment else None,
                       pool_labeled=marks)
    if sm.method == "fixmatch":
        unlabeled = getattr(splits, "unlabeled", None)
        if unlabeled is None:
            raise LongtailError("FixMatch needs unlabeled images", "use data.protocol=darp or data.unlabeled_pool=SPEC")
        # FixMatch's labeled batch and weak view are crop + flip; augment.* set the strong view's policy
        strong = augment if cfg.augment.randaugment else None
        return FixMatchTask(train, unlabeled, criterion, mu=sm.mu, full_batches=sm.full_batches,
                            threshold=sm.threshold, lambda_u=sm.lambda_u,
                            alignment=sm.alignment, la_tau=sm.la_tau, batch_size=batch_size,
                            augment=weak, strong=strong, sampler=sampler, weighting=weighting)
    if sm.method != "none":
        raise LongtailError(f"unknown semi.method {sm.method!r}", "use none, fixmatch or acr")
    if is_pseudo is not None:
        if mix is not None:
            raise LongtailError(f"augment.mix={cfg.augment.mix} with pseudo-labels is not supported",
                                "set --set augment.mix=none, or train without data.pseudo_labels")
        if cfg.mfw.strength > 0:
            raise LongtailError("major feature weakening with pseudo-labels is not supported",
                                "set mfw.strength=0 for semi-supervised runs")

        return SemiSupervisedTask(train, criterion, is_pseudo=is_pseudo, pseudo_weight=sm.pseudo_weight,
                                  labeled_fraction=sm.labeled_fraction, batch_size=batch_size, augment=augment,
                                  sampler=sampler, weighting=weighting)
    if sm.pseudo_weight != 1.0 or sm.labeled_fraction is not None:
        raise LongtailError("semi.pseudo_weight and semi.labeled_fraction need pseudo-labels",
                            "set data.pseudo_labels=DIR (written by `longtail pseudo-label`)")
    if cfg.mfw.strength > 0:
        if mix is not None:
            raise LongtailError(f"augment.mix={cfg.augment.mix} with major feature weakening is not supported "
                                "(both mix within the batch)",
                                "set --set augment.mix=none, or mfw.strength=0")
        return MFWTask(train, criterion, counts=counts, strength=cfg.mfw.strength, lam_min=cfg.mfw.lam_min,
                       seed=cfg.seed, batch_size=batch_size, augment=augment, sampler=sampler, weighting=weighting)
    return SupervisedTask(train, criterion, batch_size=batch_size, augment=augment, sampler=sampler,
                          weighting=weighting, mix=mix)


def augment_from_config(cfg: RunConfig, train) -> tuple[Augment, Mix | None]:
    """The training augmentation of ``cfg`` (crop and flip, then ``augment.autoaugment``, ``augment.randaugment``
    and ``augment.cutout`` of ``augment.policy`` or ``augment.cutout_policy``) and its mixing (``augment.mix``,
    None when off), refusing what the run cannot do.

    On a FixMatch run (``semi.method=fixmatch``) ``augment.*`` describe the strong view (FixMatch's
    RandAugment + Cutout); without ``augment.randaugment`` the strong view stays the simplified one
    (:func:`longtail.semi.fixmatch.strong_augment`), so ``augment.cutout`` alone is refused there, and
    ``augment.autoaugment`` is refused on FixMatch and ACR runs.
    """
    t, a = cfg.train, cfg.augment
    augment = Augment(crop_padding=t.crop_padding, flip=t.flip, randaugment=a.randaugment,
                      randaugment_magnitude=a.randaugment_magnitude, cutout=a.cutout, policy=a.policy,
                      padding_mode=a.crop_padding_mode, autoaugment=a.autoaugment, cutout_policy=a.cutout_policy,
                      flip_mode=a.flip_mode, flip_salt=cfg.seed, low_res=a.low_res,
                      low_res_epochs=int(a.low_res_share * t.epochs + 0.5) if a.low_res else 0)  # halves up
    mix = Mix(a.mix, alpha=a.mix_alpha, prob=a.mix_prob) if a.mix != "none" else None
    if isinstance(train, FileImageSet) and (a.randaugment or a.cutout or a.autoaugment != "none"):
        raise LongtailError("augment.autoaugment, augment.randaugment and augment.cutout are batched tensor "
                            "operations on images held in memory; the image files of "
                            f"data.dataset={cfg.data.dataset} are augmented as they are decoded, by DataLoader "
                            "workers", "set --set augment.autoaugment=none --set augment.randaugment=0 --set "
                            "augment.cutout=0 (augment.mix works on image files)")
    if a.flip_mode == "alternating" and isinstance(train, FileImageSet):
        raise LongtailError(f"augment.flip_mode=alternating mirrors images held in memory by their row; the image "
                            f"files of data.dataset={cfg.data.dataset} are flipped as they are decoded, at random",
                            "set --set augment.flip_mode=random")
    if a.low_res and isinstance(train, FileImageSet):
        raise LongtailError(f"augment.low_res={a.low_res} scales images held in memory; the image files of "
                            f"data.dataset={cfg.data.dataset} are cropped to data.image_size as they are decoded",
                            "set --set augment.low_res=0")
    if a.low_res and not isinstance(train, FileImageSet) and a.low_res >= min(train.images.shape[-2:]):
        raise LongtailError(f"augment.low_res={a.low_res} is not smaller than the {train.images.shape[-1]}-pixel "
                            "images: progressive resizing scales them down", "use e.g. 24 for 32-pixel images")
    if cfg.semi.method in ("fixmatch", "acr"):
        name = {"fixmatch": "FixMatch", "acr": "ACR"}[cfg.semi.method]
        if a.low_res:
            raise LongtailError(f"augment.low_res={a.low_res} on a {name} run is not supported: its weak and strong "
                                "views would be scaled apart", "set --set augment.low_res=0")
        if a.flip_mode == "alternating":
            raise LongtailError(f"augment.flip_mode=alternating on a {name} run is not supported: its weak and strong "
                                "views flip unlabeled images at random", "set --set augment.flip_mode=random")
        if mix is not None:
            raise LongtailError(f"augment.mix={a.mix} on a {name} run is not supported: its labeled "
                                "batch, weak and strong views are its own", "set --set augment.mix=none")
        if a.autoaugment != "none":
            raise LongtailError(f"augment.autoaugment={a.autoaugment} on a {name} run is not supported: its strong "
                                "view is RandAugment (augment.randaugment)", "set --set augment.autoaugment=none")
        if a.cutout and not a.randaugment:
            raise LongtailError(f"augment.cutout={a.cutout} on a FixMatch run sets the Cutout of a RandAugment strong "
                                "view, and augment.randaugment is 0 (the default strong view has its own cutout)",
                                "add --set augment.randaugment=2 (FixMatch), or set --set augment.cutout=0")
    return augment, mix


def evaluate_model(model: torch.nn.Module, data, counts: ClassCounts, device: torch.device, amp: str,
                   tta: str = "none") -> dict[str, Any]:
    """The test summary of ``model`` on ``data`` (tensors or files); shot groups from ``counts``; ``tta="flip"``:
    the mean logits of each image and its mirror, ``"flip-translate"``: airbench's flip + one-pixel translations
    (``model.tta``, :func:`longtail.models.fastnet.tta_model`).

    Under ``torchrun`` each process predicts rows ``rank::world``; rank 0 gathers the logits in the
    data set's order, summarises, and every process returns that summary. Image files left out as
    unreadable (``data.on_bad_image=skip``) are counted under ``unreadable_images``.
    """
    model = distributed.unwrap(model)
    model = tta_model(model, tta)
    shard = distributed.current()
    if shard.world == 1 and not isinstance(data, FileImageSet):
        logits, labels = predict(model, eval_batches(data, 512), device, amp)
        return summarize(logits, labels, counts, class_names=data.class_names)
    rows = shard.rows(len(data))
    skipped: dict[int, str] = {}
    if isinstance(data, FileImageSet):
        logits, labels, rows, skipped = predict_files(model, data, device, amp, rows=rows)
    elif rows.numel():
        logits, labels = predict(model, iterate_batches(data, rows.to(data.device), 512), device, amp)
    else:  # fewer rows than processes
        logits, labels = torch.zeros(0, data.num_classes), torch.zeros(0, dtype=torch.long)
    parts = distributed.gather_to_main((logits, labels, rows, skipped))
    summary = None
    if parts is not None:
        order = torch.cat([p[2] for p in parts]).argsort()
        logits, labels = torch.cat([p[0] for p in parts])[order], torch.cat([p[1] for p in parts])[order]
        summary = summarize(logits, labels, counts, class_names=data.class_names)
        skipped = {k: v for p in parts for k, v in p[3].items()}
        if skipped:
            summary["unreadable_images"] = _unreadable(data, skipped)
    return distributed.broadcast(summary)


def _unreadable(data: FileImageSet, skipped: dict[int, str]) -> dict[str, Any]:
    """How many images were left out as unreadable, with a few of them and their errors."""
    rows = sorted(skipped)
    return {"count": len(rows), "examples": [f"{data.path(r)}: {skipped[r]}" for r in rows[:10]]}


def train_one(
    cfg: RunConfig,
    out: str | Path,
    *,
    splits: Splits | None = None,
    command: list[str] | None = None,
    progress: bool | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
    restart: bool = False,
) -> dict[str, Any]:
    """Train one seed into the run folder ``out`` (resuming from its checkpoint if present).

    The folder is locked while this runs (one writer at a time). ``restart``: clear the folder once the
    settings and data have been checked, and start over. Returns the test summary of the last epoch
    (plus ``val`` when a validation split is used), or ``{}`` when ``stop_after`` ended the run early.
    """
    return drive(SupervisedStage(cfg, RunDir(out)), splits=splits, command=command, progress=progress,
                 stop_after=stop_after, log=log, restart=restart)


class SupervisedStage(Stage):
    """Supervised training of one seed (any loss, sampler, weighting; pseudo-labels, FixMatch, MFW)."""

    def __init__(self, cfg: RunConfig, run: RunDir) -> None:
        self.cfg, self.members = cfg, [Member(cfg, run)]

    def build(self, ctx: Context) -> Built:
        model, task = build_seed(self.cfg, ctx.splits, ctx.counts, ctx.device)
        t = self.cfg.train
        if use_channels_last(t.channels_last):
            model = model.to(memory_format=torch.channels_last)
        # a frozen backbone gets no gradients (requires_grad off), so the optimizer never moves it
        trains = FrozenBackbone(model, bn="frozen") if t.freeze_backbone else None
        optimizer = make_optimizer(model, self.cfg)  # SGD; SAM / ASAM, MaxNorm, EMA from cfg.optim
        return Built(model, task, optimizer, ctx.splits.train.image_shape, trains=trains)

    def prepare(self, built: Built, ctx: Context, *, resuming: bool) -> None:
        weights = starting_weights(self.cfg)
        if weights and not resuming:  # a resumed run has its own weights
            load_pretrained_backbone(built.model, weights, log=ctx.log)

    def validator(self, built: Built, ctx: Context) -> Callable[[], dict[str, Any]]:
        return lambda: val_scores(built.evaluated(), ctx.splits, ctx.counts, ctx.device, self.cfg)

    def report(self, built: Built, ctx: Context, timing: dict[str, float], records: list[list[dict[str, Any]]],
               start_epoch: int) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        shard, batch = distributed.current(), self.cfg.train.batch_size
        if shard.world > 1:
            extra["distributed"] = {"processes": shard.world, "batch_per_process": batch / shard.world,
                                    "global_batch": batch}
        skipped = distributed.gather_to_main(dict(getattr(built.task, "skipped", {})))
        if skipped is not None and any(skipped):
            merged = {k: v for part in skipped for k, v in part.items()}
            extra["train_unreadable_images"] = _unreadable(ctx.splits.train, merged)  # type: ignore[arg-type]
            ctx.log(f"{len(merged)} unreadable training images were skipped (data.on_bad_image=skip)")
        if start_epoch >= self.cfg.train.epochs:  # a finished run re-reported: it trained as its report said
            timing = {**timing, **_report_context(self.members[0].run.root).get("timing", {})}
        return finish_run(self.cfg, self.members[0].run, built.evaluated(), ctx.splits, ctx.counts, ctx.device,
                          timing, extra, writes=ctx.main)


def starting_weights(cfg: RunConfig) -> str | None:
    """The weights a fresh run's backbone starts from (``model.pretrained`` or ``train.init_from``), or None."""
    if cfg.model.pretrained and cfg.train.init_from:
        raise LongtailError("both model.pretrained and train.init_from name weights for the backbone",
                            "keep one of them (--set train.init_from=none or --set model.pretrained=none)")
    return cfg.model.pretrained or cfg.train.init_from


def build_seed(cfg: RunConfig, splits: Splits, counts: ClassCounts, device: torch.device) -> tuple[Classifier, Task]:
    """The model (initialised from ``cfg.seed``) and the task of one seed's run, on ``device``: the same for a
    single run (``train_one``) and for each member of stacked seeds (``longtail.stacked``)."""
    torch.manual_seed(cfg.seed)  # model initialisation
    model = build_model(cfg, splits.train.num_classes, splits.train.image_shape[0]).to(device)
    init_from_training_images(getattr(model, "backbone", None), splits.train, device,  # e.g. FastNet's whitening
                              weights_from=cfg.model.pretrained or cfg.train.init_from)  # those replace it
    task = build_task(cfg, splits.train, counts, splits).to(device)  # loss buffers (margins, priors) too
    return model, task


def finish_run(cfg: RunConfig, run: RunDir, model: nn.Module, splits: Splits, counts: ClassCounts,
               device: torch.device, timing: dict[str, float], extra: dict[str, Any], *,
               writes: bool) -> dict[str, Any]:
    """The last epoch's report of one seed: test summary, timing (``eval_s`` added), the run's context, the
    validation entries and semi-supervised data info; written into ``run`` when ``writes``."""
    t_eval = time.perf_counter()
    summary = evaluate_model(model, splits.test, counts, device, cfg.train.amp, cfg.model.tta)
    timing = {**timing, "eval_s": time.perf_counter() - t_eval}
    extra = {"recipe": cfg.recipe, "epoch": cfg.train.epochs, "split": "test", "seed": cfg.seed,
             "config": cfg.to_dict(), "device": str(device), "timing": timing,
             "train_size": len(splits.train), "test_size": len(splits.test), **extra}
    if cfg.optim.ema > 0:  # model is the EMA of the trained weights (longtail.optim)
        extra["evaluated_weights"] = f"EMA of the weights, decay {cfg.optim.ema}"
    extra.update(validation_report(cfg, run, model, splits, counts, device))
    semi_info = getattr(splits, "info", None)  # SemiSplits: the pool and the pseudo-labels' quality
    if semi_info:
        extra["semi"] = semi_info
    decoded = getattr(splits, "decoded", None)
    if decoded:  # image files decoded once into memory (data.in_memory): size, bytes, unreadable images left out
        extra["in_memory"] = decoded
    val_info = getattr(splits, "val_info", None)
    if val_info:  # where the validation images came from (report.md shows the note)
        extra["validation_split"] = val_info
        extra["validation_note"] = val_info.get("note")
    if writes:
        write_report(run.root, summary, title=f"{cfg.recipe} (seed {cfg.seed}, last epoch, test set)", extra=extra)
    return {**summary, **extra}


def val_scores(model: nn.Module, splits: Splits, counts: ClassCounts, device: torch.device,
               cfg: RunConfig) -> dict[str, float]:
    """The validation fields of an epoch's row: top-1 and balanced accuracy on the validation split."""
    val = evaluate_model(model, splits.val, counts, device, cfg.train.amp, cfg.model.tta)
    return {"val_top1": val["top1"], "val_balanced": val["balanced_accuracy"]}


def validation_report(cfg: RunConfig, run: RunDir, model: nn.Module, splits: Splits, counts: ClassCounts,
                      device: torch.device) -> dict[str, Any]:
    """The report's validation entries: the last epoch on the validation split (``val``), and the test
    scores of the epoch that was best on it (``best_val_epoch``, from ``best-val.pt``)."""
    out: dict[str, Any] = {}
    if splits.val is not None:
        out["val"] = evaluate_model(model, splits.val, counts, device, cfg.train.amp, cfg.model.tta)
    if run.best_val.is_file():
        best_state = load_checkpoint(run.best_val)
        best_model = build_model(cfg, splits.train.num_classes, splits.train.image_shape[0])
        load_model_state(best_model, best_state["model"], str(run.best_val))
        out["best_val_epoch"] = {"epoch": best_state["next_epoch"],
                                 "test": evaluate_model(best_model.to(device), splits.test, counts, device,
                                                        cfg.train.amp, cfg.model.tta)}
    return out


def evaluate_checkpoint(path: str | Path, *, device: str = "auto", data_root: str | None = None,
                        write: bool = True, tta: str | None = None) -> dict[str, Any]:
    """Re-evaluate a checkpoint on its test set and (re)write its report beside it.

    ``tta``: a test-time augmentation other than the run's ``model.tta`` (:data:`longtail.config.TTA_MODES`); the
    summary is returned with ``"tta"`` set and the report is not written (it describes the run as trained)."""
    ckpt = resolve_checkpoint(path)
    state = load_checkpoint(ckpt)
    refuse_pretraining(state, str(ckpt))  # before the data is loaded
    cfg = RunConfig.from_dict(state["config"])
    root = run_root(ckpt)
    if write:
        check_writable_dir(root, "run folder")  # before the evaluation, not after it
    if data_root is not None:
        cfg = replace(cfg, data=replace(cfg.data, root=data_root))
    dev = distributed.setup(resolve_device(device))
    with distributed.main_first():
        splits = load_splits(cfg.data).to(dev)
    counts = splits.train.class_counts()
    model = model_from_checkpoint(state, splits.train.num_classes, splits.train.image_shape[0], str(ckpt))
    model.to(dev)
    if tta is not None and tta != cfg.model.tta:
        write = False
    summary = evaluate_model(model, splits.test, counts, dev, cfg.train.amp, cfg.model.tta if tta is None else tta)
    epoch = state["next_epoch"]
    extra = {**_report_context(root), "recipe": cfg.recipe, "epoch": epoch, "split": "test", "seed": cfg.seed,
             "config": cfg.to_dict(), "device": str(dev), "train_size": len(splits.train),
             "test_size": len(splits.test), "checkpoint": str(ckpt), "tta": cfg.model.tta if tta is None else tta}
    if splits.decoded:  # data.in_memory: decoded again, as the run decoded them
        extra["in_memory"] = splits.decoded
    if evaluated_weights(state) is not state["model"]:  # model_from_checkpoint took the EMA (optim.ema)
        extra["evaluated_weights"] = f"EMA of the weights, decay {cfg.optim.ema}"
    if write and distributed.is_main():
        which = "last epoch" if epoch == cfg.train.epochs else f"epoch {epoch}"
        write_report(root, summary, title=f"{cfg.recipe} (seed {cfg.seed}, {which}, test set)", extra=extra)
    return {**summary, **extra}


def _report_context(root: Path) -> dict[str, Any]:
    """What an earlier report of the run said about how it ran (timing, validation, semi-supervised data):
    kept when ``evaluate`` rewrites the report, since evaluating again does not change it."""
    try:
        old = json.loads((root / "report.json").read_text())
    except (OSError, ValueError):
        return {}
    keep = ("timing", "val", "best_val_epoch", "semi", "distributed", "stacked_seeds", "train_unreadable_images",
            "validation_split", "validation_note")
    return {k: old[k] for k in keep if isinstance(old, dict) and k in old}
