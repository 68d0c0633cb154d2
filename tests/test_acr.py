"""ACR (longtail.semi.acr): the step's loss, the pseudo-labels, the estimate and the adaptive tau against a
transcription of the released code (Gank0078/ACR 9a8f421, ``train.py`` ``main`` and ``train``), the model, the
batches, training through the one loop, an exact resume, and the task contract."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from longtail import LongtailError
from longtail.config import RunConfig, apply_overrides
from longtail.data.augment import Augment
from longtail.loop import fit, make_sgd
from longtail.models import make_model
from longtail.semi import darp_split, hide_labels
from longtail.semi.acr import (
    ACRBatch,
    ACRClassifier,
    ACRSettings,
    ACRTask,
    acr_loss,
    acr_settings,
    acr_targets,
    adaptive_tau,
    adjustment,
    anchors,
    check_acr,
    distances,
    full_batch_draw,
    pool_labeled_rows,
    tally,
    update_estimate,
)

from conftest import synthetic_set

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


# --- their code, transcribed (train.py; CPU for .cuda()) -----------------------------------------------------------

def compute_adjustment_by_py(py, tro):
    return torch.log(py ** tro + 1e-12)


def their_args(counts, *, tau1=2.0, tau12=2.0, tau2=2.0, ema_u=0.99, est_epoch=5, eval_step=500, threshold=0.95,
               T=1.0):
    """main(): the priors and adjustments (py_con from the exact counts; theirs counts one drop_last pass)."""
    a = SimpleNamespace(tau1=tau1, tau12=tau12, tau2=tau2, ema_u=ema_u, est_epoch=est_epoch, eval_step=eval_step,
                        threshold=threshold, T=T, num_classes=len(counts))
    freq = np.array(counts) / np.sum(counts)
    a.py_con = torch.from_numpy(freq)  # float64
    a.py_uni = torch.ones(a.num_classes) / a.num_classes
    a.py_rev = torch.flip(a.py_con, dims=[0])
    a.adjustment_l1 = compute_adjustment_by_py(a.py_con, a.tau1)
    a.adjustment_l12 = compute_adjustment_by_py(a.py_con, a.tau12)
    a.adjustment_l2 = compute_adjustment_by_py(a.py_con, a.tau2)
    a.taumin, a.taumax = 0, a.tau1
    a.u_py = torch.ones(a.num_classes) / a.num_classes
    return a


def their_epoch_start(args, epoch, count_KL):
    """The top of train()'s epoch loop; returns the new (zeroed) count_KL."""
    if epoch > args.est_epoch:
        count_KL = count_KL / args.eval_step
        KL_softmax = (torch.exp(count_KL[0])) / (torch.exp(count_KL[0]) + torch.exp(count_KL[1])
                                                 + torch.exp(count_KL[2]))
        tau = args.taumin + (args.taumax - args.taumin) * KL_softmax
        if math.isnan(tau) is False:
            args.adjustment_l1 = compute_adjustment_by_py(args.py_con, tau, )
        args.tau = tau
    return torch.zeros(3)


def their_step(args, epoch, count_KL, logits_x, logits_x_b, logits_u_w, logits_u_s, logits_u_s1, logits_u_w_b,
               logits_u_s_b, logits_u_s1_b, targets_x, u_real):
    """One iteration of train()'s inner loop after the forward pass: the loss; updates args.u_py and count_KL."""
    KL_div = nn.KLDivLoss(reduction='sum')
    mask_l = (u_real != -2)
    Lx = F.cross_entropy(logits_x, targets_x, reduction='mean')
    Lx_b = F.cross_entropy(logits_x_b + args.adjustment_l2, targets_x, reduction='mean')
    pseudo_label = torch.softmax((logits_u_w.detach() - args.adjustment_l1) / args.T, dim=-1)
    pseudo_label_h2 = torch.softmax((logits_u_w.detach() - args.adjustment_l12) / args.T, dim=-1)
    pseudo_label_b = torch.softmax(logits_u_w_b.detach() / args.T, dim=-1)
    pseudo_label_t = torch.softmax(logits_u_w.detach() / args.T, dim=-1)
    max_probs, targets_u = torch.max(pseudo_label, dim=-1)
    max_probs_h2, targets_u_h2 = torch.max(pseudo_label_h2, dim=-1)
    max_probs_b, targets_u_b = torch.max(pseudo_label_b, dim=-1)
    max_probs_t, targets_u_t = torch.max(pseudo_label_t, dim=-1)
    mask = max_probs.ge(args.threshold)
    mask_h2 = max_probs_h2.ge(args.threshold)
    mask_b = max_probs_b.ge(args.threshold)
    mask_t = max_probs_t.ge(args.threshold)
    mask_ss_b_h2 = mask_b + mask_h2
    mask_ss_t = mask + mask_t
    mask = mask.float()
    mask_b = mask_b.float()
    mask_ss_b_h2 = mask_ss_b_h2.float()
    mask_ss_t = mask_ss_t.float()
    mask_twice_ss_b_h2 = torch.cat([mask_ss_b_h2, mask_ss_b_h2], dim=0)
    mask_twice_ss_t = torch.cat([mask_ss_t, mask_ss_t], dim=0)
    logits_u_s_twice = torch.cat([logits_u_s, logits_u_s1], dim=0)
    targets_u_twice = torch.cat([targets_u, targets_u], dim=0)
    targets_u_h2_twice = torch.cat([targets_u_h2, targets_u_h2], dim=0)
    logits_u_s_b_twice = torch.cat([logits_u_s_b, logits_u_s1_b], dim=0)
    now_mask = torch.zeros(args.num_classes)
    u_real[u_real == -2] = 0
    if epoch > args.est_epoch:
        now_mask[targets_u_b] += mask_l * mask_b
        if now_mask.sum() > 0:
            now_mask = now_mask / now_mask.sum()
            args.u_py = args.ema_u * args.u_py + (1 - args.ema_u) * now_mask
            KL_con = 0.5 * KL_div(args.py_con.log(), args.u_py) + 0.5 * KL_div(args.u_py.log(), args.py_con)
            KL_uni = 0.5 * KL_div(args.py_uni.log(), args.u_py) + 0.5 * KL_div(args.u_py.log(), args.py_uni)
            KL_rev = 0.5 * KL_div(args.py_rev.log(), args.u_py) + 0.5 * KL_div(args.u_py.log(), args.py_rev)
            count_KL[0] = count_KL[0] + KL_con
            count_KL[1] = count_KL[1] + KL_uni
            count_KL[2] = count_KL[2] + KL_rev
    Lu = (F.cross_entropy(logits_u_s_twice, targets_u_twice, reduction='none') * mask_twice_ss_t).mean()
    Lu_b = (F.cross_entropy(logits_u_s_b_twice, targets_u_h2_twice, reduction='none') * mask_twice_ss_b_h2).mean()
    return Lx + Lu + Lx_b + Lu_b


# --- helpers -----------------------------------------------------------------------------------------------------

COUNTS = [40, 20, 10, 5]


def sets(counts=COUNTS, pool=(12, 6, 3, 3)):
    lab = synthetic_set(list(counts))
    unl = hide_labels(synthetic_set(list(pool), seed=2), name="unlabeled")
    return lab, unl


class FixedOutputs(nn.Module):
    """A stand-in network whose ``train_outputs`` returns fixed (standard, balanced) logits for the whole batch."""

    def __init__(self, std: torch.Tensor, bal: torch.Tensor) -> None:
        super().__init__()
        self.std, self.bal = std, bal

    def train_outputs(self, x):
        assert x.shape[0] == self.std.shape[0]
        return self.std, self.bal


def random_logits(g, rows, c, scale=4.0):
    return (torch.randn(rows, c, generator=g) * scale).requires_grad_(True)


# --- parity of one step, and of the estimate over steps ----------------------------------------------------------

@pytest.mark.parametrize("threshold,tally_rule", [(0.95, "assign"), (0.7, "assign"), (0.5, "assign")])
def test_steps_equal_their_train_loop(threshold, tally_rule):
    """Several steps of an epoch after est_epoch on fixed logits: the loss, its gradients, the estimate u_py and the
    distance sum equal their train()'s, and the next epoch's tau and adjustment too."""
    g = torch.Generator().manual_seed(0)
    lab, unl = sets()
    C, b, mu = 4, 8, 2
    bu = b * mu
    task = ACRTask(lab, unl, batch_size=b, mu=mu, threshold=threshold,
                   settings=ACRSettings(est_epoch=1, steps_per_epoch=5, tally=tally_rule))
    args = their_args(COUNTS, threshold=threshold, est_epoch=1, eval_step=5)
    count_KL = their_epoch_start(args, 0, torch.zeros(3))
    for epoch in (0, 1, 2, 3):
        task.on_epoch_start(epoch)
        count_KL = their_epoch_start(args, epoch, count_KL)
        torch.testing.assert_close(task.adj, args.adjustment_l1.double(), rtol=1e-6, atol=1e-9)
        for _ in range(5):
            std, bal = random_logits(g, b + 3 * bu, C), random_logits(g, b + 3 * bu, C)
            y = torch.randint(C, (b,), generator=g)
            pool_labeled = torch.rand(bu, generator=g) < 0.3
            batch = ACRBatch(torch.zeros(b, 1), y, torch.arange(b), torch.zeros(bu, 1), torch.zeros(2 * bu, 1),
                             pool_labeled)
            mine = task.loss(FixedOutputs(std, bal), batch)
            u_real = torch.where(pool_labeled, torch.tensor(-2), torch.randint(C, (bu,), generator=g))
            sl, ul = slice(0, b), slice(b, b + bu)
            s1, s2 = slice(b + bu, b + 2 * bu), slice(b + 2 * bu, b + 3 * bu)
            theirs = their_step(args, epoch, count_KL, std[sl], bal[sl], std[ul], std[s1], std[s2], bal[ul],
                                bal[s1], bal[s2], y, u_real)
            torch.testing.assert_close(mine, theirs.float(), rtol=1e-6, atol=1e-6)
            for a, t in zip(torch.autograd.grad(mine, (std, bal)), torch.autograd.grad(theirs, (std, bal))):
                torch.testing.assert_close(a, t.float(), rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(task.u_py, args.u_py, rtol=0, atol=1e-7)
            torch.testing.assert_close(task.distance_sum, count_KL, rtol=1e-6, atol=1e-6)
    assert not torch.equal(task.u_py, torch.full((C,), 0.25))  # the estimate moved
    assert task.tau.item() == pytest.approx(float(args.tau), abs=1e-7) and 0 < task.tau.item() < 2


def test_the_loss_parts_on_fixed_logits():
    """acr_loss and acr_targets on hand-checkable logits: Lx, Lx_b = CE(g(x) + adj(tau2)), and both consistency terms
    with their OR-ed masks and the balanced head's targets from the *standard* head."""
    prior = torch.tensor([0.8, 0.2], dtype=torch.float64)
    adj, adj12, adj2 = adjustment(prior, 1.0), adjustment(prior, 2.0), adjustment(prior, 2.0)
    weak = torch.tensor([[3.0, 0.0], [0.0, 0.0], [1.0, 0.0]])  # confident head; a tie; head by a little
    weak_b = torch.tensor([[0.0, 4.0], [0.0, 0.0], [0.0, 0.0]])
    t = acr_targets(weak, weak_b, adj, adj12, threshold=0.9)
    # row 0: adjusted 3 - log .8 = 3.223 vs -log .2 = 1.609: class 0 at p = 0.834 (< 0.9) but plain p = 0.953: kept
    # row 2 (head by 1): adjusted with tau=1 gives 1.223 vs 1.609: the tail class 1 at p = 0.595, not kept
    assert t.labels.tolist() == [0, 1, 1] and t.keep.tolist() == [True, False, False]
    assert t.confident.tolist() == [False, False, False]
    # the balanced head's targets: weak - adj(2): row 0: 3.446 vs 3.219 -> 0; row 1: 0.446 vs 3.219 -> 1 (p .94)
    assert t.labels_b.tolist() == [0, 1, 1]
    assert t.keep_b.tolist() == [True, True, False]  # row 0 by the balanced head's own 0.982, row 1 by q2's 0.94
    assert t.balanced.tolist() == [1, 0, 0] and t.balanced_confident.tolist() == [True, False, False]
    g = torch.Generator().manual_seed(3)
    x, xb, s, sb = (torch.randn(n, 2, generator=g) for n in (4, 4, 6, 6))
    y = torch.tensor([0, 1, 0, 1])
    out = acr_loss(x, xb, s, sb, y, t, adj2)
    torch.testing.assert_close(out.lx, F.cross_entropy(x, y))
    torch.testing.assert_close(out.lx_b, F.cross_entropy(xb + torch.log(prior ** 2 + 1e-12).float(), y))
    ce = F.cross_entropy(s, torch.tensor([0, 1, 1, 0, 1, 1]), reduction="none")
    torch.testing.assert_close(out.lu, (ce[0] + ce[3]) / 6)
    ce_b = F.cross_entropy(sb, torch.tensor([0, 1, 1, 0, 1, 1]), reduction="none")
    torch.testing.assert_close(out.lu_b, (ce_b[0] + ce_b[1] + ce_b[3] + ce_b[4]) / 6)
    torch.testing.assert_close(out.total, out.lx + out.lx_b + out.lu + out.lu_b)


def test_the_adjustment_subtracts_the_prior_mutation_check():
    """The pseudo-label adjustment *subtracts* tau log(pi): a head-class win by a margin below tau log(pi_h/pi_t)
    goes to the tail class; the supervised balanced loss *adds* it. A flipped sign fails here."""
    prior = torch.tensor([0.9, 0.1], dtype=torch.float64)
    z = torch.tensor([[2.0, 0.0]])
    t = acr_targets(z, z, adjustment(prior, 2.0), adjustment(prior, 0.0), threshold=0.5)
    assert t.labels.item() == 1  # 2 - 2 log .9 = 2.21 < -2 log .1 = 4.61
    assert t.labels_b.item() == 0  # tau12 = 0: no adjustment
    loss = acr_loss(z, z, z.repeat(2, 1), z.repeat(2, 1), torch.tensor([1]), t, adjustment(prior, 1.0))
    # CE([2 + log .9, log .1], 1): the tail label costs more after the adjustment (a flipped sign costs less)
    assert loss.lx_b.item() == pytest.approx(-math.log(0.1 / (0.9 * math.exp(2) + 0.1)), rel=1e-6)
    assert loss.lx_b > loss.lx


# --- the adaptive tau and the estimate -----------------------------------------------------------------------------

def their_tau_of(u, counts, steps=3):
    """tau after `steps` steps at the estimate u (their count_KL, then the next epoch's start)."""
    args = their_args(counts, est_epoch=0, eval_step=steps)
    KL_div = nn.KLDivLoss(reduction='sum')
    count_KL = torch.zeros(3)
    for _ in range(steps):
        for i, a in enumerate((args.py_con, args.py_uni, args.py_rev)):
            count_KL[i] = count_KL[i] + 0.5 * KL_div(a.log(), u) + 0.5 * KL_div(u.log(), a)
    their_epoch_start(args, 1, count_KL)
    return float(args.tau)


def test_the_adaptive_tau_at_the_three_anchors_and_between():
    counts = [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    con, uni, rev = anchors(prior)
    assert torch.equal(con, prior) and torch.equal(rev, prior.flip(0)) and torch.allclose(uni, torch.full((10,), .1,
                                                                                           dtype=torch.float64))
    taus = {}
    for name, u in (("con", con), ("uni", uni), ("rev", rev), ("between", 0.5 * con + 0.5 * uni)):
        u32 = u.float()
        d = distances(u32, anchors(prior)).float() * 3
        mine = float(adaptive_tau(d / 3, 0.0, 2.0))
        assert mine == pytest.approx(their_tau_of(u32, counts), abs=1e-6), name
        taus[name] = mine
    # at the consistent anchor d_con = 0: tau = 2 / (1 + e^d_uni + e^d_rev) is the smallest; reversed the largest
    d_uni = 0.5 * float((prior * (prior / 0.1).log()).sum() + (0.1 * (0.1 / prior).log()).sum())
    d_rev = 0.5 * float(2 * (prior * (prior / prior.flip(0)).log()).sum())
    assert taus["con"] == pytest.approx(2 / (1 + math.exp(d_uni) + math.exp(d_rev)), rel=1e-5)
    assert taus["con"] < taus["between"] < taus["uni"] < taus["rev"] <= 2.0
    # the DARP profile (N1 1500, gamma 100): d = (0, .786, 3.141) consistent, (.786, 0, .786) uniform, reversed
    assert [round(taus[k], 4) for k in ("con", "uni", "rev")] == [0.0760, 0.8144, 1.7573]
    assert adaptive_tau(torch.zeros(3), 0.0, 2.0).item() == pytest.approx(2 / 3)  # an empty sum


def test_the_settings_default_to_their_commands():
    s = ACRSettings()
    assert (s.tau1, s.tau12, s.tau2, s.tau_min, s.tau_max, s.ema_u, s.est_epoch, s.steps_per_epoch, s.temperature,
            s.tally) == (2.0, 2.0, 2.0, 0.0, 2.0, 0.99, 5, 500, 1.0, "assign")
    assert acr_settings(SimpleNamespace(threshold=0.9, acr_tau1=3.0, acr_tally="count")) == \
        ACRSettings(tau1=3.0, tally="count")
    task = ACRTask(*sets(), batch_size=8)
    assert task.mu == 1 and task.threshold == 0.95 and float(task.tau) == 2.0


def test_tally_is_their_indexed_assignment_or_a_count():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        labels = torch.randint(0, 5, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g)
        w = (torch.rand(labels.numel(), generator=g) < 0.5).float()
        theirs = torch.zeros(5)
        theirs[labels] += w  # their now_mask[targets_u_b] += mask_l * mask_b (CPU: the last row wins)
        assert torch.equal(tally(labels, w, 5, "assign"), theirs)
        assert torch.equal(tally(labels, w, 5, "count"), torch.bincount(labels, weights=w, minlength=5).float())
    assert tally(torch.tensor([1, 1]), torch.tensor([1.0, 0.0]), 3).tolist() == [0, 0, 0]  # the last row wins
    assert tally(torch.tensor([1, 1]), torch.tensor([1.0, 0.0]), 3, "count").tolist() == [0, 1, 0]
    with pytest.raises(LongtailError, match="tally"):
        ACRSettings(tally="sum")


def test_the_estimate_moves_only_with_a_tally():
    u = torch.full((4,), 0.25)
    same, updated = update_estimate(u, torch.zeros(4), 0.99)
    assert torch.equal(same, u) and not bool(updated)
    new, updated = update_estimate(u, torch.tensor([1.0, 1.0, 0.0, 0.0]), 0.9)
    torch.testing.assert_close(new, torch.tensor([0.275, 0.275, 0.225, 0.225]))
    assert bool(updated)


def test_tau_is_tau1_until_est_epoch_then_a_third_then_estimated():
    """Their schedule: tau1 through epoch est_epoch; the next epoch starts from an empty sum (tau_max / 3); the
    estimate acts from the one after. Labeled images of the pool never enter the estimate."""
    lab, unl = sets()
    task = ACRTask(lab, unl, batch_size=8, settings=ACRSettings(est_epoch=2, steps_per_epoch=4))
    seen = []
    for epoch in range(5):
        task.on_epoch_start(epoch)
        seen.append(float(task.tau))
        labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 0])
        if task.estimating:
            task.observe(labels, torch.ones(8, dtype=torch.bool))
    assert seen[:3] == [2.0, 2.0, 2.0] and seen[3] == pytest.approx(2 / 3) and seen[4] != pytest.approx(2 / 3)
    u_before = task.u_py.clone()
    task.observe(torch.tensor([3, 3, 3]), torch.zeros(3, dtype=torch.bool))  # all labeled / unconfident: no move
    assert torch.equal(task.u_py, u_before)


# --- the model, the batches ---------------------------------------------------------------------------------------

def test_the_model_evaluates_the_balanced_head():
    torch.manual_seed(0)
    model = ACRClassifier.from_classifier(make_model("wrn-28-2", 10), 10)
    assert {k.split(".")[0] for k in model.state_dict()} == {"backbone", "head", "fc"}
    assert torch.equal(model.fc.bias, torch.zeros(10))  # their fc / fc1: Xavier-normal weights, zero bias
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    std, bal = model.train_outputs(x)
    assert torch.equal(model(x), bal) and std.shape == bal.shape == (3, 10) and not torch.equal(std, bal)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 1.47) < 0.01  # WRN-28-2 + a 650-weight head
    with pytest.raises(LongtailError, match="two heads"):
        ACRTask(*sets(), batch_size=8).loss(make_model("tiny", 4), None)  # type: ignore[arg-type]


def test_full_batch_draw_is_a_drop_last_loader():
    g = torch.Generator().manual_seed(0)
    rows = full_batch_draw(10, 4, 20, g, CPU)
    assert rows.numel() == 20
    for k in range(0, 16, 8):  # each pass: 8 distinct rows (two whole batches of 4; 2 rows left out)
        assert len(set(rows[k:k + 8].tolist())) == 8
    with pytest.raises(LongtailError, match="whole batches"):
        full_batch_draw(3, 4, 4, g, CPU)


def test_batches_views_and_the_pools_labeled_rows():
    source = synthetic_set([30] * 4, seed=3)
    lab, unl = darp_split(source, n1=8, m1=12, gamma_l=4, gamma_u=4, include_labeled=True)
    marks = pool_labeled_rows(lab, unl)
    assert int(marks.sum()) == len(lab) and len(unl) == len(lab) + sum([12, 7, 4, 3])
    task = ACRTask(lab, unl, batch_size=4, mu=2, pool_labeled=marks, weak=Augment(crop_padding=1),
                   settings=ACRSettings(steps_per_epoch=3))
    assert task.strong.randaugment == 2 and task.strong.cutout == 0.5 and task.strong.policy == "fixmatch"
    a = list(task.batches(0, torch.Generator().manual_seed(0)))
    b = list(task.batches(0, torch.Generator().manual_seed(0)))
    assert len(a) == 3 == task.steps_per_epoch
    for x, y in zip(a, b):
        assert x.images.shape == (4, 3, 8, 8) and x.u_weak.shape == (8, 3, 8, 8) and x.u_strong.shape == (16, 3, 8, 8)
        assert all(torch.equal(p, q) for p, q in zip(x, y))
        assert not torch.equal(x.u_strong[:8], x.u_strong[8:])  # two strong views, drawn apart
    assert any(bool(x.u_labeled.any()) for x in a)


# --- training through the loop, resuming --------------------------------------------------------------------------

TINY = ACRSettings(est_epoch=0, steps_per_epoch=3)


def tiny_run(epochs, *, start=0, state=None, settings=TINY):
    lab, unl = sets()
    torch.manual_seed(0)
    model = ACRClassifier.from_classifier(make_model("tiny", 4), 4)
    task = ACRTask(lab, unl, batch_size=8, mu=2, threshold=0.5, settings=settings, weak=Augment(crop_padding=1))
    opt = make_sgd(model, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        task.load_state_dict(state["task"])
    recs = fit(model, task, opt, epochs=epochs, start_epoch=start, lr_at=lambda e: 0.05, seed=0, device=CPU,
               amp="off", progress=False)
    return model, task, opt, recs


def test_the_task_trains_through_the_loop_and_resumes_exactly():
    model, task, opt, recs = tiny_run(4)
    assert len(recs) == 4 and all(np.isfinite(r.train_loss) and r.steps == 3 for r in recs)
    assert float(task.tau) != 2.0 and not torch.equal(task.u_py, torch.full((4,), 0.25))
    # stop after 2 epochs, carry model, optimizer and task state, go on: bit-identical to the uninterrupted run
    m2, t2, o2, _ = tiny_run(2)
    state = {"model": m2.state_dict(), "optimizer": o2.state_dict(), "task": t2.state_dict()}
    m3, t3, _, recs3 = tiny_run(4, start=2, state=state)
    assert [r.train_loss for r in recs3] == [r.train_loss for r in recs[2:]]
    for (k, a), b in zip(model.state_dict().items(), m3.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(task.u_py, t3.u_py) and float(task.tau) == float(t3.tau)
    # without the task's state the resumed run differs (the estimate restarts): the state is needed
    m4, t4, _, _ = tiny_run(4, start=2, state={**state, "task": {}})
    assert not torch.equal(t4.u_py, task.u_py)


# --- refusals, the contract ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting,match", [
    ({"train.sampler": "class-balanced"}, "shuffled batches"),
    ({"train.weighting": "inverse"}, "balanced head"),
    ({"loss.name": "focal"}, "cross-entropies"),
    ({"augment.mix": "mixup"}, "augment.mix"),
    ({"optim.name": "sam"}, "twice per step"),
    ({"semi.lambda_u": 2.0}, "FixMatch's"),
])
def test_acr_refuses_what_it_cannot_keep(setting, match):
    check_acr(RunConfig())
    with pytest.raises(LongtailError, match=match) as e:
        check_acr(apply_overrides(RunConfig(), setting))
    assert e.value.fix


def test_acr_refuses_bad_inputs():
    lab, unl = sets()
    with pytest.raises(LongtailError, match="whole batches"):
        ACRTask(lab, unl, batch_size=8, mu=4)  # a pool of 24 cannot give batches of 32
    with pytest.raises(LongtailError, match="threshold"):
        ACRTask(lab, unl, batch_size=8, threshold=1.5)
    with pytest.raises(LongtailError, match="pool_labeled"):
        ACRTask(lab, unl, batch_size=8, pool_labeled=torch.zeros(3, dtype=torch.bool))


def test_acr_keeps_the_task_contract():
    from test_task_contract import test_a_task_has_the_loop_methods_and_declares_its_capabilities as contract

    contract(ACRTask)
    assert not ACRTask.multi_process and not ACRTask.image_files and not ACRTask.graphable


# --- through the run driver (the config, the model with two heads, the task's state in checkpoints) ------------------

def _acr_run_config(epochs: int = 3) -> RunConfig:
    from longtail.config import DataConfig, ModelConfig, SemiConfig, TrainConfig

    return RunConfig(recipe="tiny-acr", data=DataConfig(dataset="synthetic"), model=ModelConfig(arch="tiny"),
                     train=TrainConfig(epochs=epochs, batch_size=8, lr=0.05, device="cpu", checkpoint_every=1,
                                       crop_padding=1, schedule="cosine", warmup_epochs=0),
                     semi=SemiConfig(method="acr", mu=1, threshold=0.5, acr_steps_per_epoch=3, acr_est_epoch=0))


@pytest.mark.slow
def test_an_acr_run_through_the_driver_resumes_bit_identically(tmp_path):
    """``semi.method=acr`` builds ACR's two-head model and task from the config; a run stopped after one epoch and
    resumed ends with the same weights, estimate and tau as an uninterrupted one (the task's state is in the
    checkpoint), and the report evaluates the balanced head."""
    from longtail.checkpoints import load_checkpoint
    from longtail.data.semi import SemiSplits
    from longtail.experiment import train_one

    train, test = synthetic_set([16, 8, 4, 2]), synthetic_set([5] * 4, seed=1, name="test")
    splits = SemiSplits(train, test, unlabeled=hide_labels(synthetic_set([4, 6, 8, 10], seed=2), name="pool"))
    cfg = _acr_run_config()
    full = train_one(cfg, tmp_path / "full", splits=splits, progress=False)
    assert train_one(cfg, tmp_path / "cut", splits=splits, progress=False, stop_after=1) == {}
    resumed = train_one(cfg, tmp_path / "cut", splits=splits, progress=False)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert any(k.startswith("fc.") for k in a["model"]) and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    state_a, state_b = a["extra"]["task"], b["extra"]["task"]
    assert state_a.keys() == state_b.keys() and state_a
    for k in state_a:
        va, vb = state_a[k], state_b[k]
        assert torch.equal(torch.as_tensor(va), torch.as_tensor(vb)), k
    assert resumed["per_class"] == full["per_class"]


def test_zero_steps_per_epoch_is_one_pass_over_the_labeled_set():
    """``semi.acr_steps_per_epoch=0``: an ACR epoch is the labeled set's whole batches (how the method table's ACR
    row keeps the fast protocol's epoch on any data set), not a fixed number of steps."""
    from dataclasses import replace

    from longtail.data.semi import SemiSplits
    from longtail.experiment import _base_task

    train, test = synthetic_set([16, 8, 4, 2]), synthetic_set([5] * 4, seed=1, name="test")
    splits = SemiSplits(train, test, unlabeled=hide_labels(synthetic_set([4, 6, 8, 10], seed=2), name="pool"))
    cfg = _acr_run_config()
    zero = replace(cfg, semi=replace(cfg.semi, acr_steps_per_epoch=0))
    task = _base_task(zero, train, train.class_counts(), splits)
    assert task.steps_per_epoch == 30 // 8 == 3  # 30 labeled images, batch 8, drop_last
    assert _base_task(cfg, train, train.class_counts(), splits).steps_per_epoch == 3  # the fixed setting as given
    nine = replace(cfg, semi=replace(cfg.semi, acr_steps_per_epoch=9))
    assert _base_task(nine, train, train.class_counts(), splits).steps_per_epoch == 9
    with pytest.raises(LongtailError, match="acr_steps_per_epoch"):
        replace(cfg.semi, acr_steps_per_epoch=-1)
