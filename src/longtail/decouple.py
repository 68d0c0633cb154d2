"""Second-stage re-balancing of a trained run: decoupled classifiers and post-hoc logit adjustment.

A model trained on long-tailed data learns good features but a classifier biased to the head
classes. These methods keep the features and re-balance only the classifier (the backbone is never
touched, BatchNorm statistics included):

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

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .checkpoints import (
    load_checkpoint,
    model_from_checkpoint,
    resolve_checkpoint,
    run_root,
    save_checkpoint,
)
from .config import RunConfig
from .counts import ClassCounts
from .data.augment import Augment
from .data.registry import Splits
from .driver import Built, Context, Member, Stage, drive
from .errors import LongtailError
from .experiment import adapt_task, evaluate_model
from .loop import extract_features
from .losses import adjust_logits, make_loss
from .metrics import summarize
from .models import Classifier, CosineHead, make_head
from .models.wrappers import (
    LogitAdjustedHead,
    ScaledHead,
    fold_head,
    head_wrappers,
    tau_normalize,
)
from .report import write_report
from .runs import RunDir
from .samplers import make_sampler
from .schedule import cosine_lr
from .storage import check_writable_dir, digest
from .tasks import SupervisedTask

__all__ = ["METHODS", "TAU_GRID", "DEFAULT_EPOCHS", "FrozenBackbone", "choose_tau", "decouple_run"]

#: tau values searched on the validation split: 0.0, 0.1, ..., 2.0 (Kang et al. 2020; Menon et al. 2021)
TAU_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(21))
#: epochs of cRT and LWS when none are given (Kang et al. use 10 on ImageNet-LT)
DEFAULT_EPOCHS = 10


# --------------------------------------------------------------------------------------------
# frozen backbone, features, tau selection
# --------------------------------------------------------------------------------------------
class FrozenBackbone(nn.Module):
    """The view of a ``Classifier`` that ``fit`` trains when only the head may change.

    ``fit`` calls ``model.train()`` every epoch, and BatchNorm in training mode would update its
    running statistics even without gradients. Here ``train()`` puts everything but the backbone
    in training mode; the backbone stays in eval mode (its running statistics are used, never
    updated), its parameters have ``requires_grad=False``, and its features are computed without
    autograd. The backbone's tensors therefore stay bit-identical.
    """

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model
        model.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenBackbone":
        super().train(mode)
        self.model.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.model.features(x)
        return self.model.forward_head(features)


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


@dataclass(frozen=True)
class Method:
    """A second stage. ``prepare`` changes the head before training (the methods that train: the
    driver then trains the head's trainable tensors, see :class:`DecoupleStage`); ``finish`` changes
    it after. Each returns report entries."""

    prepare: Callable[[MethodContext], dict[str, Any]] | None
    finish: Callable[[MethodContext], dict[str, Any]] | None
    takes_tau: bool  # takes --tau
    needs_val: bool  # needs a validation split unless --tau is given

    @property
    def trains(self) -> bool:  # takes --epochs
        return self.prepare is not None


def _crt(ctx: MethodContext) -> dict[str, Any]:
    """cRT: a freshly initialised head of the run's kind, trained on the frozen features."""
    model = ctx.model
    torch.manual_seed(ctx.cfg.seed)  # the new head's initialisation
    model.reset_head(make_head(ctx.cfg.model.head, model.num_features, ctx.splits.train.num_classes).to(ctx.device))
    return {"epochs": ctx.epochs or DEFAULT_EPOCHS}


def _lws(ctx: MethodContext) -> dict[str, Any]:
    """LWS: the old head frozen, one learnable scale per class on its logits."""
    model = ctx.model
    model.head.requires_grad_(False)
    model.reset_head(ScaledHead(model.head, ctx.splits.train.num_classes).to(ctx.device))
    return {"epochs": ctx.epochs or DEFAULT_EPOCHS}


def _lws_scales(ctx: MethodContext) -> dict[str, Any]:
    return {"lws_scales": ctx.model.head.scale.detach().cpu().tolist()}


def _tau_from_val(ctx: MethodContext, logits_at: Callable[[float], torch.Tensor]) -> dict[str, Any]:
    tau, table = choose_tau(logits_at, ctx.splits.val.labels.cpu(), ctx.counts)  # type: ignore[union-attr]
    return {"tau": tau, "tau_source": "validation", "tau_grid": table}


def _tau_norm(ctx: MethodContext) -> dict[str, Any]:
    """tau-norm: ``w_c / ||w_c||^tau`` with tau given, or chosen on the validation split."""
    model, head = ctx.model, ctx.model.head
    if ctx.tau is not None:
        info: dict[str, Any] = {"tau": ctx.tau, "tau_source": "explicit"}
    else:
        feats = extract_features(model, ctx.splits.val, ctx.device, ctx.cfg.train.amp, fn=model.features)  # type: ignore[arg-type]
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


#: method name -> how it changes the head
METHODS: dict[str, Method] = {
    "crt": Method(_crt, None, takes_tau=False, needs_val=False),
    "tau-norm": Method(None, _tau_norm, takes_tau=True, needs_val=True),
    "lws": Method(_lws, _lws_scales, takes_tau=False, needs_val=False),
    "logit-adjust": Method(None, _logit_adjust, takes_tau=True, needs_val=False),
}


# --------------------------------------------------------------------------------------------
# loading, checking, the whole step
# --------------------------------------------------------------------------------------------
def _check_method(method: str, epochs: int | None, tau: float | None) -> Method:
    if method not in METHODS:
        raise LongtailError(f"unknown decoupling method {method!r}", f"use one of: {', '.join(METHODS)}")
    m = METHODS[method]
    trainers = " and ".join(k for k, v in METHODS.items() if v.trains)
    tuners = " and ".join(k for k, v in METHODS.items() if v.takes_tau)
    if epochs is not None and not m.trains:
        raise LongtailError(f"{method} trains nothing, so --epochs does not apply", f"--epochs is for {trainers}")
    if epochs is not None and epochs < 1:
        raise LongtailError(f"--epochs must be >= 1, got {epochs}", f"leave it out for {DEFAULT_EPOCHS} epochs")
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
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Re-balance the classifier of a trained run with ``method`` (a key of :data:`METHODS`).

    ``run``: a run folder, a seed-N folder or a checkpoint file. ``out``: where the report and the
    new checkpoint go (default ``RUN/decouple-METHOD``); it is a run folder like any other, resumed
    from its checkpoint when it holds one of the same settings (``restart``: start it over). ``epochs``:
    cRT / LWS epochs (default 10). ``tau``: tau-norm / logit-adjust strength; None chooses it on the
    validation split. ``splits``: the data (default: rebuilt from the run's config, ``data_root``
    overriding its root). Returns the test summary (shot groups from the training counts) plus the
    report's extra entries (method, tau, tau_grid, source_checkpoint, base: the run before, ...), or ``{}``
    when ``stop_after`` (epochs) ended the training early.
    """
    m = _check_method(method, epochs, tau)
    ckpt = resolve_checkpoint(run)
    state = load_checkpoint(ckpt)
    cfg = RunConfig.from_dict(state["config"])
    out = Path(out) if out is not None else run_root(ckpt) / f"decouple-{method}"
    if (out / "checkpoints" / "last.pt").resolve() == ckpt.resolve():
        raise LongtailError(f"--out {out} is the run being decoupled", "write the result to another folder")
    check_writable_dir(out)  # before the work, not after it
    train = replace(cfg.train, device=device)
    if m.trains:  # the second stage's own schedule
        train = replace(train, epochs=epochs or DEFAULT_EPOCHS)
    cfg = replace(cfg, train=train)
    if data_root is not None:
        cfg = replace(cfg, data=replace(cfg.data, root=data_root))
    stage = DecoupleStage(cfg, RunDir(out), method, m, state, ckpt, epochs=epochs, tau=tau)
    return drive(stage, splits=splits, command=command, progress=progress, log=log, restart=restart,
                 stop_after=stop_after)


class DecoupleStage(Stage):
    """A second stage on a trained run's checkpoint, through the one driver.

    The methods that train (cRT, LWS) train the head's trainable tensors on the frozen backbone
    (:class:`FrozenBackbone`) with cross-entropy and class-balanced sampling, the run's augmentation,
    batch size, momentum and weight decay, and a cosine learning rate from the run's lr over the second
    stage's epochs; checkpointed and resumable as any run. The others (tau-norm, post-hoc logit
    adjustment) train nothing. The result's head is folded into a plain head where exactly possible.
    """

    best_by = None

    def __init__(self, cfg: RunConfig, run: RunDir, method: str, m: Method, source: dict[str, Any], ckpt: Path, *,
                 epochs: int | None, tau: float | None) -> None:
        self.cfg, self.members = cfg, [Member(cfg, run)]
        self.method, self.m, self.source, self.ckpt = method, m, source, ckpt
        self.user_epochs, self.tau = epochs, tau
        self.source_weights = digest(source["model"])[:16]  # a retrained base is another source
        self.info: dict[str, Any] = {}
        self.finished = False  # the folder holds the finished result (a rerun re-evaluates it)

    @property
    def epochs(self) -> int:
        return self.cfg.train.epochs if self.m.trains else 0

    def lr_at(self) -> Callable[[float], float]:
        t, epochs = self.cfg.train, self.epochs
        return lambda e: cosine_lr(e, base_lr=t.lr, epochs=epochs)

    def meta(self) -> dict[str, Any]:
        return {"method": self.method, "epochs": self.user_epochs, "tau": self.tau,
                "source_checkpoint": str(self.ckpt.resolve()), "source_weights": self.source_weights}

    def build(self, ctx: Context) -> Built:
        splits, counts, device = ctx.splits, ctx.counts, ctx.device
        if self.m.needs_val and self.tau is None and splits.val is None:
            raise LongtailError(f"{self.method} chooses tau on a validation split, and this run has none",
                                "train the base run with --val-per-class (e.g. 20), or pass --tau explicitly")
        train, t = splits.train, self.cfg.train
        model = model_from_checkpoint(self.source, train.num_classes, train.image_shape[0], str(self.ckpt)).to(device)
        self.base = _short(evaluate_model(model, splits.test, counts, device, t.amp))
        self.context = MethodContext(model, self.cfg, splits, counts, device, epochs=self.user_epochs, tau=self.tau)
        if self.m.prepare is not None:
            self.info.update(self.m.prepare(self.context))
        task = adapt_task(SupervisedTask(train, make_loss("ce", counts), batch_size=t.batch_size,
                                         augment=Augment(crop_padding=t.crop_padding, flip=t.flip),
                                         sampler=make_sampler("class-balanced", train.labels, train.num_classes)))
        params = [p for p in model.head.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params or [torch.zeros(1, requires_grad=True)], lr=t.lr, momentum=t.momentum,
                                    weight_decay=t.weight_decay)  # nothing to train: an optimizer never stepped
        return Built(model, task, optimizer, train.image_shape, trains=FrozenBackbone(model))

    def same(self, member: Member) -> Callable[[], bool]:
        def same() -> bool:
            meta = json.loads(member.run.config_file.read_text()).get("decouple") \
                if member.run.config_file.is_file() else None
            return member.run.existing_config() in (None, self.cfg) and meta in (None, self.meta())
        return same

    def restore(self, built: Built, states: list[dict[str, Any] | None], ctx: Context) -> int:
        (state,) = states
        assert state is not None
        if (state.get("extra") or {}).get("decouple", {}).get("finished"):  # the result, folded: evaluate it again
            model = model_from_checkpoint(state, ctx.splits.train.num_classes, ctx.splits.train.image_shape[0],
                                          str(self.members[0].run.checkpoint)).to(ctx.device)
            built.model.reset_head(model.head)  # type: ignore[operator]
            self.info = dict(state["extra"]["decouple"].get("info", {}))
            self.finished = True
            return self.epochs
        return super().restore(built, states, ctx)

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
        splits, counts, device, amp = ctx.splits, ctx.counts, ctx.device, self.cfg.train.amp
        summary = evaluate_model(model, splits.test, counts, device, amp)
        extra: dict[str, Any] = {"method": self.method, "tau": None, **self.info, "source_checkpoint": str(self.ckpt),
                                 "base": self.base, "recipe": self.cfg.recipe, "seed": self.cfg.seed, "split": "test",
                                 "device": str(device), "seconds": seconds, "out": str(self.members[0].run.root),
                                 "config": self.cfg.to_dict(), "timing": timing}
        if splits.val is not None:
            extra["val"] = _short(evaluate_model(model, splits.val, counts, device, amp))
        if ctx.main:
            run = self.members[0].run
            decouple = {**{k: extra.get(k) for k in ("method", "tau", "epochs", "source_checkpoint")},
                        "head_wrappers": head_wrappers(model.head), "finished": True, "info": self.info}
            save_checkpoint(run.checkpoint, config=self.cfg, model=model, optimizer=None, next_epoch=self.epochs,
                            records=records[0], extra={"decouple": decouple})
            title = f"{self.cfg.recipe} + {self.method} (seed {self.cfg.seed}, test set)"
            write_report(run.root, summary, title=title, extra=extra)
        return {**summary, **extra}
