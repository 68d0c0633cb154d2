"""Reference parity: each loss, weighting and sampler against a transcription of the released code behind
its published numbers, on fixed inputs (logits, labels, counts (500, 100, 20, 5)), to float tolerance.

The transcriptions are written here in NumPy (or, for gradients, in the source's own PyTorch calls), from
the files named in each comment, and share no code with longtail. ``test_samplers_weights.py`` and
``test_losses.py`` check the formulas and contracts; this file checks the sources' reductions and
constants (beta 0.9999, gamma 1, margin 0.5, scale 30, the epoch-160 switch), which is where a
published-number comparison goes wrong (issue 13: CB-focal divided by the sum of the weights).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.counts import ClassCounts
from longtail.losses import focal, make_loss
from longtail.samplers import ClassWeighted, make_sampler
from longtail.weights import class_weights, make_weighting

COUNTS = ClassCounts((500, 100, 20, 5))
N = np.array(COUNTS.counts, dtype=np.float64)
C = len(N)
TARGETS = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 0])
LOGITS = torch.randn(len(TARGETS), C, generator=torch.Generator().manual_seed(0), dtype=torch.float64).mul(2.0).numpy()
COSINE = np.tanh(LOGITS)  # LDAM runs on a cosine head: logits in [-1, 1]
RTOL = 1e-6  # the per-class tensors are float32, as the sources' torch.FloatTensor weights


def ours(name: str, logits: np.ndarray, weight: torch.Tensor | None = None, **params: float) -> float:
    loss = make_loss(name, COUNTS, **params)
    return loss(torch.from_numpy(logits), torch.from_numpy(TARGETS), weight).item()


# transcriptions of the sources (NumPy, float64) ---------------------------------------------------


def np_ce_none(z: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """``F.cross_entropy(z, y, reduction='none', weight=w)``: ``w_y * -log softmax(z)_y`` (PyTorch docs)."""
    m = z.max(axis=1, keepdims=True)
    log_p = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    nll = -log_p[np.arange(len(y)), y]
    return nll if weight is None else weight[y] * nll


def np_ce(z: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> float:
    """``F.cross_entropy(z, y, weight=w)`` (reduction 'mean'): ``sum w_y l / sum w_y`` (PyTorch docs)."""
    w = np.ones(len(y)) if weight is None else weight[y]
    return float(np_ce_none(z, y, weight).sum() / w.sum())


def ldam_drw_class_balanced(n: np.ndarray, beta: float = 0.9999) -> np.ndarray:
    """kaidic/LDAM-DRW, cifar_train.py, ``--train_rule Reweight`` (and the seed's train.py)."""
    effective_num = 1.0 - np.power(beta, n)
    per_cls_weights = (1.0 - beta) / np.array(effective_num)
    return per_cls_weights / np.sum(per_cls_weights) * len(n)


def ldam_drw_drw(n: np.ndarray, epoch: int) -> np.ndarray:
    """kaidic/LDAM-DRW, cifar_train.py, ``--train_rule DRW``: ``idx = epoch // 160; betas = [0, 0.9999]``."""
    idx = epoch // 160
    betas = [0, 0.9999]
    effective_num = 1.0 - np.power(betas[idx], n)
    per_cls_weights = (1.0 - betas[idx]) / np.array(effective_num)
    return per_cls_weights / np.sum(per_cls_weights) * len(n)


def ldam_drw_focal(z: np.ndarray, y: np.ndarray, gamma: float, weight: np.ndarray | None = None) -> float:
    """kaidic/LDAM-DRW, losses.py: ``focal_loss(F.cross_entropy(input, target, reduction='none',
    weight=self.weight), self.gamma)`` with ``p = exp(-input_values)``, ``((1 - p)^gamma * input_values).mean()``."""
    input_values = np_ce_none(z, y, weight)
    p = np.exp(-input_values)
    return float(((1 - p) ** gamma * input_values).mean())


def ldam_drw_ldam(z: np.ndarray, y: np.ndarray, n: np.ndarray, max_m: float = 0.5, s: float = 30.0,
                  weight: np.ndarray | None = None) -> float:
    """kaidic/LDAM-DRW, losses.py ``LDAMLoss``: ``m = 1 / sqrt(sqrt(n))``, scaled to ``max_m``; the target
    logit minus its margin; ``F.cross_entropy(s * output, target, weight=self.weight)``."""
    m_list = 1.0 / np.sqrt(np.sqrt(n))
    m_list = m_list * (max_m / np.max(m_list))
    index = np.zeros_like(z, dtype=bool)
    index[np.arange(len(y)), y] = True
    output = np.where(index, z - m_list[y][:, None], z)
    return np_ce(s * output, y, weight)


def bms_balanced_softmax(z: np.ndarray, y: np.ndarray, n: np.ndarray) -> float:
    """jiawei-ren/BalancedMetaSoftmax-Classification, loss/BalancedSoftmaxLoss.py: ``logits + spc.log()``,
    then ``F.cross_entropy``."""
    return np_ce(z + np.log(n)[None, :], y)


def menon_logit_adjusted(z: np.ndarray, y: np.ndarray, n: np.ndarray, tau: float = 1.0) -> float:
    """google-research/google-research, logit_adjustment/main.py (mode 'loss'): ``logits + tau *
    log(base_probs)`` with the training label frequencies, softmax cross-entropy, batch mean."""
    return np_ce(z + tau * np.log(n / n.sum())[None, :], y)


def bot_cdt(z: np.ndarray, y: np.ndarray, n: np.ndarray, gamma: float) -> float:
    """zhangyongshun/BagofTricks-LT, lib/loss/loss_impl/class_dependent_temperatures_loss.py:
    ``cdt_weight = (max(n) / n_i)^gamma``, ``F.cross_entropy(inputs / cdt_weight, targets)``."""
    return np_ce(z / (n.max() / n) ** gamma, y)


def bot_cost_sensitive(n: np.ndarray, gamma: float) -> np.ndarray:
    """zhangyongshun/BagofTricks-LT, lib/loss/loss_impl/cost_sensitive_cross_entropy_loss.py:
    ``(min(n) / N_c)^gamma``, given to ``F.cross_entropy(weight=...)`` (gamma 1: inverse, 0.5: sqrt)."""
    return np.array([(n.min() / c) ** gamma for c in n])


def seed_imbalanced_dataset_sampler(labels: np.ndarray, beta: float = 0.9999) -> np.ndarray:
    """YyzHarry/imbalanced-semi-self (and kaidic/LDAM-DRW), utils.py ``ImbalancedDatasetSampler``: each
    example's weight is its class's ``(1 - beta) / (1 - beta^n_c)``; ``torch.multinomial(weights,
    len(dataset), replacement=True)`` draws example i with probability weight_i / sum(weights)."""
    label_to_count = np.bincount(labels)
    effective_num = 1.0 - np.power(beta, label_to_count)
    per_cls_weights = (1.0 - beta) / np.array(effective_num)
    weights = per_cls_weights[labels]
    return weights / weights.sum()


def kang_class_aware(labels: np.ndarray) -> np.ndarray:
    """facebookresearch/classifier-balancing, data/ClassAwareSampler.py (copied as the seed's
    dataset/ClassAwareSampler.py): classes taken in turn from a shuffled cycle, an example from the
    class's own shuffled cycle, so each class is 1/C of the draws and its examples share it equally.
    (The source's epoch is max(n) * C draws in groups of ``num_samples_cls``; this is the marginal.)"""
    n = np.bincount(labels)
    return 1.0 / (len(n) * n[labels])


def kang_square_root(labels: np.ndarray) -> np.ndarray:
    """Kang et al., ICLR 2020, Eq. 1 with q = 1/2: ``p_j = n_j^q / sum_i n_i^q``, an example uniformly."""
    n = np.bincount(labels)
    return (n[labels] ** 0.5 / (n**0.5).sum()) / n[labels]


def example_probabilities(name: str, labels: np.ndarray) -> np.ndarray:
    """Our sampler's probability of drawing each example (class probability over the class size)."""
    sampler = make_sampler(name, torch.from_numpy(labels), int(labels.max()) + 1)
    assert isinstance(sampler, ClassWeighted)
    y = torch.from_numpy(labels)
    return (sampler.class_probs[y] / sampler.class_counts[y].double()).numpy()


LABELS = np.repeat(np.arange(C), COUNTS.counts)  # the training set with counts (500, 100, 20, 5)


def cb() -> torch.Tensor:
    return class_weights("class-balanced", COUNTS, beta=0.9999)


# losses --------------------------------------------------------------------------------------------


def test_ce_and_ce_with_class_balanced_weights():
    assert ours("ce", LOGITS) == pytest.approx(np_ce(LOGITS, TARGETS), rel=1e-12)
    # LDAM-DRW cifar_train.py: nn.CrossEntropyLoss(weight=per_cls_weights), divided by the sum of weights
    assert ours("ce", LOGITS, cb()) == pytest.approx(np_ce(LOGITS, TARGETS, ldam_drw_class_balanced(N)), rel=RTOL)


def test_focal_matches_ldam_drw_focal_loss():
    assert ours("focal", LOGITS, gamma=1.0) == pytest.approx(ldam_drw_focal(LOGITS, TARGETS, 1.0), rel=1e-12)
    assert ours("focal", LOGITS, gamma=2.0) == pytest.approx(ldam_drw_focal(LOGITS, TARGETS, 2.0), rel=1e-12)


def test_cb_focal_matches_ldam_drw_focal_loss_with_weights():
    # cifar*-lt-cb-focal: FocalLoss(weight=per_cls_weights, gamma=1) with --train_rule Reweight
    source = ldam_drw_focal(LOGITS, TARGETS, 1.0, ldam_drw_class_balanced(N))
    assert ours("focal", LOGITS, cb(), gamma=1.0) == pytest.approx(source, rel=RTOL)


def test_cb_focal_gradient_matches_the_source():
    z = torch.from_numpy(LOGITS).requires_grad_(True)
    y = torch.from_numpy(TARGETS)
    w = torch.tensor(ldam_drw_class_balanced(N), dtype=torch.float32)
    # the source's own calls (kaidic/LDAM-DRW, losses.py FocalLoss.forward and focal_loss)
    input_values = F.cross_entropy(z, y, reduction="none", weight=w.double())
    p = torch.exp(-input_values)
    (((1 - p) ** 1.0 * input_values).mean()).backward()
    expected, z.grad = z.grad.clone(), None
    make_loss("focal", COUNTS, gamma=1.0)(z, y, cb()).backward()
    torch.testing.assert_close(z.grad, expected, rtol=RTOL, atol=1e-9)


def _focal_divided_by_weight_sum(logits: np.ndarray, weight: torch.Tensor) -> float:
    """The normalisation longtail used before (issue 13): the F.cross_entropy convention applied to focal."""
    z, y = torch.from_numpy(logits), torch.from_numpy(TARGETS)
    logp = F.log_softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)
    per = (1 - logp.exp()) * -logp
    w = weight.double()[y]
    return ((w * per).sum() / w.sum()).item()


def test_a_mutated_focal_normalisation_fails_parity():
    source = ldam_drw_focal(LOGITS, TARGETS, 1.0, ldam_drw_class_balanced(N))
    mutated = _focal_divided_by_weight_sum(LOGITS, cb())
    assert mutated != pytest.approx(source, rel=1e-2)  # the check below would catch the old normalisation
    with pytest.raises(AssertionError):
        assert mutated == pytest.approx(source, rel=RTOL)
    assert focal(torch.from_numpy(LOGITS), torch.from_numpy(TARGETS), gamma=1.0, weight=cb()).item() == \
        pytest.approx(source, rel=RTOL)


@pytest.mark.parametrize("name,params", [("ce", {}), ("focal", {"gamma": 1.0}), ("ldam", {}), ("balanced-softmax", {}),
                                         ("logit-adjust", {}), ("cdt", {"gamma": 0.2})])
def test_each_loss_declares_its_normalisation(name, params):
    # "weight-sum": scaling every weight leaves the loss unchanged; "batch" (focal): it does not
    w = cb()
    same = ours(name, COSINE, w, **params) == pytest.approx(ours(name, COSINE, 3 * w, **params), rel=RTOL)
    assert same == (make_loss(name, COUNTS, **params).normalisation == "weight-sum")


def test_ldam_and_ldam_drw_match_ldam_loss():
    source = ldam_drw_ldam(COSINE, TARGETS, N)  # max_m=0.5, s=30 as cifar_train.py builds it
    assert ours("ldam", COSINE, max_margin=0.5, scale=30.0) == pytest.approx(source, rel=RTOL)
    drw = ldam_drw_drw(N, 160)
    assert ours("ldam", COSINE, cb()) == pytest.approx(ldam_drw_ldam(COSINE, TARGETS, N, weight=drw), rel=RTOL)


def test_balanced_softmax_matches_balanced_meta_softmax():
    assert ours("balanced-softmax", LOGITS) == pytest.approx(bms_balanced_softmax(LOGITS, TARGETS, N), rel=RTOL)


@pytest.mark.parametrize("tau", [1.0, 1.5])
def test_logit_adjusted_loss_matches_menon(tau):
    assert ours("logit-adjust", LOGITS, tau=tau) == pytest.approx(menon_logit_adjusted(LOGITS, TARGETS, N, tau),
                                                                  rel=RTOL)


def test_cdt_matches_bag_of_tricks():
    assert ours("cdt", LOGITS, gamma=0.2) == pytest.approx(bot_cdt(LOGITS, TARGETS, N, 0.2), rel=RTOL)


# weightings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme,gamma", [("inverse", 1.0), ("sqrt-inverse", 0.5)])
def test_inverse_weights_match_cost_sensitive_ce(scheme, gamma):
    source = bot_cost_sensitive(N, gamma)  # its scale differs; F.cross_entropy(weight=...) divides it out
    np.testing.assert_allclose(class_weights(scheme, COUNTS).numpy(), source / source.sum() * C, rtol=RTOL)
    assert ours("ce", LOGITS, class_weights(scheme, COUNTS)) == pytest.approx(np_ce(LOGITS, TARGETS, source),
                                                                               rel=RTOL)


def test_class_balanced_weights_match_ldam_drw_reweight():
    np.testing.assert_allclose(cb().numpy(), ldam_drw_class_balanced(N), rtol=RTOL)


@pytest.mark.parametrize("epoch", [0, 1, 159, 160, 161, 199])
def test_drw_switch_matches_ldam_drw(epoch):
    # cifar*-lt-ldam-drw: drw_start 160 of 200 epochs; our 0-based epoch is the source's `epoch`
    ours_w = make_weighting("class-balanced", COUNTS, start_epoch=160, beta=0.9999).weight_at(epoch)
    source_w = ldam_drw_drw(N, epoch)
    if epoch < 160:  # the source's beta 0 gives weights of one: unweighted, which we write as None
        assert ours_w is None
        np.testing.assert_allclose(source_w, np.ones(C))
    else:
        np.testing.assert_allclose(ours_w.numpy(), source_w, rtol=RTOL)
    assert ours("ldam", COSINE, ours_w) == pytest.approx(ldam_drw_ldam(COSINE, TARGETS, N, weight=source_w), rel=RTOL)
    assert ours("ce", LOGITS, ours_w) == pytest.approx(np_ce(LOGITS, TARGETS, source_w), rel=RTOL)
    assert ours("focal", LOGITS, ours_w) == pytest.approx(ldam_drw_focal(LOGITS, TARGETS, 1.0, source_w), rel=RTOL)


# samplers ------------------------------------------------------------------------------------------


def test_effective_number_sampler_matches_the_seeds_imbalanced_dataset_sampler():
    np.testing.assert_allclose(example_probabilities("effective-number", LABELS),
                               seed_imbalanced_dataset_sampler(LABELS), rtol=1e-12)


def test_effective_number_head_to_tail_ratio_on_cifar10_lt():
    labels = np.repeat(np.arange(10), ClassCounts.from_profile(5000, 10, 100).counts)
    p = seed_imbalanced_dataset_sampler(labels)
    per_class = np.bincount(labels, weights=p)
    np.testing.assert_allclose(example_probabilities("effective-number", labels), p, rtol=1e-12)
    assert per_class[0] / per_class[-1] == pytest.approx(1.27, abs=0.005)  # issue 13: not uniform over classes


def test_effective_number_draws_follow_the_sources_multinomial():
    draws = 100_000
    g = torch.Generator().manual_seed(0)
    source_idx = torch.multinomial(torch.from_numpy(seed_imbalanced_dataset_sampler(LABELS)), draws, replacement=True,
                                   generator=g)
    idx = make_sampler("effective-number", torch.from_numpy(LABELS), C, draws).epoch_indices(g)
    freq = np.bincount(LABELS[idx.numpy()], minlength=C) / draws
    source_freq = np.bincount(LABELS[source_idx.numpy()], minlength=C) / draws
    np.testing.assert_allclose(freq, source_freq, atol=0.01)  # standard error <= 0.0016 each


@pytest.mark.parametrize("name", ["class-balanced", "class-aware"])
def test_class_balanced_sampler_matches_class_aware_marginals(name):
    np.testing.assert_allclose(example_probabilities(name, LABELS), kang_class_aware(LABELS), rtol=1e-12)


def test_square_root_sampler_matches_kang():
    np.testing.assert_allclose(example_probabilities("sqrt", LABELS), kang_square_root(LABELS), rtol=1e-12)


def test_instance_sampler_is_the_shuffled_data_set():
    # the sources' DataLoader(shuffle=True): torch RandomSampler, every example once per epoch
    idx = make_sampler("instance", torch.from_numpy(LABELS), C).epoch_indices(torch.Generator().manual_seed(0))
    assert sorted(idx.tolist()) == list(range(len(LABELS)))
