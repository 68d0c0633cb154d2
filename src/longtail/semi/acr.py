"""ACR: the adaptive consistency regularizer (Wei & Gan, "Towards Realistic Long-Tailed Semi-Supervised Learning:
Consistency Is All You Need", CVPR 2023), as one more semi-supervised task for the one loop.

What is followed: Gank0078/ACR at commit 9a8f421ef7508c1e1e13cbae4ca36d442d89e322 (2023-05-19, the newest; its
``train.py`` is that of bb9aaa7, whose last algorithmic change is none: the five versions of ``train.py`` differ
only in a comment, CIFAR-100's WRN width, the data path and which accuracy is logged), ``train.py`` (``main``:
the priors, adjustments and argparse defaults; ``train``: the loss, the estimate and the adaptive tau),
``models/wideresnet.py`` (one backbone, heads ``fc`` and ``fc1``; here :class:`ACRClassifier`), ``models/ema.py``,
``dataset/cifar.py`` (the split and the views) and the README's commands. With ``pi`` the labeled prior,
``adj(tau) = log(pi^tau + 1e-12)`` (:func:`adjustment`, float64), one step on ``B`` labeled images ``x, y`` and
``mu B`` unlabeled images ``u`` (one weak view ``w``, two strong views ``s, s'``), the network giving for each
image the standard head's logits ``f(.)`` (their ``fc``) and the balanced head's ``g(.)`` (their ``fc1``):

* supervised: ``Lx = CE(f(x), y)`` and the logit-adjusted ``Lx_b = CE(g(x) + adj(tau2), y)``;
* standard head's consistency: the target ``q = argmax softmax((f(w) - adj(tau)) / T)``, kept when that
  adjusted confidence *or* the plain one ``max softmax(f(w) / T)`` is at least ``threshold``;
  ``Lu = mean over the 2 mu B strong rows of 1[kept] CE(f(s), q)`` (both strong views, the same target);
* balanced head's consistency: the target ``q2 = argmax softmax((f(w) - adj(tau12)) / T)`` (from the *standard*
  head's weak logits, fixed ``tau12``), kept when that confidence *or* the balanced head's own
  ``max softmax(g(w) / T)`` is at least ``threshold``; ``Lu_b = mean 1[kept] CE(g(s), q2)``;
* ``loss = Lx + Lu + Lx_b + Lu_b`` (no weight on the unlabeled terms; :func:`acr_loss`).

The adaptive ``tau`` (the standard head's pseudo-label adjustment) starts at ``tau1``. From the epoch after
``est_epoch`` on (0-based ``epoch > est_epoch``) every step estimates the unlabeled class distribution ``u``
(started uniform) from the balanced head's weak-view predictions ``argmax g(w)`` that are confident (``max
softmax(g(w) / T) >= threshold``) and not labeled images (the pool holds the labeled images too, see below): a
per-class tally ``n`` (:func:`tally`), normalised, and ``u <- ema_u u + (1 - ema_u) n / sum n`` when ``sum n >
0`` (:func:`update_estimate`). Each such step adds to a running sum the distances of ``u`` to three anchors
(:func:`anchors`): the labeled prior ``pi`` ("consistent"), uniform and ``pi`` reversed; the distance is the
symmetrised KL ``d(u, a) = (KL(u || a) + KL(a || u)) / 2`` (:func:`distances`; their ``nn.KLDivLoss(reduction=
'sum')`` both ways, not a Jensen-Shannon divergence). At the start of every epoch after ``est_epoch`` the sum
divided by the epoch's steps gives ``d = (d_con, d_uni, d_rev)`` and ::

    tau = tau_min + (tau_max - tau_min) * exp(d_con) / (exp(d_con) + exp(d_uni) + exp(d_rev))

(:func:`adaptive_tau`; ``tau_min = 0`` and ``tau_max = tau1``, hard-coded in their ``main``; a NaN keeps the
previous tau). The closer ``u`` is to the labeled prior, the smaller the adjustment. The sum is then reset. So the
first epoch after ``est_epoch`` gets ``tau = tau_max / 3`` from an empty sum (all distances 0), and the estimated
tau acts from the epoch after that: their code, kept.

Evaluated: the balanced head (their ``test`` logs and keeps ``test_acc_b``, ``fc1``), of the EMA of the weights
(their ``ModelEMA``, decay 0.999, buffers copied: ``optim.ema=0.999``, which :mod:`longtail.optim` does the same
way); :class:`ACRClassifier`'s ``forward`` is that head, so evaluation, reports and checkpoints see a plain
classifier.

Deviations (everything else is meant to be theirs):

* the tally. Theirs is ``now_mask[targets_u_b] += mask_l * mask_b``: an indexed assignment, not an
  accumulation, so a class predicted by several rows of the batch gets the weight (0 or 1) of *one* of them, not
  their count (the paper's "counting" of pseudo-labels). Which row wins is unspecified on CUDA; PyTorch's CPU
  kernel (and its deterministic mode) takes the last, and ``tally="assign"`` (the default) takes the last too.
  ``tally="count"`` counts (``bincount`` with the weights), the paper's reading;
* ``pi`` is the exact labeled prior ``n_c / N``; theirs (``compute_py``) counts the labels one shuffled pass of
  the ``drop_last`` labeled loader yields, which misses up to ``B - 1`` random images;
* randomness from the loop's ``torch.Generator`` per epoch: an epoch's labeled batches are chained random
  permutations of the labeled set, each cut to whole batches (their ``drop_last=True``; :func:`full_batch_draw`),
  its unlabeled batches the same over the pool; theirs keep one loader iterator across epochs, ours start a new
  permutation at each epoch. Augmentation: crop (reflect padding) then flip, theirs flip then crop (the same
  distribution); RandAugment as :mod:`longtail.data.randaugment`'s ``fixmatch`` policy;
* dtypes: the distances and adjustments are computed in float64 (theirs mix float32 and float64: the uniform
  anchor's distance is float32), the estimate ``u`` and the distance sum are float32 as theirs; ``Lx_b`` adds
  the float64 adjustment to float32 logits in float32 (theirs promotes that term to float64);
* one forward pass over all views, as theirs, but without their ``interleave`` (a no-op for one device's
  BatchNorm, which sees the whole concatenated batch either way);
* a two-pass optimizer (SAM) would update the estimate twice per step (the loss updates it).

Their pool: ``train_split`` gives the unlabeled loader the first ``n_l + n_u`` images of each class, i.e. the
labeled images too (marked ``-2``, left out of the estimate by ``mask_l``): ``data.darp_include_labeled=true``
with ``data.darp_order=file``, and ``pool_labeled`` (:func:`pool_labeled_rows`) marks those rows here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..data.augment import Augment, normalize
from ..data.imageset import ImageSet
from ..data.pools import UnlabeledSet
from ..errors import LongtailError
from ..models.acr import ACRClassifier

if TYPE_CHECKING:
    from ..config import RunConfig

TALLIES = ("assign", "count")


@dataclass(frozen=True)
class ACRSettings:
    """ACR's own knobs, with the values of their README's commands (their argparse names in brackets)."""

    tau1: float = 2.0  # [--tau1] the standard head's first pseudo-label adjustment, and tau_max of the adaptive tau
    tau12: float = 2.0  # [--tau12] the fixed adjustment of the balanced head's targets (from the standard head)
    tau2: float = 2.0  # [--tau2] the adjustment of the balanced head's supervised (logit-adjusted) loss
    tau_min: float = 0.0  # [args.taumin, hard-coded 0] the adaptive tau's lower end
    ema_u: float = 0.99  # [--ema-u] momentum of the unlabeled-distribution estimate (argparse 0.9; README 0.99)
    est_epoch: int = 5  # [--est-epoch] the estimate runs in epochs > est_epoch (0-based)
    steps_per_epoch: int = 500  # [--eval-step] an epoch's steps (the estimate's sum is divided by it)
    temperature: float = 1.0  # [--T] of the pseudo-labels' softmax
    tally: str = "assign"  # assign: their indexed assignment (one row per class) | count: a count (the paper)

    def __post_init__(self) -> None:
        if self.tally not in TALLIES:
            raise LongtailError(f"unknown ACR tally {self.tally!r}", "use assign (their code) or count (the paper)")
        if not 0.0 <= self.ema_u <= 1.0:
            raise LongtailError(f"ACR's ema_u must lie in [0, 1], got {self.ema_u}", "their commands use 0.99")
        if self.steps_per_epoch < 1 or self.est_epoch < -1:
            raise LongtailError(f"ACR needs steps_per_epoch >= 1 and est_epoch >= -1, got {self.steps_per_epoch}, "
                                f"{self.est_epoch}", "theirs: 500 steps per epoch, est_epoch 5")
        if not self.temperature > 0:
            raise LongtailError(f"ACR's temperature must be > 0, got {self.temperature}", "theirs is 1")

    @property
    def tau_max(self) -> float:
        return self.tau1  # args.taumax = args.tau1


# --- the formulas ------------------------------------------------------------------------------------------------

def adjustment(prior: Tensor, tau: float | Tensor) -> Tensor:
    """``log(prior^tau + 1e-12)`` in float64 (their ``compute_adjustment_by_py``)."""
    p = prior.double()
    t = tau.double() if isinstance(tau, Tensor) else tau
    return torch.log(p ** t + 1e-12)


def anchors(prior: Tensor) -> Tensor:
    """(3, C) float64: the labeled prior ("consistent"), uniform, and the prior reversed (their ``py_con``,
    ``py_uni``, ``py_rev = flip(py_con)``)."""
    p = prior.double()
    return torch.stack([p, torch.full_like(p, 1.0 / p.numel()), p.flip(0)])


def distances(u: Tensor, anchor: Tensor) -> Tensor:
    """(3,) float64: ``(KL(u || a) + KL(a || u)) / 2`` for each row ``a`` of ``anchor`` (their ``0.5 *
    KL_div(a.log(), u) + 0.5 * KL_div(u.log(), a)`` with ``KLDivLoss(reduction='sum')``)."""
    u = u.double()
    return torch.stack([0.5 * F.kl_div(a.log(), u, reduction="sum") + 0.5 * F.kl_div(u.log(), a, reduction="sum")
                        for a in anchor.double()])


def adaptive_tau(mean_distances: Tensor, tau_min: float, tau_max: float) -> Tensor:
    """``tau_min + (tau_max - tau_min) * softmax(d)[0]`` for ``d = (d_con, d_uni, d_rev)`` (0-dim)."""
    d = mean_distances
    share = torch.exp(d[0]) / (torch.exp(d[0]) + torch.exp(d[1]) + torch.exp(d[2]))
    return tau_min + (tau_max - tau_min) * share


def tally(labels: Tensor, weights: Tensor, num_classes: int, rule: str = "assign") -> Tensor:
    """(C,) float32 per-class tally of ``weights`` (B,) at ``labels`` (B,).

    ``assign``: their ``now_mask[labels] += weights`` on a zero vector, an indexed assignment: class ``c`` gets the
    weight of the last row labeled ``c`` (0 for a class no row has). ``count``: the sum of the weights per class.
    """
    w = weights.float()
    if rule == "count":
        return torch.bincount(labels, weights=w, minlength=num_classes).float()
    if rule != "assign":
        raise LongtailError(f"unknown ACR tally {rule!r}", "use assign or count")
    pos = torch.arange(labels.numel(), device=labels.device)
    last = torch.full((num_classes,), -1, dtype=torch.long, device=labels.device)
    last = last.scatter_reduce(0, labels, pos, reduce="amax", include_self=True)
    return torch.where(last >= 0, w[last.clamp_min(0)] if w.numel() else w.new_zeros(num_classes), w.new_zeros(()))


def update_estimate(u: Tensor, tallied: Tensor, ema_u: float) -> tuple[Tensor, Tensor]:
    """``(u', updated)``: ``u' = ema_u u + (1 - ema_u) n / sum n`` when ``sum n > 0`` (``updated`` True), else ``u``;
    no host synchronisation."""
    total = tallied.sum()
    updated = total > 0
    n = tallied / torch.where(updated, total, torch.ones_like(total))
    return torch.where(updated, ema_u * u + (1 - ema_u) * n, u), updated


class ACRTargets(NamedTuple):
    """The pseudo-labels of one step's weak views (``Bu`` rows each): no gradient."""

    labels: Tensor  # (Bu,) the standard head's target q: argmax of its weak logits adjusted by adj(tau)
    keep: Tensor  # (Bu,) bool: q's adjusted confidence or the standard head's plain one >= threshold
    labels_b: Tensor  # (Bu,) the balanced head's target q2: the standard head's weak logits adjusted by adj(tau12)
    keep_b: Tensor  # (Bu,) bool: q2's confidence or the balanced head's own >= threshold
    balanced: Tensor  # (Bu,) argmax of the balanced head's weak logits (the estimate's pseudo-labels)
    balanced_confident: Tensor  # (Bu,) bool: their confidence >= threshold
    confident: Tensor  # (Bu,) bool: q's adjusted confidence >= threshold (their logged mask rate)


def acr_targets(weak: Tensor, weak_b: Tensor, adj: Tensor, adj12: Tensor, *, threshold: float,
                temperature: float = 1.0) -> ACRTargets:
    """ACR's pseudo-labels from the standard (``weak``) and balanced (``weak_b``) heads' weak-view logits (Bu, C)."""
    with torch.no_grad():
        z, zb = weak.detach(), weak_b.detach()
        conf, labels = torch.softmax((z.double() - adj.to(z.device)) / temperature, dim=-1).max(dim=-1)
        conf_h2, labels_h2 = torch.softmax((z.double() - adj12.to(z.device)) / temperature, dim=-1).max(dim=-1)
        conf_b, labels_b = torch.softmax(zb / temperature, dim=-1).max(dim=-1)
        conf_t = torch.softmax(z / temperature, dim=-1).max(dim=-1).values
        mask, mask_h2, mask_b, mask_t = (c.ge(threshold) for c in (conf, conf_h2, conf_b, conf_t))
    return ACRTargets(labels, mask | mask_t, labels_h2, mask_b | mask_h2, labels_b, mask_b, mask)


def masked_ce(logits: Tensor, labels: Tensor, keep: Tensor) -> Tensor:
    """``mean_i 1[keep_i] CE(logits_i, labels_i)`` over all rows."""
    return (F.cross_entropy(logits.float(), labels, reduction="none") * keep.float()).mean()


class ACRLoss(NamedTuple):
    total: Tensor
    lx: Tensor
    lx_b: Tensor
    lu: Tensor
    lu_b: Tensor


def acr_loss(logits_x: Tensor, logits_x_b: Tensor, strong: Tensor, strong_b: Tensor, labels: Tensor,
             targets: ACRTargets, adj2: Tensor) -> ACRLoss:
    """One step's loss (module docstring). ``strong``/``strong_b``: (2 Bu, C), the first strong views' rows then the
    second's (their ``torch.cat([logits_u_s, logits_u_s1])``); each view takes the same targets."""
    lx = F.cross_entropy(logits_x.float(), labels)
    lx_b = F.cross_entropy(logits_x_b.float() + adj2.to(logits_x_b.device, torch.float32), labels)
    lu = masked_ce(strong, targets.labels.repeat(2), targets.keep.repeat(2))
    lu_b = masked_ce(strong_b, targets.labels_b.repeat(2), targets.keep_b.repeat(2))
    return ACRLoss(lx + lu + lx_b + lu_b, lx, lx_b, lu, lu_b)


# --- the network ---------------------------------------------------------------------------------------------------

# --- the task ------------------------------------------------------------------------------------------------------

def full_batch_draw(n: int, batch: int, count: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``count`` rows of ``range(n)`` as chained random permutations, each cut to ``(n // batch) * batch`` rows (a
    shuffled ``DataLoader(drop_last=True)`` restarted whenever it runs out)."""
    per = n // batch * batch
    if per == 0:
        raise LongtailError(f"ACR draws whole batches of {batch} (drop_last) from {n} images",
                            "use a smaller batch (train.batch_size, semi.mu) or more images")
    rounds = -(-count // per)
    perms = [torch.randperm(n, generator=generator, device=generator.device)[:per] for _ in range(rounds)]
    return torch.cat(perms)[:count].to(device) if perms else torch.zeros(0, dtype=torch.long, device=device)


def pool_labeled_rows(train: ImageSet, unlabeled: UnlabeledSet) -> Tensor:
    """(N_u,) bool: the pool's rows that are labeled images (same ``source_index``): their ``-2`` marks. Only
    meaningful when both were cut from one source (the DARP protocol with ``data.darp_include_labeled``)."""
    assert train.source_index is not None and unlabeled.source_index is not None
    return torch.isin(unlabeled.source_index, train.source_index.to(unlabeled.source_index.device))


class ACRBatch(NamedTuple):
    """Normalised labeled images (weak view) with labels, and the pool's weak view and two strong views."""

    images: Tensor
    labels: Tensor
    index: Tensor  # type: ignore[assignment]  # a field named like tuple.index, which it hides
    u_weak: Tensor
    u_strong: Tensor  # (2 Bu, C, H, W): the first strong views, then the second
    u_labeled: Tensor  # (Bu,) bool: pool rows that are labeled images (left out of the estimate)


class ACRTask:
    """ACR training (module docstring) of an :class:`ACRClassifier` on a labeled set and a pool.

    ``weak``: the labeled and weak view (their flip + reflect-padded crop); ``strong``: the strong views (default:
    ``weak`` + RandAugment(2, fixmatch policy) + Cutout 0.5, their ``RandAugmentMC(n=2, m=10)``); ``pool_labeled``
    (N_u,) bool marks the pool's labeled images (None: none). ``last_mask_rate``: the share of the last batch's
    unlabeled rows whose adjusted pseudo-label is confident; ``tau``: the standard head's current adjustment.
    """

    multi_process = False  # it keeps per-process state (the estimate)
    image_files = False  # it draws its own batches from tensors
    graphable = False  # the loss reads and updates the estimate

    def __init__(self, train: ImageSet, unlabeled: UnlabeledSet, *, batch_size: int, mu: int = 1,
                 threshold: float = 0.95, settings: ACRSettings | None = None, weak: Augment | None = None,
                 strong: Augment | None = None, pool_labeled: Tensor | None = None) -> None:
        if not 0.0 <= threshold <= 1.0 or mu < 1:
            raise LongtailError(f"ACR needs 0 <= threshold <= 1 and mu >= 1, got {threshold}, {mu}",
                                "theirs: threshold 0.95, mu 1")
        if len(unlabeled) == 0:
            raise LongtailError("ACR needs unlabeled images but the pool is empty",
                                "use data.protocol=darp or give an unlabeled pool")
        if unlabeled.class_names != train.class_names or unlabeled.image_shape != train.image_shape:
            raise LongtailError("the unlabeled pool does not match the labeled data (classes or image shape)")
        self.settings = s = settings if settings is not None else ACRSettings()
        self.train, self.unlabeled = train, unlabeled
        self.batch_size, self.mu, self.threshold = int(batch_size), int(mu), float(threshold)
        for size, what in ((len(train), batch_size), (len(unlabeled), batch_size * mu)):
            if size < what:
                raise LongtailError(f"ACR draws whole batches of {what} (drop_last) from {size} images",
                                    "use a smaller batch (train.batch_size, semi.mu) or more images")
        self.weak = weak if weak is not None else Augment()
        self.strong = strong if strong is not None else Augment(
            crop_padding=self.weak.crop_padding, flip=self.weak.flip, padding_mode=self.weak.padding_mode,
            randaugment=2, cutout=0.5, policy="fixmatch")
        if pool_labeled is None:
            pool_labeled = torch.zeros(len(unlabeled), dtype=torch.bool)
        if pool_labeled.shape != (len(unlabeled),):
            raise LongtailError(f"pool_labeled has shape {tuple(pool_labeled.shape)} for {len(unlabeled)} pool rows")
        self.pool_labeled = pool_labeled.bool().to(unlabeled.images.device)
        counts = train.class_counts()
        counts.require_nonempty(train.class_names)
        C = train.num_classes
        n = counts.tensor(dtype=torch.float64)
        self.prior = n / n.sum()  # their py_con
        self.anchors = anchors(self.prior)
        self.adj12, self.adj2 = adjustment(self.prior, s.tau12), adjustment(self.prior, s.tau2)
        self.tau = torch.tensor(float(s.tau1), dtype=torch.float64)
        self.adj = adjustment(self.prior, s.tau1)
        self.u_py = torch.full((C,), 1.0 / C)  # their args.u_py, float32
        self.distance_sum = torch.zeros(3)  # their count_KL, float32
        self.epoch = 0
        self.last_mask_rate: Tensor | None = None
        self.to(train.device)

    # the loop's hooks ------------------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> "ACRTask":
        self.train, self.unlabeled = self.train.to(device), self.unlabeled.to(device)
        for name in ("pool_labeled", "prior", "anchors", "adj12", "adj2", "tau", "adj", "u_py", "distance_sum"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @property
    def estimating(self) -> bool:
        return self.epoch > self.settings.est_epoch

    def on_epoch_start(self, epoch: int) -> None:
        s = self.settings
        self.epoch = epoch
        if self.estimating:
            tau = adaptive_tau(self.distance_sum / s.steps_per_epoch, s.tau_min, s.tau_max)
            if not math.isnan(float(tau)):  # their `if math.isnan(tau) == False`
                self.tau = tau.double()
                self.adj = adjustment(self.prior, self.tau)
        self.distance_sum = torch.zeros_like(self.distance_sum)

    @property
    def steps_per_epoch(self) -> int:
        return self.settings.steps_per_epoch

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[ACRBatch]:
        steps, b, bu = self.steps_per_epoch, self.batch_size, self.batch_size * self.mu
        tr, un = self.train, self.unlabeled
        order = full_batch_draw(len(tr), b, steps * b, generator, tr.device)
        u_order = full_batch_draw(len(un), bu, steps * bu, generator, un.images.device)
        for k in range(steps):
            idx, u_idx = order[k * b:(k + 1) * b], u_order[k * bu:(k + 1) * bu]
            x = self.weak(tr.images[idx], generator)
            u = un.images[u_idx]
            u_weak = self.weak(u, generator)
            s1, s2 = self.strong(u, generator), self.strong(u, generator)
            yield ACRBatch(normalize(x, tr.mean, tr.std), tr.labels[idx], idx, normalize(u_weak, un.mean, un.std),
                           normalize(torch.cat([s1, s2]), un.mean, un.std), self.pool_labeled[u_idx])

    def loss(self, model: nn.Module, batch: ACRBatch) -> Tensor:
        outputs = getattr(model, "train_outputs", None)
        if outputs is None:
            raise LongtailError(f"ACR trains a model with two heads, got {type(model).__name__}",
                                "build the model from a config with semi.method=acr (longtail.models.build_model)")
        b, bu = batch.images.shape[0], batch.u_weak.shape[0]
        std, bal = outputs(torch.cat([batch.images, batch.u_weak, batch.u_strong]))
        std, bal = std.float(), bal.float()
        targets = acr_targets(std[b:b + bu], bal[b:b + bu], self.adj, self.adj12, threshold=self.threshold,
                              temperature=self.settings.temperature)
        if self.estimating and model.training:
            self.observe(targets.balanced, targets.balanced_confident & ~batch.u_labeled)
        self.last_mask_rate = targets.confident.float().mean()
        return acr_loss(std[:b], bal[:b], std[b + bu:], bal[b + bu:], batch.labels, targets, self.adj2).total

    def observe(self, labels: Tensor, use: Tensor) -> None:
        """One step of the estimate: tally ``labels`` where ``use``, update ``u``, add its distances to the sum."""
        with torch.no_grad():
            n = tally(labels, use.float(), self.u_py.numel(), self.settings.tally)
            self.u_py, updated = update_estimate(self.u_py, n, self.settings.ema_u)
            d = distances(self.u_py, self.anchors)  # float64, added to the float32 sum in float64 (theirs)
            self.distance_sum = (self.distance_sum.double() + torch.where(updated, d, torch.zeros_like(d))).float()

    # what a checkpoint carries ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The estimate, the epoch's distance sum and the current tau: what an exact resume needs."""
        return {"u_py": self.u_py.detach().cpu().clone(), "distance_sum": self.distance_sum.detach().cpu().clone(),
                "tau": float(self.tau)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        dev = self.u_py.device
        self.u_py = state["u_py"].to(dev, torch.float32)
        self.distance_sum = state["distance_sum"].to(dev, torch.float32)
        self.tau = torch.tensor(float(state["tau"]), dtype=torch.float64, device=dev)
        self.adj = adjustment(self.prior, self.tau)


def acr_settings(semi: Any) -> ACRSettings:
    """The :class:`ACRSettings` of a config's ``semi`` section: ``semi.acr_<name>`` for each setting (a missing one
    keeps its default)."""
    names = [f.name for f in fields(ACRSettings)]
    return ACRSettings(**{n: getattr(semi, f"acr_{n}") for n in names if hasattr(semi, f"acr_{n}")})


def check_acr(cfg: RunConfig) -> None:
    """Refuse the settings an ACR run cannot keep, each with its fix (cheap: builds nothing)."""
    t = cfg.train
    refuse: list[tuple[bool, str, str]] = [
        (t.sampler != "instance", f"ACR draws plain shuffled batches; train.sampler={t.sampler} is not supported",
         "set --set train.sampler=instance"),
        (t.weighting != "none" or t.drw_start is not None, "ACR re-balances through its balanced head; "
         f"train.weighting={t.weighting}, train.drw_start={t.drw_start} are not supported",
         "set --set train.weighting=none --set train.drw_start=none"),
        (cfg.loss.name != "ce", f"ACR's losses are its own cross-entropies on two heads, not loss.name="
         f"{cfg.loss.name}", "set --set loss.name=ce"),
        (cfg.augment.mix != "none", f"augment.mix={cfg.augment.mix} on an ACR run is not supported",
         "set --set augment.mix=none"),
        (cfg.data.pseudo_labels is not None, "ACR with pseudo-labels is not supported",
         "train without data.pseudo_labels"),
        (cfg.mfw.strength > 0, "ACR with major feature weakening is not supported", "set --set mfw.strength=0"),
        (t.freeze_backbone, "ACR trains the backbone", "set --set train.freeze_backbone=false"),
        (cfg.semi.lambda_u != 1.0 or cfg.semi.alignment != "none", "ACR weighs its unlabeled losses 1 and adjusts "
         f"its pseudo-labels itself; semi.lambda_u={cfg.semi.lambda_u}, semi.alignment={cfg.semi.alignment} are "
         "FixMatch's", "set --set semi.lambda_u=1 --set semi.alignment=none (ACR's: semi.acr_*)"),
        (cfg.optim.name != "sgd", f"ACR updates its estimate in the loss, which optim.name={cfg.optim.name} would "
         "evaluate twice per step", "set --set optim.name=sgd"),
    ]
    for bad, problem, fix in refuse:
        if bad:
            raise LongtailError(problem, fix)


__all__ = ["ACRBatch", "ACRClassifier", "ACRLoss", "ACRSettings", "ACRTargets", "ACRTask", "TALLIES", "acr_loss",
           "acr_settings", "acr_targets", "adaptive_tau", "adjustment", "anchors", "check_acr", "distances",
           "full_batch_draw", "masked_ce", "pool_labeled_rows", "tally", "update_estimate"]
