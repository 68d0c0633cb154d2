"""Classification losses for long-tailed data.

Each loss is a pure function of ``logits`` ``(B, C)`` and integer ``targets`` ``(B,)``, plus the
per-class tensor it derives from the training counts, and a thin :class:`torch.nn.Module` wrapper
that builds that tensor once from a :class:`~longtail.counts.ClassCounts` and keeps it as a buffer
(so ``loss.to(device)`` moves it).

Per-class weights are an argument of every loss, not a loss of their own, so class-balanced or
deferred re-weighting (:mod:`longtail.weights`) composes with any of them. Each loss reduces a
weighted batch as its reference code does (its docstring says which and why). All but focal use
the convention of ``F.cross_entropy(weight=w)``, which the sources' weighted CE and LDAM use::

    loss = sum_i w[y_i] * l_i / sum_i w[y_i]        (the plain mean when weight is None)

while focal, as the LDAM-DRW code that produced the published CB-focal numbers, takes the plain mean
of the weighted per-example losses (so the weights' scale, sum C, matters there).

A loss is a :class:`Loss` subclass with a ``name``; its parameters (defaults, ranges) are declared
once, in :data:`longtail.config.LOSS_PARAMS`, which ``make_loss`` and the run configuration check.

Example::

    >>> counts = ClassCounts((500, 50, 5))
    >>> loss_fn = make_loss("ldam", counts, max_margin=0.5, scale=30.0)
    >>> loss = loss_fn(torch.zeros(4, 3), torch.tensor([0, 1, 2, 2]))
    >>> loss.shape
    torch.Size([])
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LOSS_PARAMS, LossConfig
from .counts import ClassCounts
from .errors import LongtailError

__all__ = [
    "LOSSES",
    "CDT",
    "LDAM",
    "BalancedSoftmax",
    "CrossEntropy",
    "Focal",
    "Loss",
    "LogitAdjusted",
    "TruncatedVS",
    "VS",
    "adjust_logits",
    "balanced_softmax",
    "cdt",
    "cdt_temperatures",
    "cross_entropy",
    "focal",
    "ldam",
    "ldam_margins",
    "log_prior",
    "logit_adjusted",
    "loss_from_config",
    "make_loss",
    "vs",
    "vs_deltas",
]


# helpers ------------------------------------------------------------------------------------


def _upcast(logits: Tensor) -> Tensor:
    # log-softmax in half precision loses the small probabilities of rare classes, which are
    # exactly the ones long-tailed losses care about: compute in float32 at least.
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _reduce(per_sample: Tensor, targets: Tensor, weight: Tensor | None) -> Tensor:
    """``sum_i w[y_i] l_i / sum_i w[y_i]``, the ``F.cross_entropy(weight=w)`` convention; plain mean if no weight."""
    if weight is None:
        return per_sample.mean()
    w = weight.to(device=per_sample.device, dtype=per_sample.dtype)[targets]  # (B,)
    return (w * per_sample).sum() / w.sum()


def _target_log_prob(logits: Tensor, targets: Tensor) -> Tensor:
    """``log softmax(z)_y`` per sample, ``(B, C), (B,) -> (B,)``."""
    return F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _check_shapes(logits: Tensor, targets: Tensor, per_class: Tensor | None = None) -> None:
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise LongtailError(
            f"a loss needs logits (B, C) and targets (B,), got {tuple(logits.shape)} and {tuple(targets.shape)}",
            "pass the classifier's raw scores and integer class labels of the same batch",
        )
    if per_class is not None and per_class.shape != (logits.shape[1],):
        raise LongtailError(
            f"the loss was built for {per_class.shape[0]} classes but the logits have {logits.shape[1]}",
            "build the loss from the counts of the data set the model is trained on",
        )


def _require_nonempty(counts: ClassCounts, what: str) -> None:
    counts.require_nonempty(because=f"{what} is undefined", alternative="use the 'ce' or 'focal' loss")


# per-class tensors derived from the counts ----------------------------------------------------


def log_prior(counts: ClassCounts) -> Tensor:
    """``log pi_c = log(n_c / N)`` as a ``(C,)`` float32 tensor (computed in float64)."""
    _require_nonempty(counts, "the log prior log(n_c / N) (balanced softmax, logit adjustment)")
    return counts.log_prior()


def ldam_margins(counts: ClassCounts, *, max_margin: float = 0.5) -> Tensor:
    """LDAM margins ``m_c = max_margin * (n_min / n_c)^(1/4)``, a ``(C,)`` float32 tensor.

    Proportional to ``n_c^(-1/4)`` (Cao et al. 2019, Eq. 12), scaled so the rarest class gets
    ``max_margin``.
    """
    _require_nonempty(counts, "the LDAM margin n_c^(-1/4)")
    m = counts.tensor(dtype=torch.float64) ** -0.25
    return (m * (max_margin / m.max())).float()


def cdt_temperatures(counts: ClassCounts, *, gamma: float) -> Tensor:
    """CDT temperatures ``a_c = (n_max / n_c)^gamma``, a ``(C,)`` float32 tensor (>= 1, 1 for the head)."""
    _require_nonempty(counts, "the CDT temperature (n_max / n_c)^gamma")
    n = counts.tensor(dtype=torch.float64)
    return ((n.max() / n) ** gamma).float()


def vs_deltas(counts: ClassCounts, *, gamma: float) -> Tensor:
    """VS's multiplicative adjustment as divisors ``Delta_c = (n_max / n_c)^gamma``, a ``(C,)`` float32 tensor.

    ``>= 1``, 1 for the head class. wang22ti/DDC ``losses.py`` (bcae46e, lines 73-74, 77) builds it as
    ``temp = (1 / n)^gamma; temp / min(temp)`` and divides the logits by it (line 84); Kini et al.'s
    multiplicative factor ``(n_c / n_max)^gamma`` multiplies them, the same thing. The same tensor as
    :func:`cdt_temperatures`.
    """
    _require_nonempty(counts, "the VS factor (n_max / n_c)^gamma")
    n = counts.tensor(dtype=torch.float64)
    return ((n.max() / n) ** gamma).float()


# pure functions ----------------------------------------------------------------------------


def cross_entropy(logits: Tensor, targets: Tensor, *, weight: Tensor | None = None) -> Tensor:
    """Softmax cross-entropy ``l_i = -log softmax(z_i)_{y_i}``; ``(B, C), (B,) -> ()``.

    Weighted, it is ``sum_i w_{y_i} l_i / sum_i w_{y_i}``, ``F.cross_entropy(weight=w)``: what the
    LDAM-DRW code (kaidic/LDAM-DRW, cifar_train.py) runs for CE with class-balanced weights and DRW,
    the source of those published numbers.
    """
    _check_shapes(logits, targets, weight)
    logits = _upcast(logits)
    return _reduce(-_target_log_prob(logits, targets), targets, weight)


def focal(logits: Tensor, targets: Tensor, *, gamma: float = 1.0, weight: Tensor | None = None) -> Tensor:
    """Focal loss (Lin et al., ICCV 2017): ``l_i = (1 - p_t)^gamma * (-log p_t)``, averaged over the batch.

    ``p_t = softmax(z_i)_{y_i}``; ``gamma = 0`` gives cross-entropy. ``(B, C), (B,) -> ()``.

    With per-class ``weight`` (class-balanced focal, Cui et al. 2019) it is the LDAM-DRW code's
    ``FocalLoss(weight=w)`` (kaidic/LDAM-DRW, losses.py), the source of the published CB-focal numbers:
    with ``c_i = w_{y_i} * (-log p_t)`` (``F.cross_entropy(reduction='none', weight=w)``),
    ``l_i = (1 - exp(-c_i))^gamma * c_i`` and the loss is the plain mean of ``l_i`` over the batch. Two
    things differ from the other losses' weighted reduction, both the source's: the result is not
    divided by the sum of the weights (so their scale, sum C in :mod:`longtail.weights`, sets the
    loss and gradient scale, as there), and the weight also enters the modulating factor.
    """
    _check_shapes(logits, targets, weight)
    ce = -_target_log_prob(_upcast(logits), targets)  # (B,)
    if weight is not None:
        ce = weight.to(device=ce.device, dtype=ce.dtype)[targets] * ce
    # 1 - exp(-c) loses all precision as c -> 0 (p_t -> 1); -expm1 keeps it (and the gradient finite).
    modulator = (-torch.expm1(-ce)).clamp_min(0) ** gamma
    return (modulator * ce).mean()


def ldam(
    logits: Tensor, targets: Tensor, margins: Tensor, *, scale: float = 30.0, weight: Tensor | None = None
) -> Tensor:
    """Label-distribution-aware margin loss (Cao et al., NeurIPS 2019).

    ``l_i = CE(scale * (z_i - m_{y_i} * onehot(y_i)), y_i)``: the target logit is lowered by its
    class margin before the softmax, so rare classes (large ``m_c``) must win by more. Meant for a
    cosine classifier whose logits lie in ``[-1, 1]``, hence the ``scale``. ``margins`` is ``(C,)``
    (see :func:`ldam_margins`); zero margins and ``scale = 1`` give cross-entropy.

    Weighted (DRW), it divides by the sum of the weights, as ``LDAMLoss`` in the LDAM-DRW code does
    through ``F.cross_entropy(s * output, target, weight=self.weight)``.
    """
    _check_shapes(logits, targets, margins)
    logits = _upcast(logits)
    shift = F.one_hot(targets, logits.shape[1]).to(logits.dtype) * margins.to(logits.dtype)[targets].unsqueeze(1)
    return cross_entropy(scale * (logits - shift), targets, weight=weight)


def logit_adjusted(
    logits: Tensor, targets: Tensor, log_prior: Tensor, *, tau: float = 1.0, weight: Tensor | None = None
) -> Tensor:
    """Logit-adjusted loss (Menon et al., ICLR 2021): ``l_i = CE(z_i + tau * log pi, y_i)``.

    ``log_prior`` is ``(C,)``, ``log(n_c / N)``. ``tau = 0`` or a uniform prior gives cross-entropy
    (a constant shift of all logits leaves the softmax unchanged).

    The source (google-research, logit_adjustment/main.py) has no per-class weights; given some, the
    reduction is that of :func:`cross_entropy` (divided by their sum), so it composes like CE.
    """
    _check_shapes(logits, targets, log_prior)
    logits = _upcast(logits)
    return cross_entropy(logits + tau * log_prior.to(logits.dtype), targets, weight=weight)


def balanced_softmax(
    logits: Tensor, targets: Tensor, log_prior: Tensor, *, weight: Tensor | None = None
) -> Tensor:
    """Balanced softmax (Ren et al., NeurIPS 2020): ``l_i = CE(z_i + log pi, y_i)``.

    The softmax is re-weighted by the class prior, ``p_c ∝ n_c exp(z_c)``; identical to
    :func:`logit_adjusted` with ``tau = 1``. The source (jiawei-ren/BalancedMetaSoftmax-Classification,
    loss/BalancedSoftmaxLoss.py) adds ``log n_c`` and calls ``F.cross_entropy``, the same loss (the
    constant ``log N`` cancels); weights, which the source does not use, reduce as in :func:`cross_entropy`.
    """
    return logit_adjusted(logits, targets, log_prior, tau=1.0, weight=weight)


def cdt(logits: Tensor, targets: Tensor, temperatures: Tensor, *, weight: Tensor | None = None) -> Tensor:
    """Class-dependent temperatures (Ye et al. 2020, arXiv:2001.01385): ``l_i = CE(z_i / a, y_i)``.

    ``temperatures`` is ``(C,)``, ``a_c = (n_max / n_c)^gamma`` (see :func:`cdt_temperatures`):
    dividing rare-class logits by ``a_c > 1`` during training compensates for their features
    drifting at test time. ``gamma = 0`` (all ``a_c = 1``) gives cross-entropy.

    A released implementation (zhangyongshun/BagofTricks-LT,
    lib/loss/loss_impl/class_dependent_temperatures_loss.py) is ``F.cross_entropy(z / a, y)`` without
    weights; given some, the reduction is that of :func:`cross_entropy` (divided by their sum).
    """
    _check_shapes(logits, targets, temperatures)
    logits = _upcast(logits)
    return cross_entropy(logits / temperatures.to(logits.dtype), targets, weight=weight)


def vs(
    logits: Tensor, targets: Tensor, deltas: Tensor, log_prior: Tensor, *, tau: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Vector-scaling loss (Kini et al., NeurIPS 2021): ``l_i = CE(z_i / Delta + tau * log pi, y_i)``.

    ``deltas`` is ``(C,)``, ``Delta_c = (n_max / n_c)^gamma`` (:func:`vs_deltas`), the multiplicative part
    (rare-class logits shrunk, as :func:`cdt`); ``log_prior`` is ``(C,)``, ``log(n_c / N)``, the additive part
    (as :func:`logit_adjusted`). ``gamma = 0`` gives the logit-adjusted loss, ``tau = 0`` CDT, both CE.

    The formula of ``VSLoss`` in wang22ti/DDC ``losses.py`` (bcae46e, lines 67-86: ``x / Delta_list +
    iota_list``, ``iota_list = tau * np.log(cls_probs)``, then ``F.cross_entropy(output, target,
    weight=self.weight)``; their copy of Kini et al.'s VSLoss, whose own repository was not read): weighted, it
    divides by the sum of the weights, as :func:`cross_entropy`.
    """
    _check_shapes(logits, targets, deltas)
    _check_shapes(logits, targets, log_prior)
    logits = _upcast(logits)
    adjusted = logits / deltas.to(logits.dtype) + tau * log_prior.to(logits.dtype)
    return cross_entropy(adjusted, targets, weight=weight)


def adjust_logits(logits: Tensor, counts: ClassCounts, tau: float = 1.0) -> Tensor:
    """Post-hoc logit adjustment (Menon et al., ICLR 2021): ``z - tau * log pi``, ``(B, C) -> (B, C)``.

    Applied at test time to a model trained with plain cross-entropy, it removes the training prior
    from the scores so the argmax targets the balanced error.
    """
    lp = log_prior(counts).to(device=logits.device, dtype=_upcast(logits).dtype)
    return logits - tau * lp


# modules -----------------------------------------------------------------------------------

_CLASSES: dict[str, type[Loss]] = {}


class Loss(nn.Module):
    """A registered loss: ``cls(counts, **params)``, called as ``loss(logits, targets, weight=None)``.

    A subclass that sets ``name`` is registered under it; its keyword-only parameters are those
    :data:`longtail.config.LOSS_PARAMS` declares for ``name`` (the config checks them, fills in their
    defaults and ``make_loss`` passes them).
    """

    name: ClassVar[str]
    #: how a weighted batch is reduced: "weight-sum" (``sum_i w_i l_i / sum_i w_i``, ``F.cross_entropy``'s) or
    #: "batch" (``sum_i l_i / B`` with the weights inside ``l_i``, focal's); a caller that re-weights groups
    #: of a batch (``longtail.semi.task.group_weighted_loss``) needs to know which
    normalisation: ClassVar[str] = "weight-sum"

    def __init__(self, counts: ClassCounts | None = None, **params: float) -> None:
        super().__init__()  # each loss takes its own keyword-only parameters and builds from counts

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # declared here, not inherited
            _CLASSES[cls.name] = cls


class CrossEntropy(Loss):
    """Softmax cross-entropy; ``counts`` is accepted (and ignored) so every loss is built alike."""

    name = "ce"

    def __init__(self, counts: ClassCounts | None = None) -> None:
        super().__init__()

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return cross_entropy(logits, targets, weight=weight)


class Focal(Loss):
    """Focal loss ``(1 - p_t)^gamma * CE`` (Lin et al. 2017); the reference recipe uses ``gamma = 1``.

    Weighted, it is the LDAM-DRW code's ``FocalLoss(weight=w)``: a plain batch mean, see :func:`focal`.
    """

    name = "focal"
    normalisation = "batch"

    def __init__(self, counts: ClassCounts | None = None, *, gamma: float = 1.0) -> None:
        super().__init__()
        if gamma < 0:
            raise LongtailError(f"focal gamma must be >= 0, got {gamma}", "use e.g. gamma=1.0 (0 is cross-entropy)")
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return focal(logits, targets, gamma=self.gamma, weight=weight)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


class LDAM(Loss):
    """LDAM loss (Cao et al. 2019): margins ``∝ n_c^(-1/4)``, the largest ``max_margin``, logits x ``scale``."""

    name = "ldam"
    margins: Tensor

    def __init__(self, counts: ClassCounts, *, max_margin: float = 0.5, scale: float = 30.0) -> None:
        super().__init__()
        if max_margin < 0 or scale <= 0:
            raise LongtailError(
                f"LDAM needs max_margin >= 0 and scale > 0, got {max_margin} and {scale}",
                "the reference uses max_margin=0.5, scale=30 with a cosine classifier",
            )
        # Not persistent: derived from the counts, rebuilt whenever the loss is built.
        self.register_buffer("margins", ldam_margins(counts, max_margin=max_margin), persistent=False)
        self.max_margin, self.scale = float(max_margin), float(scale)

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return ldam(logits, targets, self.margins, scale=self.scale, weight=weight)

    def extra_repr(self) -> str:
        return f"max_margin={self.max_margin}, scale={self.scale}"


class LogitAdjusted(Loss):
    """Logit-adjusted loss ``CE(z + tau * log pi)`` (Menon et al. 2021)."""

    name = "logit-adjust"
    log_prior: Tensor

    def __init__(self, counts: ClassCounts, *, tau: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("log_prior", log_prior(counts), persistent=False)
        self.tau = float(tau)

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return logit_adjusted(logits, targets, self.log_prior, tau=self.tau, weight=weight)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


class BalancedSoftmax(Loss):
    """Balanced softmax ``CE(z + log pi)`` (Ren et al. 2020)."""

    name = "balanced-softmax"
    log_prior: Tensor

    def __init__(self, counts: ClassCounts) -> None:
        super().__init__()
        self.register_buffer("log_prior", log_prior(counts), persistent=False)

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return balanced_softmax(logits, targets, self.log_prior, weight=weight)


class CDT(Loss):
    """Class-dependent temperatures ``CE(z / a)``, ``a_c = (n_max / n_c)^gamma`` (Ye et al. 2020).

    ``gamma`` has no default: the paper tunes it per data set on validation data (CIFAR-10-LT in
    ``[0, 0.4]``).
    """

    name = "cdt"
    temperatures: Tensor

    def __init__(self, counts: ClassCounts, *, gamma: float) -> None:
        super().__init__()
        if gamma < 0:
            raise LongtailError(f"CDT gamma must be >= 0, got {gamma}", "use e.g. gamma=0.2 (0 is cross-entropy)")
        self.register_buffer("temperatures", cdt_temperatures(counts, gamma=gamma), persistent=False)
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return cdt(logits, targets, self.temperatures, weight=weight)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


class VS(Loss):
    """Vector-scaling loss ``CE(z / Delta + tau * log pi)``, ``Delta_c = (n_max / n_c)^gamma`` (Kini et al. 2021).

    Defaults are those of ``VSLoss`` in wang22ti/DDC ``losses.py`` (line 69): ``gamma = 0.3``, ``tau = 1``.
    """

    name = "vs"
    deltas: Tensor
    log_prior: Tensor

    def __init__(self, counts: ClassCounts, *, gamma: float = 0.3, tau: float = 1.0) -> None:
        super().__init__()
        if gamma < 0:
            raise LongtailError(f"VS gamma must be >= 0, got {gamma}", "use e.g. gamma=0.05 (0 is logit adjustment)")
        self.register_buffer("deltas", vs_deltas(counts, gamma=gamma), persistent=False)
        self.register_buffer("log_prior", log_prior(counts), persistent=False)
        self.gamma, self.tau = float(gamma), float(tau)

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return vs(logits, targets, self.deltas, self.log_prior, tau=self.tau, weight=weight)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, tau={self.tau}"


class TruncatedVS(VS):
    """VS with truncated logit adjustment (TLA; Wang et al., NeurIPS 2023): the VS loss until the deferred
    re-weighting starts, then its multiplicative part dropped, ``CE(z + late_tau * log pi)``.

    The source is wang22ti/DDC at bcae46e (identical at 4bd4fb3). ``cifar_train_sam.py`` lines 279-282 and
    288-291: ``if args.loss_type == 'VS' and '-T' in args.train_rule and epoch + 1 > args.t_reweight:
    loss = criterion(output, target, False)``, where ``False`` is ``VSLoss.forward``'s
    ``use_multiplicative`` (``losses.py`` line 84: ``x + self.iota_list`` instead of ``x / self.Delta_list +
    self.iota_list``). ``-T`` is an option of the re-weighting rule (``ADRW-T``, ``DRW-T``) and ``t_reweight``
    (line 74, ``(epochs // 200) * 160``) is the epoch the deferred weights switch on (lines 209-216), so the
    truncation starts exactly when the deferred re-weighting does. Reading chosen: the loss is told so by
    whoever applies the weighting: :meth:`truncate` with
    :func:`longtail.weights.reweighting_started` of the run's weighting at each epoch's start; a constant
    weighting (or none) never truncates, as the source has no ``-T`` without deferral. Until it is told, it
    is the VS loss.

    ``late_tau`` is the log prior's weight once truncated. In one run of their script it equals ``tau``; their
    published 400-epoch numbers resume a plain VS run (``--tau 1.0``) at epoch 320 with an ``ADRW-T`` command
    whose ``--tau`` is that of the truncated stage (``bash_script.sh``: 1.0 on CIFAR-10-LT, 0.75 on
    CIFAR-100-LT), hence a parameter of its own. The stage is not checkpointed: it is a function of the epoch,
    set again at every epoch's start.
    """

    name = "vs-tla"

    def __init__(self, counts: ClassCounts, *, gamma: float = 0.3, tau: float = 1.0, late_tau: float = 1.0) -> None:
        super().__init__(counts, gamma=gamma, tau=tau)
        self.late_tau = float(late_tau)
        self.truncated = False

    def truncate(self, on: bool = True) -> None:
        """From now on (``on``), or no longer, drop the multiplicative part: ``CE(z + late_tau * log pi)``."""
        self.truncated = bool(on)

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        if self.truncated:
            return logit_adjusted(logits, targets, self.log_prior, tau=self.late_tau, weight=weight)
        return vs(logits, targets, self.deltas, self.log_prior, tau=self.tau, weight=weight)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, tau={self.tau}, late_tau={self.late_tau}, truncated={self.truncated}"


# registry ----------------------------------------------------------------------------------

#: Loss name (as used in configs and on the command line) -> class ``cls(counts, **params)``, in the
#: order of ``longtail.config.LOSS_PARAMS``, which declares each one's parameters.
LOSSES: dict[str, type[Loss]] = {name: _CLASSES[name] for name in LOSS_PARAMS}


def make_loss(name: str, counts: ClassCounts, **params: float) -> Loss:
    """Build the registered loss ``name`` for ``counts`` with its parameters (the declared defaults for
    those not given; an unknown or out-of-range one is refused with the valid ones).

    >>> make_loss("focal", ClassCounts((10, 1)), gamma=2.0)
    Focal(gamma=2.0)
    """
    return loss_from_config(LossConfig(name, params), counts)


def loss_from_config(lc: LossConfig, counts: ClassCounts) -> Loss:
    """The loss that ``LossConfig`` describes, with its own (already checked) parameters."""
    return LOSSES[lc.name](counts, **lc.params)
