"""Second-stage re-balancing of a trained run: decoupled classifiers and post-hoc logit adjustment.

A model trained on long-tailed data learns good features but a classifier biased to the head
classes. These methods keep the backbone's weights and re-balance only the classifier. While cRT and
LWS train, the backbone's BatchNorm is in training mode by default, as in every reference (its running
statistics follow the class-balanced batches); ``bn="frozen"`` keeps it bit-identical instead:

* ``crt`` (classifier re-training; Kang et al., "Decoupling representation and classifier for
  long-tailed recognition", ICLR 2020): a new head of the run's kind is trained with
  cross-entropy and class-balanced sampling on the frozen features.
* ``tau-norm`` (Kang et al. 2020): ``w_c <- w_c / ||w_c||^tau``, bias dropped. No training;
  ``tau`` is chosen on the validation split.
* ``lws`` (learnable weight scaling; Kang et al. 2020): ``z_c <- f_c * z_c`` with one scale
  ``f_c`` per class (initialised to 1), trained with class-balanced sampling; backbone and head frozen.
* ``logit-adjust`` (post-hoc logit adjustment; Menon et al., "Long-tail learning via logit
  adjustment", ICLR 2021): ``z_c <- z_c - tau * log pi_c`` with ``pi`` the training prior.
  No training; ``tau`` from the validation split when there is one, else Menon's ``tau = 1``.
* ``wb`` (weight balancing's second stage; Alshammari et al., "Long-tailed recognition via weight balancing",
  CVPR 2022, :mod:`longtail.weight_balancing`): the run's own linear head (weights and bias) trained on with
  their class-balanced loss, instance-balanced batches, weight decay 0.1 and MaxNorm (:mod:`longtail.maxnorm`:
  per-class norms capped at ``min + 0.1 (max - min)`` of their norms at the start, projected after every epoch).

Each method is one entry of :data:`METHODS`: what it does to the head, its knobs, and how it trains (settings
per kind of data set, sampler, loss, MaxNorm). cRT and LWS train with the settings of their source for the data
set (:data:`SECOND_STAGES`): Kang et al.'s
configs on ImageNet-LT and iNaturalist 2018 (batch 512, lr 0.2, cosine; cRT 10 / 30 epochs, LWS 5),
BagofTricks-LT's on CIFAR-LT (30 epochs, batch 128, lr 0.1 with a 5-epoch warm-up and x0.1 at 10 and 20,
Nesterov, wd 5e-4). Where we differ from them: the class-balanced sampler picks a class uniformly and then
one of its images (Kang's ``ClassAwareSampler`` takes 4 images of a class in a row); the cosine rate of
epoch ``e`` is ``lr (1 + cos(pi e / T)) / 2`` (Kang's scheduler steps before each epoch, which under
PyTorch >= 1.1 shifts it by one epoch, so that his last epoch trains at lr 0); every epoch is kept, the
result is the last epoch's (Kang keeps the epoch best on the validation split). WB trains with the settings
of its authors' CIFAR-100-LT demo on every data set (:data:`WB_STAGES`; their code releases no other); it differs
from them in the same two ways (their cosine also steps before each epoch; they keep the epoch best on the
*test* set).

``decouple_run`` loads a run's checkpoint, applies a method, evaluates on the test set (shot groups
from the *training* counts) and writes a report and a checkpoint into ``RUN/decouple-METHOD/``.
Tuning knobs (``tau``) are chosen on the validation split only, never on the test set.

Checkpoints: every change is a head module, so a decoupled model is a ``Classifier`` like any
other. When the result is exactly a plain head of the run's kind (all methods with a linear
head; cRT and tau-norm with a cosine head), it is saved as that plain head, so ``longtail
evaluate`` reads it as it reads any run. A cosine head under LWS or logit adjustment cannot be
folded (it has no bias, and normalises its weights); it is saved wrapped, with the wrapper names
in the checkpoint's ``extra["decouple"]["head_wrappers"]``; :func:`model_from_checkpoint`
rebuilds such models (and plain ones).
"""

from __future__ import annotations

import difflib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, cast

import torch
import torch.nn as nn

from .checkpoints import (
    load_checkpoint,
    model_from_checkpoint,
    resolve_checkpoint,
    run_root,
    save_checkpoint,
)
from .config import OptimConfig, RunConfig, training_differences
from .counts import ClassCounts
from .data.augment import Augment
from .data.registry import Splits
from .driver import Built, Context, Member, Stage, drive
from .errors import LongtailError
from .experiment import adapt_task, evaluate_model
from .loop import EpochRecord, extract_features
from .losses import adjust_logits, make_loss
from .maxnorm import MaxNorm, row_norms
from .metrics import summarize
from .models import Classifier, CosineHead, make_head
from .models.wrappers import (
    BN_MODES,
    FrozenBackbone,
    LogitAdjustedHead,
    ScaledHead,
    fold_head,
    head_wrappers,
    tau_normalize,
)
from .report import write_report
from .runs import EpochLog, RunDir
from .samplers import make_sampler
from .schedule import cosine_lr
from .storage import check_writable_dir, digest
from .tasks import SupervisedTask
from .weight_balancing import SoftmaxBCE
from .weights import ConstantWeighting, Weighting

__all__ = ["METHODS", "SECOND_STAGES", "TAU_GRID", "WB_STAGES", "BN_MODES", "FrozenBackbone", "Method", "SecondStage",
           "choose_tau", "decouple_run", "method_named", "second_stage_for"]

#: tau values searched on the validation split: 0.0, 0.1, ..., 2.0 (Kang et al. 2020; Menon et al. 2021)
TAU_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(21))
@dataclass(frozen=True)
class SecondStage:
    """How a second stage trains, as its source gives it for a kind of data set (one table may serve several
    methods: ``epochs`` is per method).

    ``schedule``: ``cosine`` (to 0 over the epochs, Kang et al.'s ``coslr``) or ``warmup-step`` (linear warm-up
    from lr/3 over 5 epochs, then x0.1 at epochs 10 and 20: BagofTricks-LT's ``WarmupMultiStepLR``).
    """

    source: str
    epochs: dict[str, int]  # method -> epochs
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    schedule: str

    def lr_at(self, epochs: int) -> Callable[[float], float]:
        lr = self.lr
        if self.schedule == "cosine":
            return lambda e: cosine_lr(int(e), base_lr=lr, epochs=epochs)
        return lambda e: lr * (1 / 3 + (1 - 1 / 3) * e / 5 if e < 5 else 0.1 ** sum(e >= m for m in (10, 20)))


_KANG = "Kang et al. 2020, facebookresearch/classifier-balancing config/{}/cls_crt.yaml and cls_lws.yaml"
#: the second stage's settings per kind of data set, from the sources of the published numbers
SECOND_STAGES: dict[str, SecondStage] = {
    # CIFAR-10/100-LT (and the other small-image sets): Zhang et al. 2021, "Bag of tricks for long-tailed visual
    # recognition", zhangyongshun/BagofTricks-LT configs/cao_cifar/two_stage/classifier_balance/{cRT,LWS}/*.yaml
    "small": SecondStage("BagofTricks-LT (Zhang et al. 2021), configs/cao_cifar/two_stage/classifier_balance",
                         {"crt": 30, "lws": 30}, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4,
                         nesterov=True, schedule="warmup-step"),
    "imagenet-lt": SecondStage(_KANG.format("ImageNet_LT"), {"crt": 10, "lws": 5}, batch_size=512, lr=0.2,
                               momentum=0.9, weight_decay=5e-4, nesterov=False, schedule="cosine"),
    "inat2018": SecondStage(_KANG.format("iNaturalist18"), {"crt": 30, "lws": 5}, batch_size=512, lr=0.2,
                            momentum=0.9, weight_decay=1e-4, nesterov=False, schedule="cosine"),
}


# Alshammari et al. 2022, ShadeAlsha/LTR-weight-balancing (e89f292) demo2_second-stage-training: total_epoch_num 10,
# base_lr 0.01, SGD momentum 0.9, weight_decay 0.1, CosineAnnealingLR(eta_min=0), the demo's batch 64 loader
_WB_DEMO = SecondStage("Alshammari et al. 2022, ShadeAlsha/LTR-weight-balancing demo2_second-stage-training "
                       "(CIFAR-100-LT, their only released settings)", {"wb": 10}, batch_size=64, lr=0.01,
                       momentum=0.9, weight_decay=0.1, nesterov=False, schedule="cosine")
#: weight balancing's second stage per kind of data set: their demo's settings for every kind
WB_STAGES: dict[str, SecondStage] = dict.fromkeys(SECOND_STAGES, _WB_DEMO)


def second_stage_for(dataset: str, method: str = "crt") -> SecondStage:
    """How ``method`` (a key of :data:`METHODS` that trains) trains on ``dataset``: for cRT and LWS Kang et al.'s
    settings for ImageNet-LT and iNaturalist 2018 (and their ImageNet-LT settings for a user's image folder or CSV),
    BagofTricks-LT's for small-image sets; for WB its authors' demo (:data:`WB_STAGES`)."""
    stages = method_named(method).stages
    if stages is None:
        raise LongtailError(f"{method} trains nothing, so it has no training settings",
                            f"the methods that train: {', '.join(k for k, v in METHODS.items() if v.trains)}")
    if dataset in ("imagenet-lt", "inat2018"):
        return stages[dataset]
    return stages["imagenet-lt" if dataset in ("folder", "csv") else "small"]


# --------------------------------------------------------------------------------------------
# frozen backbone, features, tau selection
# --------------------------------------------------------------------------------------------
def choose_tau(logits_at: Callable[[float], torch.Tensor], labels: torch.Tensor, counts: ClassCounts,
               grid: tuple[float, ...] = TAU_GRID) -> tuple[float, list[dict[str, float]]]:
    """The tau of ``grid`` with the best balanced accuracy of ``logits_at(tau)`` against ``labels``.

    Call it with the VALIDATION split's logits and labels (never the test set's). Balanced accuracy
    is the mean per-class accuracy (:func:`longtail.metrics.summarize`). Ties go to the smallest
    tau, the smallest change to the model. Returns ``(tau, [{"tau", "val_balanced_accuracy"}, ...])``.
    """
    table = []
    for tau in grid:
        acc = summarize(logits_at(tau), labels, counts)["balanced_accuracy"]
        table.append({"tau": tau, "val_balanced_accuracy": acc})
    best = max(table, key=lambda r: (r["val_balanced_accuracy"] or 0.0, -r["tau"]))
    return best["tau"], table


# --------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------
@dataclass
class MethodContext:
    """What a method works with: the loaded model and config, the data, the user's knobs."""

    model: Classifier
    cfg: RunConfig
    splits: Splits
    counts: ClassCounts
    device: torch.device
    epochs: int | None = None
    tau: float | None = None


def _plain_ce(counts: ClassCounts) -> tuple[nn.Module, Weighting | None]:
    return make_loss("ce", counts), None


def _class_balanced_bce(counts: ClassCounts) -> tuple[nn.Module, Weighting | None]:
    """WB's ``CB_loss(..., "softmax", beta=0.9999)``: :func:`longtail.weight_balancing.softmax_bce`, CB weights."""
    return SoftmaxBCE(), ConstantWeighting(counts, "class-balanced", beta=0.9999)


@dataclass(frozen=True)
class Method:
    """A second stage: one entry of :data:`METHODS`. ``prepare`` changes the head before training (the methods
    that train: the driver then trains the head's trainable tensors, see :class:`DecoupleStage`); ``finish``
    changes it after. Each returns report entries. A method that trains has ``stages``, its settings per kind of
    data set (:func:`second_stage_for`), and draws its batches with ``sampler`` (:mod:`longtail.samplers`),
    takes its loss and per-class weighting from ``loss(counts)`` and, with ``maxnorm`` set, caps the head's
    per-class weight norms (:class:`longtail.maxnorm.MaxNorm` of that threshold, projected after every epoch)."""

    about: str  # what it is, with its source, in a few words
    prepare: Callable[[MethodContext], dict[str, Any]] | None
    finish: Callable[[MethodContext], dict[str, Any]] | None
    takes_tau: bool = False  # takes --tau
    needs_val: bool = False  # needs a validation split unless --tau is given
    stages: dict[str, SecondStage] | None = None  # kind of data set -> how it trains; None: it trains nothing
    sampler: str = "class-balanced"
    loss: Callable[[ClassCounts], tuple[nn.Module, Weighting | None]] = _plain_ce
    maxnorm: float | None = None

    @property
    def trains(self) -> bool:  # takes --epochs
        return self.stages is not None


def _crt(ctx: MethodContext) -> dict[str, Any]:
    """cRT: a freshly initialised head of the run's kind, trained on the frozen features."""
    model = ctx.model
    torch.manual_seed(ctx.cfg.seed)  # the new head's initialisation
    model.reset_head(make_head(ctx.cfg.model.head, model.num_features, ctx.splits.train.num_classes).to(ctx.device))
    return {"epochs": ctx.cfg.train.epochs}


def _lws(ctx: MethodContext) -> dict[str, Any]:
    """LWS: the old head frozen, one learnable scale per class on its logits."""
    model = ctx.model
    model.head.requires_grad_(False)
    model.reset_head(ScaledHead(model.head, ctx.splits.train.num_classes).to(ctx.device))
    return {"epochs": ctx.cfg.train.epochs}


def _lws_scales(ctx: MethodContext) -> dict[str, Any]:
    head = cast(ScaledHead, ctx.model.head)  # _lws put it there
    return {"lws_scales": head.scale.detach().cpu().tolist()}


def _tau_from_val(ctx: MethodContext, logits_at: Callable[[float], torch.Tensor]) -> dict[str, Any]:
    tau, table = choose_tau(logits_at, ctx.splits.val.labels.cpu(), ctx.counts)  # type: ignore[union-attr]
    return {"tau": tau, "tau_source": "validation", "tau_grid": table}


def _tau_norm(ctx: MethodContext) -> dict[str, Any]:
    """tau-norm: ``w_c / ||w_c||^tau`` with tau given, or chosen on the validation split."""
    model, head = ctx.model, ctx.model.head
    if ctx.tau is not None:
        info: dict[str, Any] = {"tau": ctx.tau, "tau_source": "explicit"}
    else:
        feats = extract_features(model, ctx.splits.val, ctx.device, ctx.cfg.train.amp, fn=model.features)
        with torch.no_grad():
            info = _tau_from_val(ctx, lambda tau: tau_normalize(head, tau)(feats).float().cpu())
    model.reset_head(tau_normalize(head, info["tau"]))
    if isinstance(head, CosineHead):
        info["note"] = "cosine head: it normalises its weights, so tau-norm leaves its logits unchanged"
    return info


def _logit_adjust(ctx: MethodContext) -> dict[str, Any]:
    """Post-hoc logit adjustment ``z - tau log pi``: tau given, from the validation split, or 1."""
    model = ctx.model
    if ctx.tau is not None:
        info: dict[str, Any] = {"tau": ctx.tau, "tau_source": "explicit"}
    elif ctx.splits.val is None:
        info = {"tau": 1.0, "tau_source": "default (no validation split; Menon et al.'s tau = 1)"}
    else:
        feats = extract_features(model, ctx.splits.val, ctx.device, ctx.cfg.train.amp, fn=model.features)
        with torch.no_grad():
            val_logits = model.forward_head(feats).float().cpu()
        info = _tau_from_val(ctx, lambda tau: adjust_logits(val_logits, ctx.counts, tau).float())
    model.reset_head(LogitAdjustedHead.for_counts(model.head, ctx.counts, info["tau"]))
    return info


def _wb(ctx: MethodContext) -> dict[str, Any]:
    """WB: the run's own linear head trained on, weights and bias (their demo makes ``fc.weight`` and ``fc.bias``
    the only trainable tensors of a copy of the stage-1 model)."""
    head = ctx.model.head
    if not isinstance(head, nn.Linear):
        raise LongtailError(f"wb trains the run's linear classifier and caps its per-class weight norms; this "
                            f"run's head is a {type(head).__name__}",
                            "decouple a run trained with model.head=linear (a cosine head normalises its "
                            "weights, so their norms do not matter), or use --method crt")
    return {"epochs": ctx.cfg.train.epochs, "sampler": "instance",
            "loss": "class-balanced softmax binary cross-entropy (beta 0.9999), their CB_loss 'softmax'"}


def _head_norms(ctx: MethodContext) -> dict[str, Any]:
    return {"head_norms": row_norms(cast(nn.Linear, ctx.model.head).weight).cpu().tolist()}


#: method name -> what it does to the head and how it trains (:class:`Method`)
METHODS: dict[str, Method] = {
    "crt": Method("classifier re-training, Kang et al. 2020", _crt, None, stages=SECOND_STAGES),
    "tau-norm": Method("tau-normalised classifier, Kang et al. 2020", None, _tau_norm, takes_tau=True,
                       needs_val=True),
    "lws": Method("learnable weight scaling, Kang et al. 2020", _lws, _lws_scales, stages=SECOND_STAGES),
    "logit-adjust": Method("post-hoc logit adjustment, Menon et al. 2021", None, _logit_adjust, takes_tau=True),
    "wb": Method("weight balancing's second stage, Alshammari et al. 2022", _wb, _head_norms, stages=WB_STAGES,
                 sampler="instance", loss=_class_balanced_bce, maxnorm=0.1),
}


def method_named(method: str) -> Method:
    """The entry of :data:`METHODS` named ``method``; an unknown name is refused with the known ones."""
    if method not in METHODS:
        close = difflib.get_close_matches(method, METHODS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise LongtailError(f"unknown decoupling method {method!r}",
                            hint + "use one of: " + "; ".join(f"{k} ({v.about})" for k, v in METHODS.items()))
    return METHODS[method]


# --------------------------------------------------------------------------------------------
# loading, checking, the whole step
# --------------------------------------------------------------------------------------------
def _check_method(method: str, epochs: int | None, tau: float | None) -> Method:
    m = method_named(method)
    trainers = " and ".join(k for k, v in METHODS.items() if v.trains)
    tuners = " and ".join(k for k, v in METHODS.items() if v.takes_tau)
    if epochs is not None and not m.trains:
        raise LongtailError(f"{method} trains nothing, so --epochs does not apply", f"--epochs is for {trainers}")
    if epochs is not None and epochs < 1:
        raise LongtailError(f"--epochs must be >= 1, got {epochs}",
                            "leave it out for the epochs the source gives for the data set")
    if tau is not None and not m.takes_tau:
        raise LongtailError(f"{method} has no tau, so --tau does not apply", f"--tau is for {tuners}")
    if tau is not None and not (math.isfinite(tau) and tau >= 0):
        raise LongtailError(f"--tau must be a finite number >= 0, got {tau}",
                            "leave it out to choose tau on the validation split")
    return m


def _short(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ("top1", "many", "medium", "few", "balanced_accuracy")}


def decouple_run(
    run: str | Path,
    method: str,
    *,
    out: str | Path | None = None,
    epochs: int | None = None,
    tau: float | None = None,
    device: str = "auto",
    splits: Splits | None = None,
    data_root: str | None = None,
    progress: bool | None = False,
    command: list[str] | None = None,
    restart: bool = False,
    stop_after: int | None = None,
    bn: str = "train",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Re-balance the classifier of a trained run with ``method`` (a key of :data:`METHODS`).

    ``run``: a run folder, a seed-N folder or a checkpoint file. ``out``: where the report and the
    new checkpoint go (default ``RUN/decouple-METHOD``); it is a run folder like any other, resumed
    from its checkpoint when it holds one of the same settings (``restart``: start it over). cRT and LWS
    train with the settings their source gives for the run's data set (:func:`second_stage_for`); ``epochs``
    overrides its epochs, ``bn`` is the frozen backbone's BatchNorm mode (:data:`BN_MODES`). ``tau``:
    tau-norm / logit-adjust strength; None chooses it on the
    validation split. ``splits``: the data (default: rebuilt from the run's config, ``data_root``
    overriding its root). Returns the test summary (shot groups from the training counts) plus the
    report's extra entries (method, tau, tau_grid, source_checkpoint, base: the run before, ...), or ``{}``
    when ``stop_after`` (epochs) ended the training early.
    """
    m = _check_method(method, epochs, tau)
    ckpt = resolve_checkpoint(run)
    state = load_checkpoint(ckpt)
    earlier = (state.get("extra") or {}).get("decouple")
    if earlier:  # its head wrappers and chosen tau would be dropped, silently, by a second decoupling
        base = earlier.get("source_checkpoint") or earlier.get("base") or "its base run"
        raise LongtailError(f"{run} is the output of `longtail decouple` ({earlier.get('method', 'a second stage')}); "
                            "a second stage re-balances a trained run, not another second stage's result",
                            f"decouple the run it came from ({base}) with --method {method}")
    cfg = RunConfig.from_dict(state["config"])
    out = Path(out) if out is not None else run_root(ckpt) / f"decouple-{method}"
    if (out / "checkpoints" / "last.pt").resolve() == ckpt.resolve():
        raise LongtailError(f"--out {out} is the run being decoupled", "write the result to another folder")
    check_writable_dir(out)  # before the work, not after it
    if bn not in BN_MODES:
        raise LongtailError(f"unknown BatchNorm mode {bn!r} for the second stage", f"use one of: {', '.join(BN_MODES)}")
    settings = second_stage_for(cfg.data.dataset, method) if m.trains else None
    train = replace(cfg.train, device=device)
    if settings is not None:  # the second stage's own optimisation, as its source gives it for this data set
        train = replace(train, epochs=epochs or settings.epochs[method], batch_size=settings.batch_size,
                        lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    # the second stage trains with its source's SGD: the base run's optim.* (SAM, MaxNorm, EMA) made the weights
    # it starts from, and is not carried into a stage that does not use it
    cfg = replace(cfg, train=train, optim=OptimConfig())
    if data_root is not None:
        cfg = replace(cfg, data=replace(cfg.data, root=data_root))
    stage = DecoupleStage(cfg, RunDir(out), method, m, state, ckpt, epochs=epochs, tau=tau, settings=settings, bn=bn)
    return drive(stage, splits=splits, command=command, progress=progress, log=log, restart=restart,
                 stop_after=stop_after)


class DecoupleStage(Stage):
    """A second stage on a trained run's checkpoint, through the one driver.

    The methods that train (cRT, LWS, WB) train the head's trainable tensors on the frozen backbone
    (:class:`FrozenBackbone`) with their loss and sampler (cRT, LWS: cross-entropy, class-balanced sampling) and
    the run's augmentation, with the batch size, learning rate and schedule, momentum, Nesterov and weight decay
    of their source for the data set (:attr:`Method.stages`); checkpointed and resumable as any run. A method
    with MaxNorm (WB) projects the head after every epoch, before the epoch's checkpoint, which carries the cap
    (``extra["maxnorm"]``). The others (tau-norm, post-hoc logit adjustment) train nothing. The result's head is
    folded into a plain head where exactly possible.
    """

    best_by = None

    def __init__(self, cfg: RunConfig, run: RunDir, method: str, m: Method, source: dict[str, Any], ckpt: Path, *,
                 epochs: int | None, tau: float | None, settings: SecondStage | None, bn: str) -> None:
        self.settings, self.bn = settings, bn
        self.cfg, self.members = cfg, [Member(cfg, run)]
        self.method, self.m, self.source, self.ckpt = method, m, source, ckpt
        self.user_epochs, self.tau = epochs, tau
        self.source_weights = digest(source["model"])[:16]  # a retrained base is another source
        self.info: dict[str, Any] = {}
        self.maxnorm: MaxNorm | None = None  # the head's norm cap (methods with MaxNorm), made in build
        self.finished = False  # the folder holds the finished result (a rerun re-evaluates it)

    @property
    def epochs(self) -> int:
        return self.cfg.train.epochs if self.m.trains else 0

    def lr_at(self) -> Callable[[float], float]:
        return self.settings.lr_at(self.epochs) if self.settings is not None else lambda e: 0.0

    def meta(self) -> dict[str, Any]:
        s = self.settings
        second = {"settings_from": s.source, "nesterov": s.nesterov, "schedule": s.schedule, "bn": self.bn} \
            if s is not None else {}
        if self.m.maxnorm is not None:
            second["maxnorm"] = self.m.maxnorm
        return {"method": self.method, "epochs": self.user_epochs, "tau": self.tau,
                "source_checkpoint": str(self.ckpt.resolve()), "source_weights": self.source_weights, **second}

    def build(self, ctx: Context) -> Built:
        splits, counts, device = ctx.splits, ctx.counts, ctx.device
        if self.m.needs_val and self.tau is None and splits.val is None:
            raise LongtailError(f"{self.method} chooses tau on a validation split, and this run has none",
                                "train the base run with --val-per-class (e.g. 20), or pass --tau explicitly")
        train, t = splits.train, self.cfg.train
        model = model_from_checkpoint(self.source, train.num_classes, train.image_shape[0], str(self.ckpt)).to(device)
        self.base = _short(evaluate_model(model, splits.test, counts, device, t.amp, self.cfg.model.tta))
        self.context = MethodContext(model, self.cfg, splits, counts, device, epochs=self.user_epochs, tau=self.tau)
        if self.m.prepare is not None:
            self.info.update(self.m.prepare(self.context))
        if self.m.maxnorm is not None:  # the cap from the head's norms as the stage starts (a resumed run: restore)
            self.maxnorm = MaxNorm(cast(nn.Linear, model.head).weight, thresh=self.m.maxnorm)
            self.info["maxnorm"] = {**self.maxnorm.state_dict(), "projected": "after every epoch"}
        criterion, weighting = self.m.loss(counts)
        task = adapt_task(SupervisedTask(train, criterion, batch_size=t.batch_size, weighting=weighting,
                                         augment=Augment(crop_padding=t.crop_padding, flip=t.flip),
                                         sampler=make_sampler(self.m.sampler, train.labels, train.num_classes)))
        params = [p for p in model.head.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params or [torch.zeros(1, requires_grad=True)], lr=t.lr, momentum=t.momentum,
                                    weight_decay=t.weight_decay,  # nothing to train: an optimizer never stepped
                                    nesterov=self.settings is not None and self.settings.nesterov and t.momentum > 0)
        return Built(model, task, optimizer, train.image_shape, trains=FrozenBackbone(model, self.bn))

    def same(self, member: Member) -> Callable[[], bool]:
        def same() -> bool:
            meta = json.loads(member.run.config_file.read_text()).get("decouple") \
                if member.run.config_file.is_file() else None
            previous = member.run.existing_config()
            return (previous is None or not training_differences(previous, self.cfg)) and meta in (None, self.meta())
        return same

    def restore(self, built: Built, states: list[dict[str, Any] | None], ctx: Context) -> int:
        (state,) = states
        assert state is not None
        if (state.get("extra") or {}).get("decouple", {}).get("finished"):  # the result, folded: evaluate it again
            model = model_from_checkpoint(state, ctx.splits.train.num_classes, ctx.splits.train.image_shape[0],
                                          str(self.members[0].run.checkpoint)).to(ctx.device)
            # the whole result: with BatchNorm in train mode the stage also moved the backbone's running statistics
            built.model.backbone.load_state_dict(model.backbone.state_dict())  # type: ignore[union-attr]
            built.model.reset_head(model.head)  # type: ignore[operator]
            self.info = dict(state["extra"]["decouple"].get("info", {}))
            self.finished = True
            return self.epochs
        start = super().restore(built, states, ctx)
        saved = (state.get("extra") or {}).get("maxnorm")
        if self.maxnorm is not None and saved is not None:  # the cap of the stage's start, as saved
            self.maxnorm.load_state_dict(saved)
            self.info["maxnorm"].update(self.maxnorm.state_dict())
        return start

    def end_epoch(self, rec: EpochRecord, built: Built, logs: list[EpochLog], ctx: Context) -> float | None:
        """MaxNorm's projection once the epoch's steps are done (WB's ``train_model`` calls ``pgdFunc.PGD(model)``
        after each training phase), so the checkpoint holds the projected head, and the cap with it."""
        if self.maxnorm is None:
            return super().end_epoch(rec, built, logs, ctx)
        self.maxnorm.project()
        maxnorm = self.maxnorm
        logs[0].end_epoch(asdict(rec), built.model, built.optimizer, validate=self.validator(built, ctx),
                          extra=lambda: {"maxnorm": maxnorm.state_dict()})
        return None

    def write_config(self, member: Member, command: list[str] | None) -> None:
        member.run.create(member.cfg, command, extra={"decouple": self.meta()})

    def report(self, built: Built, ctx: Context, timing: dict[str, float], records: list[list[dict[str, Any]]],
               start_epoch: int) -> dict[str, Any]:
        model: Classifier = built.model  # type: ignore[assignment]
        t0 = time.perf_counter()
        if not self.finished:
            if self.m.finish is not None:
                self.info.update(self.m.finish(self.context))
            model.reset_head(fold_head(model.head))
        seconds = timing["train_s"] + time.perf_counter() - t0
        splits, counts, device, amp, tta = ctx.splits, ctx.counts, ctx.device, self.cfg.train.amp, self.cfg.model.tta
        summary = evaluate_model(model, splits.test, counts, device, amp, tta)
        extra: dict[str, Any] = {**self.meta(), "tau": None, **self.info, "source_checkpoint": str(self.ckpt),
                                 "base": self.base, "recipe": self.cfg.recipe, "seed": self.cfg.seed, "split": "test",
                                 "device": str(device), "seconds": seconds, "out": str(self.members[0].run.root),
                                 "config": self.cfg.to_dict(), "timing": timing}
        if splits.val is not None:
            extra["val"] = _short(evaluate_model(model, splits.val, counts, device, amp, tta))
        if ctx.main:
            run = self.members[0].run
            decouple = {**{k: extra.get(k) for k in ("method", "tau", "epochs", "source_checkpoint")},
                        "head_wrappers": head_wrappers(model.head), "finished": True, "info": self.info}
            save_checkpoint(run.checkpoint, config=self.cfg, model=model, optimizer=None, next_epoch=self.epochs,
                            records=records[0], extra={"decouple": decouple})
            title = f"{self.cfg.recipe} + {self.method} (seed {self.cfg.seed}, test set)"
            write_report(run.root, summary, title=title, extra=extra)
        return {**summary, **extra}
