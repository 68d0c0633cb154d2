"""SAM as wang22ti/DDC trains with it (``optim.sam_bn_stats=both``, ``optim.sam_rho_late``): steps, BatchNorm
statistics and the radius of each epoch against a transcription of DDC's ``utils/sam.py``, the SAM part of
``cifar_train_sam.py``'s ``train`` and ``utils/utils.py``'s ``adjust_rho`` (all at bcae46e)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from longtail import LongtailError
from longtail.config import ModelConfig, OptimConfig, RunConfig, TrainConfig, apply_overrides, unused_settings
from longtail.loop import fit
from longtail.losses import make_loss
from longtail.models import Classifier
from longtail.optim import SAM, RunOptimizer, make_optimizer, optim_settings
from longtail.tasks import SupervisedTask

from conftest import synthetic_set


# The source, transcribed ---------------------------------------------------------------------------------
class SrcSAM(torch.optim.Optimizer):
    """utils/sam.py (davda54/sam's SAM as DDC has it): first_step, second_step, _grad_norm."""

    def __init__(self, params, base_optimizer, rho=0.05, adaptive=False, **kwargs):
        assert rho >= 0.0, f"Invalid rho, should be non-negative: {rho}"
        defaults = dict(rho=rho, adaptive=adaptive, **kwargs)
        super(SrcSAM, self).__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                e_w = (torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(e_w)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad=False):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.data = self.state[p]["old_p"]
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def _grad_norm(self):
        shared_device = self.param_groups[0]["params"][0].device
        return torch.norm(
            torch.stack([((torch.abs(p) if group["adaptive"] else 1.0) * p.grad).norm(p=2).to(shared_device)
                         for group in self.param_groups for p in group["params"]
                         if p.grad is not None]), p=2)


def src_adjust_rho(optimizer, epoch, epochs, rho):
    """utils/utils.py 88-98: rho[1] once epoch + 1 > 160 * (epochs // 200), rho[0] before."""
    epoch = epoch + 1
    factor = epochs // 200
    r = rho[1] if epoch > 160 * factor else rho[0]
    for param_group in optimizer.param_groups:
        param_group["rho"] = r
    return r


def src_train_step(model, optimizer, criterion, input, target):
    """cifar_train_sam.py 277-293 (after model.train() at 265): two forward passes in train mode."""
    output = model(input)
    loss = criterion(output, target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.first_step(zero_grad=True)
    output = model(input)
    loss = criterion(output, target)
    loss.backward()
    optimizer.second_step(zero_grad=True)


# A model with BatchNorm -----------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU())
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.backbone(x))


def config(epochs=400, **optim) -> RunConfig:
    return RunConfig(model=ModelConfig(arch="tiny"),
                     train=TrainConfig(epochs=epochs, batch_size=8, lr=0.1, momentum=0.9, weight_decay=2e-4,
                                       device="cpu"),
                     optim=OptimConfig(**{"name": "sam", **optim}))


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)


def closure_for(model, opt, x, y):
    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_ours(cfg, epochs_and_seeds):
    model = Net()
    model.train()
    opt = make_optimizer(model, cfg)
    for epoch, seed in epochs_and_seeds:
        opt.on_epoch_start(epoch, None, cfg.train.epochs)
        x, y = batch(seed)
        opt.step(closure_for(model, opt, x, y))
    return model, opt


def run_source(rho, epochs, epochs_and_seeds):
    model = Net()
    model.train()
    opt = SrcSAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=2e-4)
    for epoch, seed in epochs_and_seeds:
        src_adjust_rho(opt, epoch, epochs, rho)
        x, y = batch(seed)
        src_train_step(model, opt, nn.CrossEntropyLoss(), x, y)
    return model


# The tests --------------------------------------------------------------------------------------------------
def test_steps_across_the_switch_equal_ddcs_with_both_passes_updating_batchnorm():
    """Steps at epochs 318-321 of 400 (rho 0.1, 0.1, then 0.2, 0.2): weights, momentum-driven updates, and
    BatchNorm's running statistics (updated twice per step) as DDC's."""
    steps = [(318, 1), (319, 2), (320, 3), (321, 4)]
    cfg = config(sam_rho=0.1, sam_rho_late=0.2, sam_bn_stats="both")
    ours, opt = run_ours(cfg, steps)
    theirs = run_source((0.1, 0.2), 400, steps)
    assert isinstance(opt, SAM) and opt.rho == 0.2
    mine, ref = state(ours), state(theirs)
    assert mine.keys() == ref.keys()
    for k in ref:
        if "running" in k or "tracked" in k:
            torch.testing.assert_close(mine[k], ref[k], rtol=1e-6, atol=1e-7, msg=k)
        else:
            torch.testing.assert_close(mine[k], ref[k], rtol=1e-5, atol=1e-6, msg=k)
    assert int(mine["backbone.1.num_batches_tracked"]) == 2 * len(steps)


def test_each_setting_is_needed_to_match_the_source():
    """First-pass statistics (the default) or one radius throughout do not give DDC's steps."""
    steps = [(319, 1), (320, 2)]
    theirs = state(run_source((0.1, 0.2), 400, steps))
    first, _ = run_ours(config(sam_rho=0.1, sam_rho_late=0.2), steps)
    assert not torch.allclose(state(first)["backbone.1.running_var"], theirs["backbone.1.running_var"])
    assert int(state(first)["backbone.1.num_batches_tracked"]) == len(steps)
    one_rho, _ = run_ours(config(sam_rho=0.1, sam_bn_stats="both"), steps)
    assert not torch.allclose(state(one_rho)["head.weight"], theirs["head.weight"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("epochs", [200, 400, 800])
def test_the_radius_of_every_epoch_is_adjust_rhos(epochs):
    opt = make_optimizer(Net(), config(epochs=epochs, sam_rho=0.2, sam_rho_late=0.4))
    src = SrcSAM(Net().parameters(), torch.optim.SGD, lr=0.1)
    for epoch in range(epochs):
        opt.on_epoch_start(epoch, 10, epochs)
        assert opt.rho == src_adjust_rho(src, epoch, epochs, (0.2, 0.4)), epoch
    assert opt.rho_at(160 * epochs // 200 - 1) == 0.2 and opt.rho_at(160 * epochs // 200) == 0.4


def test_the_late_start_scales_with_the_run_and_can_be_moved():
    opt = make_optimizer(Net(), config(epochs=10, sam_rho=0.1, sam_rho_late=0.3))
    assert [opt.rho_at(e) for e in (7, 8)] == [0.1, 0.3]  # round(160 * 10 / 200) = 8
    opt = make_optimizer(Net(), config(epochs=400, sam_rho=0.1, sam_rho_late=0.3, sam_rho_late_start=100.0))
    assert [opt.rho_at(e) for e in (199, 200)] == [0.1, 0.3]
    plain = make_optimizer(Net(), config(sam_rho=0.1))  # no late radius: one radius throughout
    plain.on_epoch_start(399, 10, 400)
    assert plain.rho == 0.1 and plain.rho_late is None


def test_a_run_steps_with_the_radius_of_its_epoch_through_the_loop_and_runoptimizer():
    """longtail.loop.fit tells the optimizer the epoch: SAM alone, and SAM inside RunOptimizer (the EMA)."""
    train = synthetic_set([6, 6])
    for extra in ({}, {"ema": 0.9}):
        cfg = config(epochs=2, sam_rho=0.1, sam_rho_late=0.3, sam_rho_late_start=100.0, **extra)  # epoch 1
        net = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4), nn.BatchNorm1d(4)), nn.Linear(4, 2))
        opt = make_optimizer(net, cfg)
        sam = opt.base_optimizer if isinstance(opt, RunOptimizer) else opt
        assert isinstance(sam, SAM) and isinstance(opt, RunOptimizer) == bool(extra)
        seen: list[float] = []

        def record(phase: str, sam: SAM = sam, seen: list[float] = seen) -> None:
            if phase == "ascent":
                seen.append(sam.rho)

        sam.add_phase_hook(record)
        task = SupervisedTask(train, make_loss("ce", train.class_counts()), batch_size=4)
        fit(net, task, opt, epochs=2, lr_at=lambda e: 0.05, seed=0, device=torch.device("cpu"), progress=False)
        assert seen == [0.1] * 3 + [0.3] * 3, (extra, seen)


def test_the_settings_are_checked_and_shown():
    with pytest.raises(LongtailError, match="optim.sam_rho_late=0.2 sets SAM's steps, and optim.name=sgd"):
        make_optimizer(Net(), replace(config(), optim=OptimConfig(sam_rho_late=0.2)))
    with pytest.raises(LongtailError, match="optim.sam_bn_stats=both sets SAM's steps"):
        make_optimizer(Net(), replace(config(), optim=OptimConfig(sam_bn_stats="both")))
    for key, value in (("optim.sam_rho_late", "0"), ("optim.sam_rho_late", "nan"), ("optim.sam_rho_late_start", "-1"),
                       ("optim.sam_bn_stats", "second")):
        with pytest.raises(LongtailError) as e:
            apply_overrides(RunConfig(), {key: value})
        assert key in e.value.problem and e.value.fix
    cfg = config(sam_rho=0.1, sam_rho_late=0.2, sam_bn_stats="both")
    assert {"optim.sam_rho_late=0.2", "optim.sam_bn_stats=both"} <= set(optim_settings(cfg))
    hidden = unused_settings(RunConfig())
    assert {"optim.sam_rho_late", "optim.sam_rho_late_start", "optim.sam_bn_stats"} <= set(hidden)
    assert "optim.sam_rho_late_start" in unused_settings(config())  # shown with a late radius only
    assert "optim.sam_bn_stats" not in unused_settings(config())


def test_default_sam_is_unchanged_first_pass_statistics_one_radius():
    model = Net()
    opt = make_optimizer(model, config(sam_rho=0.1))
    x, y = batch(1)
    before = copy.deepcopy(model)
    opt.on_epoch_start(0)
    opt.step(closure_for(model, opt, x, y))
    before.train()
    before(x)  # the first pass's statistics only
    torch.testing.assert_close(model.backbone[1].running_mean, before.backbone[1].running_mean)
    assert int(model.backbone[1].num_batches_tracked) == 1
