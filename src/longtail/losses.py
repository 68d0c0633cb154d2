"""Classification losses for long-tailed data.

Each loss is a pure function of ``logits`` ``(B, C)`` and integer ``targets`` ``(B,)``, plus the
per-class tensor it derives from the training counts, and a thin :class:`torch.nn.Module` wrapper
that builds that tensor once from a :class:`~longtail.counts.ClassCounts` and keeps it as a buffer
(so ``loss.to(device)`` moves it).

Per-class weights are an argument of every loss, not a loss of their own, so class-balanced or
deferred re-weighting (:mod:`longtail.weights`) composes with any of them. The reduction is that
of ``F.cross_entropy``::

    loss = sum_i w[y_i] * l_i / sum_i w[y_i]        (the plain mean when weight is None)

Example::

    >>> counts = ClassCounts((500, 50, 5))
    >>> loss_fn = make_loss("ldam", counts, max_margin=0.5, scale=30.0)
    >>> loss = loss_fn(torch.zeros(4, 3), torch.tensor([0, 1, 2, 2]))
    >>> loss.shape
    torch.Size([])
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LossConfig
from .counts import ClassCounts
from .errors import LongtailError

__all__ = [
    "LOSSES",
    "CDT",
    "LDAM",
    "BalancedSoftmax",
    "CrossEntropy",
    "Focal",
    "LogitAdjusted",
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
    "make_loss",
]


# helpers ------------------------------------------------------------------------------------


def _upcast(logits: Tensor) -> Tensor:
    # log-softmax in half precision loses the small probabilities of rare classes, which are
    # exactly the ones long-tailed losses care about: compute in float32 at least.
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _reduce(per_sample: Tensor, targets: Tensor, weight: Tensor | None) -> Tensor:
    """``sum_i w[y_i] l_i / sum_i w[y_i]``, the ``F.cross_entropy`` convention; plain mean if no weight."""
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


# pure functions ----------------------------------------------------------------------------


def cross_entropy(logits: Tensor, targets: Tensor, *, weight: Tensor | None = None) -> Tensor:
    """Softmax cross-entropy ``l_i = -log softmax(z_i)_{y_i}``; ``(B, C), (B,) -> ()``."""
    _check_shapes(logits, targets, weight)
    logits = _upcast(logits)
    return _reduce(-_target_log_prob(logits, targets), targets, weight)


def focal(logits: Tensor, targets: Tensor, *, gamma: float = 1.0, weight: Tensor | None = None) -> Tensor:
    """Focal loss (Lin et al., ICCV 2017): ``l_i = (1 - p_t)^gamma * (-log p_t)``.

    ``p_t = softmax(z_i)_{y_i}``; ``gamma = 0`` gives cross-entropy. ``(B, C), (B,) -> ()``.
    Unlike the LDAM reference code, ``p_t`` is the model's probability even when ``weight`` is
    given (the reference takes ``exp(-weighted CE)``, which mixes the weight into ``p_t``).
    """
    _check_shapes(logits, targets, weight)
    logp = _target_log_prob(_upcast(logits), targets)  # (B,)
    # 1 - exp(logp) loses all precision as p_t -> 1; -expm1 keeps it (and the gradient finite).
    modulator = (-torch.expm1(logp)).clamp_min(0) ** gamma
    return _reduce(modulator * -logp, targets, weight)


def ldam(
    logits: Tensor, targets: Tensor, margins: Tensor, *, scale: float = 30.0, weight: Tensor | None = None
) -> Tensor:
    """Label-distribution-aware margin loss (Cao et al., NeurIPS 2019).

    ``l_i = CE(scale * (z_i - m_{y_i} * onehot(y_i)), y_i)``: the target logit is lowered by its
    class margin before the softmax, so rare classes (large ``m_c``) must win by more. Meant for a
    cosine classifier whose logits lie in ``[-1, 1]``, hence the ``scale``. ``margins`` is ``(C,)``
    (see :func:`ldam_margins`); zero margins and ``scale = 1`` give cross-entropy.
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
    """
    _check_shapes(logits, targets, log_prior)
    logits = _upcast(logits)
    return cross_entropy(logits + tau * log_prior.to(logits.dtype), targets, weight=weight)


def balanced_softmax(
    logits: Tensor, targets: Tensor, log_prior: Tensor, *, weight: Tensor | None = None
) -> Tensor:
    """Balanced softmax (Ren et al., NeurIPS 2020): ``l_i = CE(z_i + log pi, y_i)``.

    The softmax is re-weighted by the class prior, ``p_c ∝ n_c exp(z_c)``; identical to
    :func:`logit_adjusted` with ``tau = 1``.
    """
    return logit_adjusted(logits, targets, log_prior, tau=1.0, weight=weight)


def cdt(logits: Tensor, targets: Tensor, temperatures: Tensor, *, weight: Tensor | None = None) -> Tensor:
    """Class-dependent temperatures (Ye et al. 2020, arXiv:2001.01385): ``l_i = CE(z_i / a, y_i)``.

    ``temperatures`` is ``(C,)``, ``a_c = (n_max / n_c)^gamma`` (see :func:`cdt_temperatures`):
    dividing rare-class logits by ``a_c > 1`` during training compensates for their features
    drifting at test time. ``gamma = 0`` (all ``a_c = 1``) gives cross-entropy.
    """
    _check_shapes(logits, targets, temperatures)
    logits = _upcast(logits)
    return cross_entropy(logits / temperatures.to(logits.dtype), targets, weight=weight)


def adjust_logits(logits: Tensor, counts: ClassCounts, tau: float = 1.0) -> Tensor:
    """Post-hoc logit adjustment (Menon et al., ICLR 2021): ``z - tau * log pi``, ``(B, C) -> (B, C)``.

    Applied at test time to a model trained with plain cross-entropy, it removes the training prior
    from the scores so the argmax targets the balanced error.
    """
    lp = log_prior(counts).to(device=logits.device, dtype=_upcast(logits).dtype)
    return logits - tau * lp


# modules -----------------------------------------------------------------------------------


class CrossEntropy(nn.Module):
    """Softmax cross-entropy; ``counts`` is accepted (and ignored) so every loss is built alike."""

    def __init__(self, counts: ClassCounts | None = None) -> None:
        super().__init__()

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return cross_entropy(logits, targets, weight=weight)


class Focal(nn.Module):
    """Focal loss ``(1 - p_t)^gamma * CE`` (Lin et al. 2017); the reference recipe uses ``gamma = 1``."""

    def __init__(self, counts: ClassCounts | None = None, *, gamma: float = 1.0) -> None:
        super().__init__()
        if gamma < 0:
            raise LongtailError(f"focal gamma must be >= 0, got {gamma}", "use e.g. gamma=1.0 (0 is cross-entropy)")
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return focal(logits, targets, gamma=self.gamma, weight=weight)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


class LDAM(nn.Module):
    """LDAM loss (Cao et al. 2019): margins ``∝ n_c^(-1/4)``, the largest ``max_margin``, logits x ``scale``."""

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


class LogitAdjusted(nn.Module):
    """Logit-adjusted loss ``CE(z + tau * log pi)`` (Menon et al. 2021)."""

    log_prior: Tensor

    def __init__(self, counts: ClassCounts, *, tau: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("log_prior", log_prior(counts), persistent=False)
        self.tau = float(tau)

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return logit_adjusted(logits, targets, self.log_prior, tau=self.tau, weight=weight)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


class BalancedSoftmax(nn.Module):
    """Balanced softmax ``CE(z + log pi)`` (Ren et al. 2020)."""

    log_prior: Tensor

    def __init__(self, counts: ClassCounts) -> None:
        super().__init__()
        self.register_buffer("log_prior", log_prior(counts), persistent=False)

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return balanced_softmax(logits, targets, self.log_prior, weight=weight)


class CDT(nn.Module):
    """Class-dependent temperatures ``CE(z / a)``, ``a_c = (n_max / n_c)^gamma`` (Ye et al. 2020).

    ``gamma`` has no default: the paper tunes it per data set on validation data (CIFAR-10-LT in
    ``[0, 0.4]``).
    """

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


# registry ----------------------------------------------------------------------------------

#: Loss name (as used in configs and on the command line) -> module class ``cls(counts, **params)``.
LOSSES: dict[str, type[nn.Module]] = {
    "ce": CrossEntropy,
    "focal": Focal,
    "ldam": LDAM,
    "balanced-softmax": BalancedSoftmax,
    "logit-adjust": LogitAdjusted,
    "cdt": CDT,
}


def make_loss(name: str, counts: ClassCounts, **params: float) -> nn.Module:
    """Build the registered loss ``name`` for ``counts`` with its keyword hyperparameters.

    >>> make_loss("focal", ClassCounts((10, 1)), gamma=2.0)
    Focal(gamma=2.0)
    """
    if name not in LOSSES:
        raise LongtailError(f"unknown loss {name!r}", f"use one of {', '.join(LOSSES)}")
    cls = LOSSES[name]
    # Check the parameters here rather than letting __init__ raise a TypeError, so a typo in a
    # config or on the command line gets the list of valid names.
    sig = inspect.signature(cls.__init__)
    kw = {p.name: p for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    valid = ", ".join(kw) or "none"
    unknown = sorted(set(params) - set(kw))
    if unknown:
        raise LongtailError(
            f"loss {name!r} has no parameter(s) {', '.join(unknown)}", f"its parameters are: {valid}"
        )
    missing = [k for k, p in kw.items() if p.default is inspect.Parameter.empty and k not in params]
    if missing:
        hint = ", ".join(f"{k}=..." for k in missing)
        raise LongtailError(f"loss {name!r} needs the parameter(s) {', '.join(missing)}", f"pass {hint}")
    return cls(counts, **params)


def loss_params(lc: LossConfig) -> dict[str, float]:
    """The loss's own hyperparameters, from the flat ``LossConfig``."""
    return {
        "ce": {},
        "focal": {"gamma": lc.focal_gamma},
        "ldam": {"max_margin": lc.ldam_max_margin, "scale": lc.ldam_scale},
        "balanced-softmax": {},
        "logit-adjust": {"tau": lc.tau},
        "cdt": {"gamma": lc.cdt_gamma},
    }.get(lc.name, {})


def loss_from_config(lc: LossConfig, counts: ClassCounts) -> nn.Module:
    """The loss that ``LossConfig`` describes, with its own hyperparameters."""
    return make_loss(lc.name, counts, **loss_params(lc))
