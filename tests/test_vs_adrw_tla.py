"""VS + ADRW + TLA (Wang et al., NeurIPS 2023) against a transcription of their released code.

The source is wang22ti/DDC at bcae46e2378af43605b10921daec13eef81cd497 (the last commit before the journal
version's additions; the lines transcribed here are unchanged at 4bd4fb3, 2025-12-17). Each ``src_*`` function
below transcribes one piece, line by line, in plain numpy / torch, with the file and lines it comes from; our
pieces (``longtail.losses.vs`` / ``TruncatedVS``, the ``inverse-power`` weighting deferred as ADRW,
``weights.reweighting_started``, the recipes) must give the same values and gradients to float tolerance.

Mutation check: ``BROKEN`` holds the transcription with one term wrong at a time (a multiplication for a
division, a sign, the truncation one epoch late or dropping the wrong part, the weights' exponent's sign); the
parity test must tell each one from ours (``test_each_broken_transcription_is_told_apart``), so the parity tests
are not passing because they cannot see the terms.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.config import LossConfig, RunConfig, TrainConfig, apply_overrides, unused_settings
from longtail.counts import ClassCounts
from longtail.errors import LongtailError
from longtail.losses import cdt, cdt_temperatures, log_prior, logit_adjusted, loss_from_config, make_loss, vs, vs_deltas
from longtail.recipes import RECIPES
from longtail.schedule import lr_function
from longtail.weights import (
    DeferredReweighting,
    class_weights,
    make_weighting,
    reweighting_started,
    weighting_from_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = {"cifar10": "cifar10-lt-vs-adrw-tla", "cifar100": "cifar100-lt-vs-adrw-tla"}


# the transcription ------------------------------------------------------------------------------------------


def src_cls_num_list(num_classes: int, imb_factor: float) -> list[int]:
    """datasets/imbalance_cifar.py lines 16-23 (``imb_type == 'exp'``): ``img_max = len(self.data) / cls_num``."""
    img_max = 50000 / num_classes
    return [int(img_max * (imb_factor ** (cls_idx / (num_classes - 1.0)))) for cls_idx in range(num_classes)]


def src_t_reweight(epochs: int) -> int:
    """cifar_train_sam.py line 74."""
    return (epochs // 200) * 160


def src_vs_loss(x, target, cls_num_list, gamma, tau, weight=None, use_multiplicative=True, *, mutate=None):
    """losses.py lines 67-86, ``VSLoss.__init__`` and ``forward``; the buffers are ``torch.cuda.FloatTensor``
    (float32), here on the CPU. ``mutate`` names one wrong term (the mutation check)."""
    cls_probs = [cls_num / sum(cls_num_list) for cls_num in cls_num_list]
    temp = (1.0 / np.array(cls_num_list)) ** gamma
    temp = temp / np.min(temp)
    iota_list = tau * np.log(cls_probs)
    delta_list = temp
    iota = torch.tensor(iota_list, dtype=torch.float32).to(x.dtype)
    delta = torch.tensor(delta_list, dtype=torch.float32).to(x.dtype)
    if mutate == "delta-multiplies":
        output = x * delta + iota if use_multiplicative else x + iota
    elif mutate == "iota-sign":
        output = x / delta - iota if use_multiplicative else x - iota
    elif mutate == "truncation-drops-iota":
        output = x / delta + iota if use_multiplicative else x / delta
    else:
        output = x / delta + iota if use_multiplicative else x + iota
    return F.cross_entropy(output, target, weight=weight)


def src_per_cls_weights(epoch, cls_num_list, tro, t_reweight, *, mutate=None):
    """cifar_train_sam.py lines 209-216, the ``ADRW`` / ``ADRW-T`` branch."""
    if epoch // t_reweight:
        exponent = tro if mutate == "adrw-sign" else -tro
        per_cls_weights = (np.array(cls_num_list) / sum(cls_num_list)) ** exponent
    else:
        per_cls_weights = np.power(1.0, cls_num_list)
    per_cls_weights = per_cls_weights / np.sum(per_cls_weights) * len(cls_num_list)
    return torch.FloatTensor(per_cls_weights)


def src_use_multiplicative(epoch, t_reweight, train_rule="ADRW-T", *, mutate=None):
    """cifar_train_sam.py lines 279-282 / 288-291: ``criterion(output, target, False)`` when
    ``args.loss_type == 'VS' and '-T' in args.train_rule and epoch + 1 > args.t_reweight``."""
    later = epoch > t_reweight if mutate == "truncation-one-epoch-late" else epoch + 1 > t_reweight
    return not ("-T" in train_rule and later)


def src_adjust_learning_rate(epoch, lr, epochs):
    """utils/utils.py lines 73-86."""
    factor = epochs // 200
    epoch = epoch + 1
    if epoch <= 5 * factor:
        return lr * epoch / 5
    if epoch > 180 * factor:
        return lr * 0.0001
    if epoch > 160 * factor:
        return lr * 0.01
    return lr


#: The published 400-epoch runs (bash_script.sh, CIFAR-*-LT imb 0.01): the plain VS command the ADRW-T command
#: resumes at epoch 320 (its checkpoint path: CIFAR-10 gamma 0.05, tau 1.0, rho 0.1, wd 2e-4; CIFAR-100 gamma 0.05,
#: tau 1.0, rho 0.2, wd 2e-4), and the ADRW-T command's own --tro, --gamma, --tau, --rho.
SOURCE_RUNS = {
    "cifar10": {"vs": {"gamma": 0.05, "tau": 1.0, "rho": (0.1, 0.1)},
                "adrw_t": {"tro": 0.15, "gamma": 0.0, "tau": 1.0, "rho": (0.1, 0.2)}},
    "cifar100": {"vs": {"gamma": 0.05, "tau": 1.0, "rho": (0.2, 0.2)},
                 "adrw_t": {"tro": 0.25, "gamma": 0.0, "tau": 0.75, "rho": (0.2, 0.4)}},
}


def src_objective(ds, x, target, epoch, epochs=400, *, mutate=None):
    """The loss their published run trains with at ``epoch`` (0-based): the VS command's (``train_rule None``:
    unweighted, multiplicative on) before the resume at ``t_reweight``, the ADRW-T command's after."""
    cls_num_list = src_cls_num_list(10 if ds == "cifar10" else 100, 0.01)
    t_reweight = src_t_reweight(epochs)
    if epoch < t_reweight:  # the VS run: per_cls_weights None (lines 183-185), VSLoss(..., weight=None)
        run = SOURCE_RUNS[ds]["vs"]
        return src_vs_loss(x, target, cls_num_list, run["gamma"], run["tau"], None, True, mutate=mutate)
    run = SOURCE_RUNS[ds]["adrw_t"]
    w = src_per_cls_weights(epoch, cls_num_list, run["tro"], t_reweight, mutate=mutate).to(x.dtype)
    use_mult = src_use_multiplicative(epoch, t_reweight, mutate=mutate)
    return src_vs_loss(x, target, cls_num_list, run["gamma"], run["tau"], w, use_mult, mutate=mutate)


#: The one ADRW-T command of bash_script.sh whose --gamma is not 0 (CIFAR-10-LT imb 0.1): run alone, its -T drops a
#: multiplicative part that is there. (In the rho=100 runs the ADRW-T command has --gamma 0, so its -T changes
#: nothing: their truncation is the resume from the VS run, gamma 0.05, into the ADRW-T run, gamma 0.)
SINGLE_RUN = {"imb_factor": 0.1, "tro": 0.1, "gamma": 0.1, "tau": 1.0}


def src_single_run_objective(x, target, epoch, epochs=400, *, mutate=None):
    """One ADRW-T command trained from scratch: ADRW weights (lines 209-216) and VSLoss built every epoch
    (lines 226-228), called with use_multiplicative False after t_reweight (lines 279-291)."""
    r = SINGLE_RUN
    cls_num_list = src_cls_num_list(10, r["imb_factor"])
    t_reweight = src_t_reweight(epochs)
    w = src_per_cls_weights(epoch, cls_num_list, r["tro"], t_reweight, mutate=mutate).to(x.dtype)
    use_mult = src_use_multiplicative(epoch, t_reweight, mutate=mutate)
    return src_vs_loss(x, target, cls_num_list, r["gamma"], r["tau"], w, use_mult, mutate=mutate)


# ours, as a run builds them ---------------------------------------------------------------------------------


def counts_of(ds: str) -> ClassCounts:
    """The recipe's training counts (the reference n_max: 5000 / 500 per class, rho 100)."""
    return ClassCounts.from_profile(5000 if ds == "cifar10" else 500, 10 if ds == "cifar10" else 100, 100.0)


def our_objective(ds, x, target, epoch):
    """The recipe's loss at ``epoch``: its weighting (train section) and loss (loss section), the loss told whether
    the deferred re-weighting has started, as the task tells it at each epoch's start."""
    cfg = RECIPES[RECIPE[ds]].config
    counts = counts_of(ds)
    weighting = weighting_from_config(cfg.train, counts)
    loss = loss_from_config(cfg.loss, counts)
    loss.truncate(reweighting_started(weighting, epoch))
    return loss(x, target, weight=weighting.weight_at(epoch))


def our_single_run_objective(x, target, epoch):
    """The same run in our settings: vs-tla with late_tau = tau, the inverse-power weighting from epoch 160 of 200."""
    r = SINGLE_RUN
    counts = ClassCounts.from_profile(5000, 10, 1 / r["imb_factor"])
    t = TrainConfig(epochs=400, weighting="inverse-power", weighting_power=r["tro"], drw_start=160.0)
    weighting = weighting_from_config(t, counts)
    loss = make_loss("vs-tla", counts, gamma=r["gamma"], tau=r["tau"], late_tau=r["tau"])
    loss.truncate(reweighting_started(weighting, epoch))
    return loss(x, target, weight=weighting.weight_at(epoch))


def batch(c: int, b: int = 64, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, c, generator=g, dtype=torch.float64) * 3).to(dtype)
    y = torch.randint(0, c, (b,), generator=g)
    return x, y


def value_and_grad(fn, x, y):
    x = x.clone().requires_grad_(True)
    loss = fn(x, y)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


# parity ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ds", ["cifar10", "cifar100"])
def test_the_subset_counts_are_theirs(ds):
    c = 10 if ds == "cifar10" else 100
    assert list(counts_of(ds).counts) == src_cls_num_list(c, 0.01)


@pytest.mark.parametrize("ds", ["cifar10", "cifar100"])
@pytest.mark.parametrize("gamma,tau", [(0.05, 1.0), (0.3, 1.0), (0.2, 0.75), (0.0, 1.5), (0.5, 0.0)])
@pytest.mark.parametrize("weighted", [False, True])
def test_vs_equals_their_vsloss_with_gradients(ds, gamma, tau, weighted):
    counts = counts_of(ds)
    x, y = batch(counts.num_classes)
    w = torch.linspace(0.3, 2.5, counts.num_classes) if weighted else None
    theirs = value_and_grad(lambda z, t: src_vs_loss(z, t, list(counts.counts), gamma, tau, w), x, y)
    ours = value_and_grad(lambda z, t: make_loss("vs", counts, gamma=gamma, tau=tau)(z, t, weight=w), x, y)
    torch.testing.assert_close(ours, theirs)
    # and the truncated form, their use_multiplicative=False, is the logit-adjusted loss with the same tau
    tla = make_loss("vs-tla", counts, gamma=gamma, tau=1.0, late_tau=tau)
    tla.truncate()
    theirs = value_and_grad(lambda z, t: src_vs_loss(z, t, list(counts.counts), gamma, tau, w, False), x, y)
    torch.testing.assert_close(value_and_grad(lambda z, t: tla(z, t, weight=w), x, y), theirs)


def test_vs_in_float64_matches_to_float32_buffers():
    """Their buffers are float32 (torch.cuda.FloatTensor); ours too, cast to the logits' dtype."""
    counts = counts_of("cifar10")
    x, y = batch(10, dtype=torch.float64)
    ours = make_loss("vs", counts, gamma=0.05, tau=1.0)(x, y)
    theirs = src_vs_loss(x, y, list(counts.counts), 0.05, 1.0)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ds", ["cifar10", "cifar100"])
@pytest.mark.parametrize("epoch", [0, 1, 319, 320, 321, 359, 399])
def test_adrw_weights_are_theirs_at_every_stage(ds, epoch):
    cfg = RECIPES[RECIPE[ds]].config
    counts = counts_of(ds)
    ours = weighting_from_config(cfg.train, counts).weight_at(epoch)
    theirs = src_per_cls_weights(epoch, list(counts.counts), SOURCE_RUNS[ds]["adrw_t"]["tro"], src_t_reweight(400))
    if ours is None:  # before the start theirs are all ones, which F.cross_entropy treats as no weight
        torch.testing.assert_close(theirs, torch.ones(counts.num_classes))
        assert epoch < 320
    else:
        torch.testing.assert_close(ours, theirs)
        assert epoch >= 320


@pytest.mark.parametrize("ds", ["cifar10", "cifar100"])
@pytest.mark.parametrize("epoch", [0, 1, 200, 319, 320, 321, 360, 399])
def test_the_recipes_objective_is_their_runs_at_every_epoch(ds, epoch):
    """Loss value and gradient of the recipe (VS until epoch 320, then TLA with ADRW weights) against their
    stitched run (the VS command until its epoch-320 checkpoint, the ADRW-T command after)."""
    c = 10 if ds == "cifar10" else 100
    x, y = batch(c, seed=epoch)
    ours = value_and_grad(lambda z, t: our_objective(ds, z, t, epoch), x, y)
    theirs = value_and_grad(lambda z, t: src_objective(ds, z, t, epoch), x, y)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("epoch", [0, 319, 320, 321, 399])
def test_one_adrw_t_run_is_theirs_at_every_epoch(epoch):
    """The truncation itself, where it changes something: one ADRW-T command with gamma 0.1."""
    assert list(ClassCounts.from_profile(5000, 10, 10.0).counts) == src_cls_num_list(10, 0.1)
    x, y = batch(10, seed=epoch)
    ours = value_and_grad(lambda z, t: our_single_run_objective(z, t, epoch), x, y)
    theirs = value_and_grad(lambda z, t: src_single_run_objective(z, t, epoch), x, y)
    torch.testing.assert_close(ours, theirs)


BROKEN = ["delta-multiplies", "iota-sign", "truncation-drops-iota", "adrw-sign", "truncation-one-epoch-late"]


@pytest.mark.parametrize("mutate", BROKEN)
def test_each_broken_transcription_is_told_apart(mutate):
    """Each one-term mistake changes the objective at some epoch the parity test checks, by far more than its
    tolerance: the parity test sees every term."""
    gaps = []
    for ds in ("cifar10", "cifar100"):
        for epoch in (0, 319, 320, 399):
            x, y = batch(10 if ds == "cifar10" else 100, seed=epoch)
            ours = our_objective(ds, x, y, epoch)
            broken = src_objective(ds, x, y, epoch, mutate=mutate)
            gaps.append(abs(ours - broken).item())
    for epoch in (0, 319, 320, 321, 399):
        x, y = batch(10, seed=epoch)
        gaps.append(abs(our_single_run_objective(x, y, epoch) - src_single_run_objective(x, y, epoch, mutate=mutate))
                    .item())
    assert max(gaps) > 1e-3, (mutate, gaps)


def test_the_learning_rate_is_theirs_but_for_the_warm_up_overshoot():
    """Their warm-up is lr * e / 5 over the first 5 * (epochs // 200) epochs: it reaches 0.1 at epoch 5 and goes
    on to 0.2 at epoch 10 of 400. The recipe's step schedule warms up over 5 epochs to 0.1 (equal to theirs for
    epochs 1-5) and cannot express the overshoot (epochs 6-10): every other epoch has their rate."""
    for ds in RECIPE:
        cfg = RECIPES[RECIPE[ds]].config
        ours = lr_function(cfg)
        differ = [e + 1 for e in range(400) if abs(ours(e) - src_adjust_learning_rate(e, 0.1, 400)) > 1e-12]
        assert differ == [6, 7, 8, 9, 10], ds
        assert [src_adjust_learning_rate(e, 0.1, 400) for e in range(5, 10)] == pytest.approx([0.12, 0.14, 0.16,
                                                                                               0.18, 0.2])


# the pieces ------------------------------------------------------------------------------------------------

SKEWED = ClassCounts((500, 120, 30, 8, 2))


def test_vs_neutral_settings_are_the_losses_it_combines():
    x, y = batch(5, dtype=torch.float64)
    w = torch.linspace(0.5, 2.0, 5, dtype=torch.float64)
    lp = log_prior(SKEWED)
    torch.testing.assert_close(make_loss("vs", SKEWED, gamma=0.0, tau=1.3)(x, y, w),
                               logit_adjusted(x, y, lp, tau=1.3, weight=w))
    torch.testing.assert_close(make_loss("vs", SKEWED, gamma=0.2, tau=0.0)(x, y, w),
                               cdt(x, y, cdt_temperatures(SKEWED, gamma=0.2), weight=w))
    torch.testing.assert_close(vs_deltas(SKEWED, gamma=0.2), cdt_temperatures(SKEWED, gamma=0.2))
    torch.testing.assert_close(vs(x, y, torch.ones(5), torch.zeros(5)), F.cross_entropy(x, y))


def test_vs_favours_rare_classes_both_ways():
    """Equal logits: the additive term lowers rare classes' scores (so training pushes them up); the
    multiplicative term shrinks rare classes' logits, so a rare-class target loses more than a head one."""
    z = torch.zeros(1, 5)
    losses = [make_loss("vs", SKEWED, gamma=0.0, tau=1.0)(z, torch.tensor([c])).item() for c in range(5)]
    assert losses == sorted(losses)
    z = torch.full((1, 5), 2.0)
    z[0, 0] = 0.0
    shrunk = [make_loss("vs", SKEWED, gamma=0.3, tau=0.0)(z, torch.tensor([c])).item() for c in range(1, 5)]
    assert shrunk == sorted(shrunk)


def test_tla_is_vs_until_truncated_then_logit_adjusted():
    x, y = batch(5)
    w = torch.linspace(0.5, 2.0, 5)
    tla = make_loss("vs-tla", SKEWED, gamma=0.1, tau=1.0, late_tau=0.75)
    assert not tla.truncated
    torch.testing.assert_close(tla(x, y, w), make_loss("vs", SKEWED, gamma=0.1, tau=1.0)(x, y, w))
    tla.truncate()
    torch.testing.assert_close(tla(x, y, w), make_loss("logit-adjust", SKEWED, tau=0.75)(x, y, w))
    assert "truncated=True" in repr(tla) and tla.state_dict() == {}
    tla.truncate(False)
    torch.testing.assert_close(tla(x, y, w), make_loss("vs", SKEWED, gamma=0.1, tau=1.0)(x, y, w))


def test_reweighting_started_only_for_a_deferred_weighting():
    drw = make_weighting("inverse-power", SKEWED, start_epoch=10, power=0.2)
    assert isinstance(drw, DeferredReweighting)
    assert [reweighting_started(drw, e) for e in (0, 9, 10, 11)] == [False, False, True, True]
    assert not reweighting_started(make_weighting("inverse-power", SKEWED, power=0.2), 500)  # constant: never
    assert not reweighting_started(None, 500)


def test_inverse_power_generalises_inverse_and_sqrt_inverse():
    torch.testing.assert_close(class_weights("inverse-power", SKEWED, power=1.0), class_weights("inverse", SKEWED))
    torch.testing.assert_close(class_weights("inverse-power", SKEWED, power=0.5),
                               class_weights("sqrt-inverse", SKEWED))
    torch.testing.assert_close(class_weights("inverse-power", SKEWED, power=0.0), torch.ones(5))
    w = class_weights("inverse-power", SKEWED, power=0.25)
    assert w.sum().item() == pytest.approx(5.0) and (w[1:] > w[:-1]).all()
    with pytest.raises(LongtailError, match="finite power"):
        class_weights("inverse-power", SKEWED, power=float("nan"))
    # the class-balanced beta does not reach it, nor its power the others
    torch.testing.assert_close(class_weights("inverse-power", SKEWED, power=0.3, beta=0.5),
                               class_weights("inverse-power", SKEWED, power=0.3))
    torch.testing.assert_close(class_weights("inverse", SKEWED, power=0.3), class_weights("inverse", SKEWED))


def test_weighting_from_config_scales_the_start_and_passes_the_parameters():
    t = TrainConfig(epochs=400, weighting="inverse-power", weighting_power=0.25, drw_start=160.0)
    w = weighting_from_config(t, SKEWED)
    assert isinstance(w, DeferredReweighting) and w.start_epoch == 320
    torch.testing.assert_close(w.weight_at(320), class_weights("inverse-power", SKEWED, power=0.25))
    cb = weighting_from_config(TrainConfig(weighting="class-balanced", cb_beta=0.99), SKEWED)
    torch.testing.assert_close(cb.weight_at(0), class_weights("class-balanced", SKEWED, beta=0.99))


# settings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,value", [("train.weighting_power", "-0.5"), ("train.weighting_power", "nan")])
def test_bad_weighting_power_is_refused_with_its_name(key, value):
    with pytest.raises(LongtailError) as e:
        apply_overrides(RunConfig(), {key: value})
    assert key in e.value.problem and "--set train.weighting_power=" in e.value.fix


@pytest.mark.parametrize("loss,key,value", [("vs", "loss.gamma", "-0.1"), ("vs", "loss.tau", "inf"),
                                            ("vs-tla", "loss.gamma", "-1"), ("vs-tla", "loss.late_tau", "nan")])
def test_bad_vs_parameters_are_refused(loss, key, value):
    with pytest.raises(LongtailError) as e:
        apply_overrides(RunConfig(), {"loss.name": loss, key: value})
    assert key in e.value.problem and e.value.fix


def test_weighting_power_is_shown_only_for_the_inverse_power_weighting():
    assert "train.weighting_power" in unused_settings(RunConfig())
    cfg = RECIPES["cifar10-lt-vs-adrw-tla"].config
    assert "train.weighting_power" not in unused_settings(cfg)
    assert LossConfig("vs-tla").params == {"gamma": 0.3, "tau": 1.0, "late_tau": 1.0}


@pytest.mark.parametrize("ds", ["cifar10", "cifar100"])
def test_the_recipes_carry_their_settings(ds):
    """bash_script.sh (the VS command and the ADRW-T command resuming it) and cifar_train_sam.py's defaults."""
    cfg = RECIPES[RECIPE[ds]].config
    vs_run, adrw = SOURCE_RUNS[ds]["vs"], SOURCE_RUNS[ds]["adrw_t"]
    assert (cfg.data.dataset, cfg.data.imbalance_ratio, cfg.data.profile, cfg.data.normalization) == (
        ds, 100.0, "exp", None)  # None: the CIFAR reference constants, their Normalize((0.4914, ...), (0.2023, ...))
    assert (cfg.model.arch, cfg.model.head) == ("resnet32", "linear")  # -a resnet32, use_norm False for VS
    t = cfg.train
    assert (t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay, t.nesterov) == (400, 128, 0.1, 0.9, 2e-4, False)
    assert (t.schedule, t.milestones, t.weighting, t.drw_start) == ("step", (160.0, 180.0), "inverse-power", 160.0)
    assert t.weighting_power == adrw["tro"] and (t.crop_padding, t.flip) == (4, True)
    assert cfg.loss == LossConfig("vs-tla", {"gamma": vs_run["gamma"], "tau": vs_run["tau"], "late_tau": adrw["tau"]})
    # the VS run's rho until epoch 320 (0-based), the ADRW-T command's rho[1] after (adjust_rho); both passes in
    # train mode
    assert (cfg.optim.name, cfg.optim.sam_rho, cfg.optim.sam_rho_late) == ("sam", vs_run["rho"][0], adrw["rho"][1])
    assert (cfg.optim.sam_rho_late_start, cfg.optim.sam_bn_stats) == (160.0, "both")
    # --randaug 1: CIFAR10Policy + Cutout(n_holes=1, length=16), black, before Normalize
    assert (cfg.augment.autoaugment, cfg.augment.randaugment) == ("cifar10", 0)
    assert (cfg.augment.cutout, cfg.augment.cutout_policy) == (0.5, "devries")
    assert RECIPES[RECIPE[ds]].published.startswith("rho=100: " + ("86.42 [R]" if ds == "cifar10" else "53.05 [R]"))


# what a run does with them ----------------------------------------------------------------------------------


def built_task(ds: str, tmp_path):
    """The recipe's task as the run driver builds it (as tests/test_recipes_smoke.py does)."""
    from longtail.data.registry import Splits
    from longtail.driver import Context
    from longtail.experiment import SupervisedStage
    from longtail.runs import RunDir

    from conftest import synthetic_set

    cfg = RECIPES[RECIPE[ds]].config
    cfg = replace(cfg, train=replace(cfg.train, device="cpu"))
    k = 10 if ds == "cifar10" else 100
    train = synthetic_set([4] + [3 - c % 3 for c in range(1, k)], name="train")
    splits = Splits(train, synthetic_set([1] * k, seed=1, name="test"))
    counts = train.class_counts()
    built = SupervisedStage(cfg, RunDir(tmp_path / "run")).build(Context(splits, counts, torch.device("cpu"), True,
                                                                         print, False))
    return built.task, counts


def test_a_run_gets_the_adrw_power_of_its_config(tmp_path):
    task, counts = built_task("cifar10", tmp_path)
    task.on_epoch_start(320)
    torch.testing.assert_close(task.class_weight, class_weights("inverse-power", counts, power=0.15))


def test_a_run_truncates_the_vs_loss_when_the_deferred_weights_start(tmp_path):
    task, _ = built_task("cifar10", tmp_path)
    task.on_epoch_start(319)
    assert not task.criterion.truncated
    task.on_epoch_start(320)
    assert task.criterion.truncated
