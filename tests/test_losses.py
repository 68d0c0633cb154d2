"""Losses: neutral settings equal cross-entropy, naive per-sample references, analytic values, contracts."""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from longtail.counts import ClassCounts
from longtail.errors import LongtailError
from longtail.losses import (
    LOSSES,
    adjust_logits,
    balanced_softmax,
    cdt_temperatures,
    ldam_margins,
    log_prior,
    logit_adjusted,
    make_loss,
)

SKEWED = ClassCounts((500, 120, 30, 8, 2))
C = SKEWED.num_classes

# Hyperparameters used for each registered loss in the contract battery (away from neutral).
PARAMS: dict[str, dict[str, float]] = {
    "ce": {},
    "focal": {"gamma": 2.0},
    "ldam": {"max_margin": 0.5, "scale": 30.0},
    "balanced-softmax": {},
    "logit-adjust": {"tau": 1.5},
    "cdt": {"gamma": 0.3},
    "vs": {"gamma": 0.2, "tau": 1.25},
    "vs-tla": {"gamma": 0.2, "tau": 1.25, "late_tau": 0.75},  # untruncated (its epoch stage: test_vs_adrw_tla.py)
}
COUNT_AWARE = ("ldam", "balanced-softmax", "logit-adjust", "cdt", "vs", "vs-tla")


def batch(b: int = 16, c: int = C, seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=g, dtype=torch.float64).mul(2).to(dtype)
    targets = torch.randint(0, c, (b,), generator=g)
    return logits, targets


def class_weight_vector(c: int = C) -> torch.Tensor:
    return torch.linspace(0.2, 3.0, c)


# naive per-sample references, in plain Python floats ------------------------------------------

Row = list[float]


def naive_ce_row(z: Row, y: int) -> float:
    m = max(z)
    return m + math.log(sum(math.exp(v - m) for v in z)) - z[y]


def naive_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    per_sample: Callable[[Row, int], float],
    weight: torch.Tensor | None = None,
) -> float:
    """Average of ``per_sample(row, y)`` over the batch, weighted by ``weight[y]`` if given
    (``F.cross_entropy(weight=w)``: divided by the sum of the weights)."""
    num = den = 0.0
    for z, y in zip(logits.tolist(), targets.tolist()):
        w = 1.0 if weight is None else float(weight[y])
        num += w * per_sample(z, y)
        den += w
    return num / den


def naive_focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float,
                     weight: torch.Tensor | None = None) -> float:
    """Focal as the LDAM-DRW code weights it (losses.py, ``FocalLoss``): ``c = w_y * CE``,
    ``(1 - exp(-c))^gamma * c``, plain mean over the batch."""
    total = 0.0
    for z, y in zip(logits.tolist(), targets.tolist()):
        c = (1.0 if weight is None else float(weight[y])) * naive_ce_row(z, y)
        total += (1 - math.exp(-c)) ** gamma * c
    return total / len(targets)


def naive_ldam(counts: ClassCounts, max_margin: float, scale: float) -> Callable[[Row, int], float]:
    n_min = min(counts.counts)
    m = [max_margin * (n_min / n) ** 0.25 for n in counts.counts]
    return lambda z, y: naive_ce_row([scale * (v - (m[y] if j == y else 0.0)) for j, v in enumerate(z)], y)


def naive_logit_adjust(counts: ClassCounts, tau: float) -> Callable[[Row, int], float]:
    lp = [math.log(n / counts.total) for n in counts.counts]
    return lambda z, y: naive_ce_row([v + tau * lp[j] for j, v in enumerate(z)], y)


def naive_cdt(counts: ClassCounts, gamma: float) -> Callable[[Row, int], float]:
    n_max = max(counts.counts)
    a = [(n_max / n) ** gamma for n in counts.counts]
    return lambda z, y: naive_ce_row([v / a[j] for j, v in enumerate(z)], y)


# each loss in its neutral setting is cross-entropy --------------------------------------------

UNIFORM = ClassCounts((7,) * C)
NEUTRAL = [
    ("ce", SKEWED, {}),
    ("focal", SKEWED, {"gamma": 0.0}),
    ("ldam", SKEWED, {"max_margin": 0.0, "scale": 1.0}),
    ("balanced-softmax", UNIFORM, {}),
    ("logit-adjust", SKEWED, {"tau": 0.0}),
    ("logit-adjust", UNIFORM, {"tau": 1.0}),
    ("cdt", SKEWED, {"gamma": 0.0}),
]


@pytest.mark.parametrize("name,counts,params", NEUTRAL)
@pytest.mark.parametrize("weighted", [False, True])
def test_neutral_setting_is_cross_entropy(name, counts, params, weighted):
    logits, targets = batch(dtype=torch.float64)
    weight = class_weight_vector().double() if weighted else None
    loss = make_loss(name, counts, **params)(logits, targets, weight)
    if name == "focal" and weighted:  # the source's plain mean of w * CE (see losses.focal)
        expected = F.cross_entropy(logits, targets, weight=weight, reduction="none").mean()
        torch.testing.assert_close(loss, expected)
        assert loss.item() == pytest.approx(naive_focal_loss(logits, targets, 0.0, weight), rel=1e-12)
        return
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets, weight=weight))
    assert loss.item() == pytest.approx(naive_loss(logits, targets, naive_ce_row, weight), rel=1e-12)


# each loss in a general setting matches its naive per-sample definition ----------------------

GENERAL = [
    ("focal", {"gamma": 2.0}, None),  # naive_focal_loss
    ("focal", {"gamma": 0.5}, None),
    ("ldam", {"max_margin": 0.5, "scale": 30.0}, naive_ldam(SKEWED, 0.5, 30.0)),
    ("balanced-softmax", {}, naive_logit_adjust(SKEWED, 1.0)),
    ("logit-adjust", {"tau": 1.5}, naive_logit_adjust(SKEWED, 1.5)),
    ("cdt", {"gamma": 0.3}, naive_cdt(SKEWED, 0.3)),
]


@pytest.mark.parametrize("name,params,naive", GENERAL, ids=[f"{n}-{p}" for n, p, _ in GENERAL])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_naive_loop(name, params, naive, weighted):
    logits, targets = batch(b=24, dtype=torch.float64)
    if name == "ldam":
        logits = logits.tanh()  # LDAM is meant for cosine logits in [-1, 1]
    weight = class_weight_vector().double() if weighted else None
    loss = make_loss(name, SKEWED, **params)(logits, targets, weight)
    expected = (naive_focal_loss(logits, targets, params["gamma"], weight) if name == "focal"
                else naive_loss(logits, targets, naive, weight))
    # rel 1e-6, not 1e-12: the modules keep their per-class tensors as float32 buffers.
    assert loss.item() == pytest.approx(expected, rel=1e-6)


# analytic values -----------------------------------------------------------------------------


def test_focal_gamma2_hand_value():
    # p_t = 1 / (1 + 3) = 1/4, so l = (3/4)^2 * log 4.
    logits, targets = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([0])
    loss = make_loss("focal", ClassCounts((1, 1)), gamma=2.0)(logits, targets)
    assert loss.item() == pytest.approx(0.5625 * math.log(4.0), rel=1e-6)


def test_focal_confident_prediction_has_finite_gradient():
    logits = torch.tensor([[60.0, 0.0]], requires_grad=True)  # p_t rounds to 1 in float32
    make_loss("focal", ClassCounts((1, 1)), gamma=0.5)(logits, torch.tensor([0])).backward()
    assert torch.isfinite(logits.grad).all()


def test_ldam_margins_rarest_class_gets_max_margin():
    m = ldam_margins(ClassCounts((5000, 50)), max_margin=0.5)
    torch.testing.assert_close(m, torch.tensor([0.5 * (50 / 5000) ** 0.25, 0.5]))
    assert m[0].item() == pytest.approx(0.158113883, rel=1e-6)


def test_ldam_hand_value():
    # margins (0.158, 0.5); target 1: z' = 30 * (0.2, 0.1 - 0.5) = (6, -12), l = log(1 + e^18).
    loss = make_loss("ldam", ClassCounts((5000, 50)))(torch.tensor([[0.2, 0.1]]), torch.tensor([1]))
    assert loss.item() == pytest.approx(math.log1p(math.exp(18.0)), rel=1e-6)


def test_logit_adjust_hand_value():
    # prior (3/4, 1/4) added to zero logits: p_1 = 1/4, l = log 4.
    loss = make_loss("logit-adjust", ClassCounts((3, 1)))(torch.zeros(1, 2), torch.tensor([1]))
    assert loss.item() == pytest.approx(math.log(4.0), rel=1e-6)


def test_cdt_hand_value():
    # a = (100/100, 100/25)^0.5 = (1, 2): z' = (1, 2/2) = (1, 1), l = log 2.
    torch.testing.assert_close(cdt_temperatures(ClassCounts((100, 25)), gamma=0.5), torch.tensor([1.0, 2.0]))
    loss = make_loss("cdt", ClassCounts((100, 25)), gamma=0.5)(torch.tensor([[1.0, 2.0]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_balanced_softmax_equals_logit_adjusted_tau1():
    logits, targets = batch()
    w = class_weight_vector()
    lp = log_prior(SKEWED)
    torch.testing.assert_close(
        balanced_softmax(logits, targets, lp, weight=w), logit_adjusted(logits, targets, lp, tau=1.0, weight=w)
    )
    bs, la = make_loss("balanced-softmax", SKEWED), make_loss("logit-adjust", SKEWED, tau=1.0)
    torch.testing.assert_close(bs(logits, targets), la(logits, targets))


def test_adjust_logits_undoes_the_prior_shift():
    logits, _ = batch(dtype=torch.float64)
    shifted = logits + SKEWED.prior().double().log()
    torch.testing.assert_close(adjust_logits(shifted, SKEWED, tau=1.0), logits)
    torch.testing.assert_close(adjust_logits(logits, SKEWED, tau=0.0), logits)
    assert adjust_logits(logits, SKEWED).dtype == torch.float64


def test_adjust_logits_favours_rare_classes():
    # Equal scores: after removing the prior the rarest class wins.
    assert adjust_logits(torch.zeros(1, C), SKEWED).argmax().item() == C - 1


# contract battery over every registered loss --------------------------------------------------


def test_battery_covers_the_registry():
    assert set(PARAMS) == set(LOSSES)


@pytest.fixture(params=sorted(LOSSES))
def name(request) -> str:
    return request.param


def test_finite_scalar_and_gradients(name):
    logits, targets = batch()
    logits.requires_grad_(True)
    loss = make_loss(name, SKEWED, **PARAMS[name])(logits, targets)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_float64_in_float64_out(name):
    logits, targets = batch(dtype=torch.float64)
    loss = make_loss(name, SKEWED, **PARAMS[name])(logits, targets, class_weight_vector())
    assert loss.dtype == torch.float64


def test_half_precision_logits_give_a_float32_loss(name):
    logits, targets = batch()
    loss = make_loss(name, SKEWED, **PARAMS[name])(logits.bfloat16(), targets)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_batch_of_one(name):
    logits, targets = batch(b=1)
    loss = make_loss(name, SKEWED, **PARAMS[name])(logits, targets)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_invariant_to_relabelling_classes(name):
    logits, targets = batch(dtype=torch.float64)
    perm = torch.randperm(C, generator=torch.Generator().manual_seed(1))  # new class j is old class perm[j]
    inverse = torch.argsort(perm)
    permuted = ClassCounts(tuple(SKEWED.counts[i] for i in perm.tolist()))
    w = class_weight_vector().double()
    before = make_loss(name, SKEWED, **PARAMS[name])(logits, targets, w)
    after = make_loss(name, permuted, **PARAMS[name])(logits[:, perm], inverse[targets], w[perm])
    torch.testing.assert_close(after, before)


def test_weight_of_ones_equals_no_weight(name):
    logits, targets = batch()
    loss_fn = make_loss(name, SKEWED, **PARAMS[name])
    torch.testing.assert_close(loss_fn(logits, targets, torch.ones(C)), loss_fn(logits, targets))


def test_buffers_move_with_to(name):
    loss_fn = make_loss(name, SKEWED, **PARAMS[name]).to("meta")
    assert all(b.device.type == "meta" for b in loss_fn.buffers())
    assert loss_fn.state_dict() == {}  # derived from the counts: nothing to checkpoint


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_cuda(name):
    logits, targets = batch()
    loss_fn = make_loss(name, SKEWED, **PARAMS[name])
    expected = loss_fn(logits, targets, class_weight_vector())
    got = loss_fn.to("cuda")(logits.cuda(), targets.cuda(), class_weight_vector().cuda())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-5)


def test_wrong_number_of_classes_is_reported(name):
    if name not in COUNT_AWARE:
        pytest.skip("CE and focal hold no per-class tensor")
    logits, targets = batch(c=C + 1)
    with pytest.raises(LongtailError, match="classes"):
        make_loss(name, SKEWED, **PARAMS[name])(logits, targets)


def test_zero_count_class(name):
    counts = ClassCounts((10, 0, 3))
    if name in COUNT_AWARE:
        with pytest.raises(LongtailError, match="class\\(es\\) 1 have no training examples") as err:
            make_loss(name, counts, **PARAMS[name])
        assert err.value.fix is not None
    else:  # CE and focal do not look at the counts
        logits, targets = batch(c=3)
        assert torch.isfinite(make_loss(name, counts, **PARAMS[name])(logits, targets))


# errors --------------------------------------------------------------------------------------


def test_unknown_loss_lists_the_valid_names():
    with pytest.raises(LongtailError) as err:
        make_loss("ldam-drw", SKEWED)
    assert all(n in err.value.fix for n in LOSSES)


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(LongtailError, match="gama") as err:
        make_loss("focal", SKEWED, gama=2.0)
    assert "gamma" in err.value.fix
    with pytest.raises(LongtailError, match="tau"):
        make_loss("ce", SKEWED, tau=1.0)


def test_missing_required_parameter():
    with pytest.raises(LongtailError, match="gamma"):
        make_loss("cdt", SKEWED)


def test_bad_shapes():
    with pytest.raises(LongtailError):
        make_loss("ce", SKEWED)(torch.zeros(4, C), torch.zeros(3, dtype=torch.long))
