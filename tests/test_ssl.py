"""Self-supervised pre-training: losses, MoCo queue and momentum, SAM/rwSAM, loading, probes, runs."""

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from longtail import ClassCounts, LongtailError
from longtail.checkpoints import load_checkpoint
from longtail.config import DataConfig, ModelConfig, RunConfig, TrainConfig, apply_overrides
from longtail.data.imageset import ImageSet
from longtail.data.registry import Splits
from longtail.models import make_model
from longtail.ssl import (
    SAM,
    MoCo,
    MoCoTask,
    RotationTask,
    SimSiam,
    SimSiamTask,
    SSLConfig,
    TwoViewAugment,
    class_frequency_weights,
    default_config,
    default_ssl,
    frozen_bn_statistics,
    info_nce,
    kde_density,
    kde_weights,
    knn_probabilities,
    linear_probe,
    load_pretrained_backbone,
    pretrain_run,
    rotate,
    rotation_model,
    simsiam_loss,
)
from longtail.ssl.augment import hsv_to_rgb, random_resized_crop, rgb_to_hsv

from conftest import synthetic_set

TINY_SSL = SSLConfig(moco_queue=64, moco_hidden=32, moco_dim=16, moco_bn_splits=2, simsiam_dim=32,
                     simsiam_pred_hidden=8, probe_epochs=10, knn_k=10)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny_config(epochs=2, **train) -> RunConfig:
    return RunConfig(
        recipe="ssl-test",
        data=DataConfig(dataset="synthetic"),
        model=ModelConfig(arch="tiny"),
        train=TrainConfig(**{**dict(epochs=epochs, batch_size=16, lr=0.05, device="cpu", checkpoint_every=1,
                                    crop_padding=1, schedule="cosine", warmup_epochs=0.0), **train}),
    )


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def splits():
    return Splits(synthetic_set([32, 16, 8, 4]), synthetic_set([6, 6, 6, 6], seed=1, name="test"))


def oriented_set(n=32, size=8, seed=0) -> ImageSet:
    """Noise images with a bright top row: their rotation is visible."""
    g = gen(seed)
    x = torch.randint(0, 80, (n, 3, size, size), generator=g)
    x[:, :, 0, :] = 250
    x[:, :, 1, : size // 2] = 200
    return ImageSet(x.to(torch.uint8), torch.zeros(n, dtype=torch.long), ("a",), mean=(0.5,) * 3, std=(0.25,) * 3)


# ---------------------------------------------------------------------------------------------
# losses: naive references and analytic values
# ---------------------------------------------------------------------------------------------
def test_simsiam_loss_against_a_loop_and_analytic_values():
    g = gen(1)
    p1, p2, z1, z2 = (torch.randn(5, 7, generator=g) for _ in range(4))
    w = torch.rand(5, generator=g) + 0.1
    naive = [0.5 * -(p1[i] @ z2[i]) / (p1[i].norm() * z2[i].norm())
             - 0.5 * (p2[i] @ z1[i]) / (p2[i].norm() * z1[i].norm())
             for i in range(5)]
    naive = torch.stack(naive)
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(naive.mean().item(), abs=1e-6)
    assert simsiam_loss(p1, p2, z1, z2, w).item() == pytest.approx(((naive * w).sum() / w.sum()).item(), abs=1e-6)
    assert simsiam_loss(z1, z1, z1, z1).item() == pytest.approx(-1.0, abs=1e-6)  # identical vectors
    e = torch.eye(4)
    assert simsiam_loss(e[:2], e[:2], e[2:], e[2:]).item() == pytest.approx(0.0, abs=1e-7)  # orthogonal
    # stop-gradient: no gradient reaches z
    z = torch.randn(3, 4, requires_grad=True)
    p = torch.randn(3, 4, requires_grad=True)
    simsiam_loss(p, p, z, z).backward()
    assert z.grad is None and p.grad is not None


def test_info_nce_against_a_loop_and_an_analytic_value():
    g = gen(2)
    q = F.normalize(torch.randn(4, 6, generator=g), dim=1)
    k = F.normalize(torch.randn(4, 6, generator=g), dim=1)
    queue = F.normalize(torch.randn(9, 6, generator=g), dim=1)
    t = 0.2
    naive = []
    for i in range(4):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ queue[j]) / t) for j in range(9))
        naive.append(-math.log(pos / (pos + neg)))
    assert info_nce(q, k, queue, t).item() == pytest.approx(sum(naive) / 4, rel=1e-5)
    w = torch.tensor([1.0, 2.0, 0.0, 1.0])
    assert info_nce(q, k, queue, t, w).item() == pytest.approx((naive[0] + 2 * naive[1] + naive[3]) / 4, rel=1e-5)
    # q = k, negatives orthogonal to every query: L = log(1 + K exp(-1/T))
    e = torch.eye(6)
    big_k = 4
    assert info_nce(e[:2], e[:2], e[2:2 + big_k], t).item() == pytest.approx(math.log(1 + big_k * math.exp(-1 / t)),
                                                                            rel=1e-5)


def test_rotations_are_balanced_and_correct():
    x = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).view(8, 2, 3, 3)
    images, k, rows = rotate(x, gen(0), "balanced")
    assert torch.bincount(k, minlength=4).tolist() == [2, 2, 2, 2]
    for i in range(8):
        assert torch.equal(images[i], torch.rot90(x[rows[i]], int(k[i]), dims=(1, 2)))
    images, k, rows = rotate(x, None, "all")
    assert images.shape == (32, 2, 3, 3) and torch.bincount(k).tolist() == [8, 8, 8, 8]
    assert torch.equal(images[8 * 3 + 5], torch.rot90(x[5], 3, dims=(1, 2)))
    with pytest.raises(LongtailError, match="square"):
        rotate(torch.zeros(2, 1, 3, 4), gen(0))


# ---------------------------------------------------------------------------------------------
# the loss falls on a fixed batch
# ---------------------------------------------------------------------------------------------
def _steps(model, task, batch, n, lr):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    model.train()
    losses = []
    for _ in range(n):
        opt.zero_grad()
        loss = task.loss(model, batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_rotation_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    data = oriented_set()
    model = rotation_model(make_model("tiny", 1).backbone)
    task = RotationTask(data, batch_size=32, mode="all")
    task.on_epoch_start(0)
    batch = next(task.batches(0, gen(0)))
    assert batch.images.shape[0] == 128
    losses = _steps(model, task, batch, 25, lr=0.1)
    assert losses[-1] < 0.5 * losses[0]
    assert task.epoch_metrics()["rotation_train_acc"] > 25


def test_simsiam_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    data = synthetic_set([16, 16])
    model = SimSiam(make_model("tiny", 1).backbone, dim=32, pred_hidden=8)
    task = SimSiamTask(data, batch_size=32, augment=TwoViewAugment())
    task.on_epoch_start(0)
    batch = next(task.batches(0, gen(0)))
    losses = _steps(model, task, batch, 25, lr=0.1)
    assert losses[-1] < losses[0] - 0.2 and losses[-1] >= -1.0


# ---------------------------------------------------------------------------------------------
# MoCo: queue, momentum, once per step
# ---------------------------------------------------------------------------------------------
def test_moco_queue_wraps_and_momentum_update_is_exact():
    torch.manual_seed(0)
    model = MoCo(make_model("tiny", 1).backbone, dim=4, hidden=8, queue_size=10, momentum=0.9)
    keys = F.normalize(torch.randn(6, 4), dim=1)
    model.enqueue(keys)
    assert int(model.queue_ptr) == 6 and torch.equal(model.queue[:6], keys)
    more = F.normalize(torch.randn(6, 4), dim=1)
    model.enqueue(more)
    assert int(model.queue_ptr) == 2  # (6 + 6) mod 10
    assert torch.equal(model.queue[6:], more[:4]) and torch.equal(model.queue[:2], more[4:])

    with torch.no_grad():
        for p in list(model.backbone.parameters()) + list(model.projector.parameters()):
            p.add_(torch.randn_like(p))
    old = [p.clone() for p in model.momentum_backbone.parameters()]
    new = list(model.backbone.parameters())
    model.momentum_update()
    for o, n, k in zip(old, new, model.momentum_backbone.parameters()):
        assert torch.allclose(k, 0.9 * o + 0.1 * n, atol=1e-6)
    assert all(not p.requires_grad for p in model.momentum_backbone.parameters())


@pytest.mark.parametrize("use_sam", [False, True])
def test_moco_enqueues_once_per_optimizer_step(use_sam):
    torch.manual_seed(0)
    data = synthetic_set([12, 12])
    model = MoCo(make_model("tiny", 1).backbone, dim=4, hidden=8, queue_size=50, momentum=0.5, bn_splits=2)
    task = MoCoTask(data, batch_size=8, augment=TwoViewAugment())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    calls = {"n": 0, "updates": 0}
    if use_sam:
        opt = SAM(opt, rho=0.05)
        opt.add_phase_hook(task.set_phase)
    update = model.momentum_update

    def counting_update():
        calls["updates"] += 1
        update()

    model.momentum_update = counting_update  # type: ignore[method-assign]
    task.on_epoch_start(0)
    for step, batch in enumerate(task.batches(0, gen(0))):
        def closure(batch=batch):
            calls["n"] += 1
            opt.zero_grad()
            loss = task.loss(model, batch)
            loss.backward()
            return loss

        opt.step(closure)
        # this step's keys wait for the next step; the previous steps' are in the queue
        assert int(model.queue_ptr) == 8 * step
    task.end_epoch()
    assert int(model.queue_ptr) == 24  # 3 steps x 8 keys, each enqueued exactly once
    assert calls["updates"] == 3
    assert calls["n"] == (6 if use_sam else 3)


# ---------------------------------------------------------------------------------------------
# MoCo: shuffled BatchNorm on one device (MoCo's CIFAR-10 demo: SplitBatchNorm + key shuffle)
# ---------------------------------------------------------------------------------------------
def _demo_split_bn(bn, x, splits):
    """A transcription of the demo's SplitBatchNorm.forward in training mode (moco_cifar10_demo.ipynb):
    ``splits`` copies of the running statistics, one batch_norm over the (N/s, s*C, H, W) view, the
    copies averaged back. Returns the output and the new running mean and variance."""
    n, c = x.shape[:2]
    mean, var = bn.running_mean.clone().repeat(splits), bn.running_var.clone().repeat(splits)
    y = F.batch_norm(x.reshape(-1, c * splits, *x.shape[2:]), mean, var, bn.weight.repeat(splits),
                     bn.bias.repeat(splits), True, bn.momentum, bn.eps).reshape(x.shape)
    return y, mean.view(splits, c).mean(0), var.view(splits, c).mean(0)


def _bn_with_params(cls, c, seed=0):
    bn = cls(c)
    g = gen(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn


@pytest.mark.parametrize("n", [12, 10])  # 10: sub-batches of 3, 3, 2, 2 rows
def test_split_batchnorm_normalises_each_sub_batch_with_its_own_rows(n):
    from longtail.ssl.models import SplitBatchNorm, split_batchnorm

    x = torch.randn(n, 5, 3, 3, generator=gen(1)) * 3 + 1
    plain = _bn_with_params(torch.nn.BatchNorm2d, 5)
    split = split_batchnorm(_bn_with_params(torch.nn.BatchNorm2d, 5), 4)
    assert isinstance(split, SplitBatchNorm) and isinstance(split, torch.nn.BatchNorm2d)
    assert split.state_dict().keys() == plain.state_dict().keys()
    split.train()
    y = split(x)
    # sub-batch k is the rows k, k + 4, ... (the demo's view): each normalised with its own statistics
    means, variances = [], []
    for k in range(4):
        rows = x[k::4]
        ref = F.batch_norm(rows, None, None, plain.weight, plain.bias, True, 0.1, plain.eps)
        torch.testing.assert_close(y[k::4], ref, atol=1e-5, rtol=1e-5)
        means.append(rows.mean(dim=(0, 2, 3)))
        variances.append(rows.transpose(0, 1).reshape(5, -1).var(dim=1, unbiased=True))
    # not the statistics of the whole batch
    assert not torch.allclose(y, F.batch_norm(x, None, None, plain.weight, plain.bias, True, 0.1, plain.eps),
                              atol=1e-3)
    # running statistics: one step towards the mean over the sub-batches of mean and unbiased variance
    torch.testing.assert_close(split.running_mean, 0.9 * plain.running_mean + 0.1 * torch.stack(means).mean(0))
    torch.testing.assert_close(split.running_var, 0.9 * plain.running_var + 0.1 * torch.stack(variances).mean(0))
    assert int(split.num_batches_tracked) == 1
    if n % 4 == 0:  # the source's own layer on the same input: same output and running statistics
        y_demo, mean_demo, var_demo = _demo_split_bn(plain, x, 4)
        torch.testing.assert_close(y, y_demo, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(split.running_mean, mean_demo)
        torch.testing.assert_close(split.running_var, var_demo)
    # gradients reach the shared weight and bias
    y.square().sum().backward()
    assert split.weight.grad is not None and split.weight.grad.abs().sum() > 0
    # eval mode: plain BatchNorm with the running statistics
    split.eval()
    with torch.no_grad():
        plain.running_mean.copy_(split.running_mean)
        plain.running_var.copy_(split.running_var)
    plain.eval()
    torch.testing.assert_close(split(x), plain(x))


def test_split_batchnorm_covers_bn_classes_and_keeps_frozen_statistics():
    from longtail.models.fastnet import FrozenScaleBatchNorm
    from longtail.ssl.models import SplitBatchNorm, split_batchnorm

    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6))
    split_batchnorm(net, 2)
    assert isinstance(net[1], SplitBatchNorm) and isinstance(net[1], torch.nn.BatchNorm1d)
    x = torch.randn(8, 4, generator=gen(2))
    h = net[0](x)
    y = net(x)
    for k in range(2):
        torch.testing.assert_close(y[k::2], F.batch_norm(h[k::2], None, None, net[1].weight, net[1].bias, True))
    # a BatchNorm subclass gets its own split twin; its frozen scale stays frozen
    frozen = split_batchnorm(FrozenScaleBatchNorm(3), 2)
    assert isinstance(frozen, FrozenScaleBatchNorm) and isinstance(frozen, SplitBatchNorm)
    assert not frozen.weight.requires_grad
    # momentum 0 (SAM's frozen statistics): the running statistics are left bit for bit
    bn = split_batchnorm(_bn_with_params(torch.nn.BatchNorm2d, 3), 3)
    before = bn.running_mean.clone(), bn.running_var.clone()
    with frozen_bn_statistics(bn):
        bn(torch.randn(9, 3, 2, 2, generator=gen(3)))
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == 0


def _split_moco(bn_splits=4, seed=0):
    torch.manual_seed(seed)
    return MoCo(make_model("tiny", 1).backbone, dim=8, hidden=16, queue_size=32, bn_splits=bn_splits)


def test_moco_splits_both_encoders_and_the_key_shuffle_is_undone():
    from longtail.ssl.models import SplitBatchNorm

    model = _split_moco()
    for encoder in (model.backbone, model.momentum_backbone):
        bns = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and all(isinstance(m, SplitBatchNorm) and m.num_splits == 4 for m in bns)
    assert model.shuffles_keys and not _split_moco(bn_splits=1).shuffles_keys
    # same checkpoint keys as an unsplit model
    assert model.state_dict().keys() == _split_moco(bn_splits=1).state_dict().keys()

    x = torch.randn(16, 3, 8, 8, generator=gen(4))
    seen = []
    hook = model.momentum_backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    model.eval()  # running statistics: no row depends on the others, so any order gives the same keys
    plain = model.key(x)
    shuffled = model.key(x, gen(5))
    hook.remove()
    torch.testing.assert_close(shuffled, plain, atol=1e-6, rtol=1e-5)
    # the encoder saw a permutation of the rows, not the batch order
    assert torch.equal(seen[0], x) and not torch.equal(seen[1], x)
    perm = torch.randperm(16, generator=gen(5))
    assert torch.equal(seen[1], x[perm])


def test_moco_key_shuffle_changes_split_bn_keys_and_is_seeded():
    import copy

    model = _split_moco()
    model.train()
    x = torch.randn(16, 3, 8, 8, generator=gen(6))
    a, b, c, d = (copy.deepcopy(model) for _ in range(4))
    unshuffled = a.key(x)
    first, again, other = b.key(x, gen(7)), c.key(x, gen(7)), d.key(x, gen(8))
    assert not torch.allclose(first, unshuffled, atol=1e-4)  # other rows share each key's BatchNorm
    assert torch.equal(first, again)  # a function of the seed
    assert not torch.allclose(first, other, atol=1e-4)
    # queries are not shuffled: the same as the keys of the same weights without a shuffle
    model2 = copy.deepcopy(model)
    torch.testing.assert_close(model2.query(x).detach(), unshuffled, atol=1e-6, rtol=1e-5)
    # plain BatchNorm (bn_splits 1): a shuffle changes nothing
    one = _split_moco(bn_splits=1)
    one.train()
    torch.testing.assert_close(copy.deepcopy(one).key(x, gen(7)), copy.deepcopy(one).key(x), atol=1e-5, rtol=1e-5)


def _moco_epoch(bn_splits, seed=0):
    torch.manual_seed(0)
    data = synthetic_set([12, 12])
    model = MoCo(make_model("tiny", 1).backbone, dim=4, hidden=8, queue_size=50, momentum=0.5, bn_splits=bn_splits)
    task = MoCoTask(data, batch_size=8, augment=TwoViewAugment())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    shuffled = []
    key = model.key
    model.key = lambda x, generator=None: (shuffled.append(generator is not None), key(x, generator))[1]  # type: ignore[method-assign]
    task.on_epoch_start(0)
    losses = []
    for batch in task.batches(0, gen(seed)):
        opt.zero_grad()
        loss = task.loss(model, batch)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    task.end_epoch()
    return model, losses, shuffled


def test_one_process_moco_step_shuffles_keys_and_is_deterministic():
    a, losses_a, shuffled = _moco_epoch(4)
    assert shuffled == [True] * 3 and all(math.isfinite(v) for v in losses_a)
    b, losses_b, _ = _moco_epoch(4)
    assert losses_a == losses_b
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    c, losses_c, _ = _moco_epoch(4, seed=1)  # another epoch seed: other augmentations and shuffles
    assert losses_c != losses_a
    _, _, plain = _moco_epoch(1)  # plain BatchNorm: nothing to shuffle
    assert plain == [False] * 3
    # set_bn_groups (used under torchrun) changes every split layer of both encoders
    from longtail.ssl.models import SplitBatchNorm

    a.set_bn_groups(2)
    assert {m.num_splits for m in a.modules() if isinstance(m, SplitBatchNorm)} == {2} and a.bn_splits == 4


def test_moco_bn_split_defaults():
    assert default_ssl("moco").moco_bn_splits == 8  # MoCo's CIFAR-10 demo: --bn-splits 8 for batch 512
    assert default_ssl("moco", "imagenet-lt").moco_bn_splits == 4  # batch 128 in groups of 32


# ---------------------------------------------------------------------------------------------
# SAM and rwSAM
# ---------------------------------------------------------------------------------------------
def _regression(seed=0):
    g = gen(seed)
    x, y = torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)
    model = torch.nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 3, generator=g))
        model.bias.fill_(0.3)
    return model, x, y


def test_sam_evaluates_twice_restores_weights_and_steps_with_the_second_gradient():
    model, x, y = _regression()
    w0 = [p.detach().clone() for p in model.parameters()]
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    sam = SAM(base, rho=0.5)
    seen, phases = [], []
    sam.add_phase_hook(phases.append)

    def closure():
        seen.append([p.detach().clone() for p in model.parameters()])
        sam.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    at_step = {}
    real_step = base.step

    def spy_step(*a, **kw):
        at_step["params"] = [p.detach().clone() for p in model.parameters()]
        at_step["grads"] = [p.grad.clone() for p in model.parameters()]
        return real_step(*a, **kw)

    base.step = spy_step  # type: ignore[method-assign]
    loss = sam.step(closure)
    assert len(seen) == 2 and phases == ["ascent", "descent", "plain"]
    assert all(torch.equal(a, b) for a, b in zip(seen[0], w0))
    # the second evaluation is at w + rho g / ||g||
    w = [p.detach().clone().requires_grad_(True) for p in w0]
    ref_loss = F.mse_loss(x @ w[0].t() + w[1], y)
    g = torch.autograd.grad(ref_loss, w)
    norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
    for s, wi, gi in zip(seen[1], w0, g):
        assert torch.allclose(s, wi + 0.5 * gi / norm, atol=1e-6)
    assert loss.item() == pytest.approx(ref_loss.item())
    # parameters restored exactly before the descent; the base step uses the perturbed gradient
    assert all(torch.equal(a, b) for a, b in zip(at_step["params"], w0))
    wp = [s.clone().requires_grad_(True) for s in seen[1]]
    g2 = torch.autograd.grad(F.mse_loss(x @ wp[0].t() + wp[1], y), wp)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(at_step["grads"], g2))
    assert all(torch.allclose(p, wi - 0.1 * gi, atol=1e-6) for p, wi, gi in zip(model.parameters(), w0, g2))


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_with_rho_zero_is_the_base_optimizer(adaptive):
    a, x, y = _regression(3)
    b, _, _ = _regression(3)
    opt_a = SAM(torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3), rho=0.0, adaptive=adaptive)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        for model, opt in ((a, opt_a), (b, opt_b)):
            def closure(model=model, opt=opt):
                opt.zero_grad()
                loss = F.mse_loss(model(x), y)
                loss.backward()
                return loss
            opt.step(closure)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert opt_a.state_dict()["state"].keys() == opt_b.state_dict()["state"].keys()
    # the loop sets the rate on optimizer.param_groups: it must reach the base, also after loading a state
    opt_a.load_state_dict(opt_b.state_dict())
    opt_a.param_groups[0]["lr"] = 0.01
    assert opt_a.base_optimizer.param_groups[0]["lr"] == 0.01


def test_adaptive_sam_perturbation_scales_with_the_weights():
    model, x, y = _regression(4)
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.2, adaptive=True)
    F.mse_loss(model(x), y).backward()
    params = list(model.parameters())
    tg = [p.abs() * p.grad for p in params]
    norm = torch.sqrt(sum((t ** 2).sum() for t in tg))
    for e, p in zip(sam.perturbation(), params):
        assert torch.allclose(e, 0.2 * p * p * p.grad / norm, atol=1e-7)


def test_sam_needs_a_closure_and_bn_statistics_stay_frozen():
    model, _, _ = _regression()
    with pytest.raises(LongtailError, match="closure"):
        SAM(torch.optim.SGD(model.parameters(), lr=0.1)).step()
    bn = torch.nn.BatchNorm1d(3)
    bn(torch.randn(8, 3))
    mean, count = bn.running_mean.clone(), int(bn.num_batches_tracked)
    with frozen_bn_statistics(bn):
        bn(torch.randn(8, 3) + 5)
    assert torch.equal(bn.running_mean, mean) and int(bn.num_batches_tracked) == count and bn.momentum == 0.1


def test_class_frequency_weights_favour_rare_classes():
    counts = ClassCounts((100, 10, 1))
    labels = torch.tensor([0, 0, 1, 2])
    w = class_frequency_weights(labels, counts)
    assert w.mean().item() == pytest.approx(1.0)
    assert w[0] == w[1] < w[2] < w[3]
    assert (w[3] / w[2]).item() == pytest.approx(10.0, rel=1e-5)  # n^-1


def test_kde_density_and_weights_favour_isolated_points():
    g = gen(5)
    cluster = torch.tensor([1.0, 0.0, 0.0]) + 0.05 * torch.randn(30, 3, generator=g)
    isolated = torch.tensor([[0.0, 0.0, 1.0]])
    f = torch.cat([cluster, isolated])
    h = 0.3
    p = kde_density(f, bandwidth=h, chunk=7)
    fn = F.normalize(f, dim=1)
    naive = torch.tensor([sum(math.exp(-float((fn[i] - fn[j]).pow(2).sum()) / (2 * h * h)) for j in range(31) if j != i)
                          / 30 for i in range(31)], dtype=torch.float64)
    assert torch.allclose(p, naive, rtol=1e-4)
    w = kde_weights(f, bandwidth=h, max_weight=None)
    assert w.argmax().item() == 30 and w.mean().item() == pytest.approx(1.0, rel=1e-5)
    clipped = kde_weights(f, max_weight=5.0)  # median bandwidth; clipped at 5 x the median weight
    assert clipped.argmax().item() == 30 and (clipped.max() / clipped.median()).item() == pytest.approx(5.0, rel=1e-4)


def test_rwsam_weights_only_the_ascent_pass():
    torch.manual_seed(0)
    data = synthetic_set([8, 8])

    class Fixed:
        def weights_at(self, epoch):
            return torch.arange(16, dtype=torch.float32)

    task = SimSiamTask(data, batch_size=16, augment=TwoViewAugment(), example_weights=Fixed())
    task.on_epoch_start(0)
    batch = next(task.batches(0, gen(0)))
    model = SimSiam(make_model("tiny", 1).backbone, dim=16, pred_hidden=4)
    model.eval()  # same outputs for every pass
    plain = task.loss(model, batch)
    task.set_phase("ascent")
    weighted = task.loss(model, batch)
    task.set_phase("descent")
    descent = task.loss(model, batch)
    _, z1, p1 = model(batch.view1)
    _, z2, p2 = model(batch.view2)
    assert weighted.item() == pytest.approx(simsiam_loss(p1, p2, z1, z2, batch.index.float()).item(), abs=1e-6)
    assert descent.item() == pytest.approx(plain.item(), abs=1e-6) and weighted.item() != pytest.approx(plain.item())


# ---------------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------------
def test_two_view_augmentation_is_seeded_batched_and_neutral_when_off():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    aug = TwoViewAugment(blur_prob=0.5)
    a = aug(x, gen(0), (0.5,) * 3, (0.25,) * 3)
    b = aug(x, gen(0), (0.5,) * 3, (0.25,) * 3)
    assert a.shape == (6, 3, 8, 8) and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, aug(x, gen(1), (0.5,) * 3, (0.25,) * 3))
    off = TwoViewAugment(min_scale=1.0, jitter_prob=0.0, grayscale_prob=0.0, flip=False)
    y = off(x, gen(0), (0.0,) * 3, (1.0,) * 3)
    # a full crop with aspect ratio ~1 is (almost) the identity
    assert (y - x.float() / 255).abs().mean() < 0.05
    xf = x.float() / 255
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(xf)), xf, atol=1e-5)
    flipped = random_resized_crop(xf[:1].expand(64, -1, -1, -1), gen(0), min_scale=1.0)
    assert flipped.shape == (64, 3, 8, 8)


# ---------------------------------------------------------------------------------------------
# representation evaluation
# ---------------------------------------------------------------------------------------------
def test_knn_and_linear_probe_on_separable_features():
    g = gen(6)
    centres = torch.eye(4) * 5
    train_labels = torch.tensor([0] * 20 + [1] * 10 + [2] * 5 + [3] * 2)
    test_labels = torch.arange(4).repeat(5)
    train = centres[train_labels] + 0.1 * torch.randn(len(train_labels), 4, generator=g)
    test = centres[test_labels] + 0.1 * torch.randn(len(test_labels), 4, generator=g)
    probs = knn_probabilities(train, train_labels, test, 4, k=20, temperature=0.1)
    assert torch.allclose(probs.sum(dim=1), torch.ones(20))
    assert (probs.argmax(dim=1) == test_labels).all()  # 100 %
    logits = linear_probe(train, train_labels, test, 4, balanced=True, epochs=30)
    assert (logits.argmax(dim=1) == test_labels).all()


# ---------------------------------------------------------------------------------------------
# loading a pre-trained backbone
# ---------------------------------------------------------------------------------------------
def test_pretrain_run_writes_a_run_folder_and_initialises_a_classifier(tmp_path, splits, capsys):
    out = tmp_path / "ssp"
    result = pretrain_run("simsiam-rwsam", tiny_config(epochs=2), out, ssl=TINY_SSL, splits=splits, progress=False)
    for f in ("config.json", "metrics.jsonl", "report.json", "report.md", "checkpoints/last.pt"):
        assert (out / f).is_file(), f
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and "z_std" in rows[0]
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "simsiam-rwsam" and report["train_counts"] == [32, 16, 8, 4]
    for key in ("knn", "linear_probe"):
        assert len(report[key]["per_class"]) == 4 and "few" in report[key]
    assert result["top1"] == report["top1"]
    page = (out / "report.md").read_text()
    assert "k-NN" in page
    # issue 16: the class-balanced probe's detail does not list the plain probe's or the k-NN's top-1 as its own
    detail = page.split("in detail", 1)[1]
    assert "linear_probe_top1" not in detail and "knn_top1" not in detail
    assert report["linear_probe_top1"] == report["linear_probe"]["top1"]  # still in report.json
    assert json.loads((out / "config.json").read_text())["pretrain"]["method"] == "simsiam-rwsam"

    clf = make_model("tiny", 4)
    x = torch.randn(3, 3, 8, 8)
    clf.eval()
    before = clf.features(x)
    loaded, total = load_pretrained_backbone(clf, out)
    assert loaded == total == len(clf.backbone.state_dict())
    assert f"loaded {total}/{total} backbone tensors" in capsys.readouterr().out
    assert not torch.allclose(before, clf.features(x))
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    assert torch.equal(clf.backbone.state_dict()["net.0.weight"], ckpt["backbone.net.0.weight"])


def test_module_prefixed_state_dict_loads_and_mismatches_fail(tmp_path):
    torch.manual_seed(1)
    source = SimSiam(make_model("tiny", 1).backbone, dim=8, pred_hidden=4)
    wrapped = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "ddp.pt")
    clf = make_model("tiny", 10)
    assert load_pretrained_backbone(clf, tmp_path / "ddp.pt", log=None) == (len(clf.backbone.state_dict()),) * 2
    assert all(torch.equal(v, source.backbone.state_dict()[k]) for k, v in clf.backbone.state_dict().items())
    # a bare backbone state dict (e.g. saved by hand) loads too
    torch.save(source.backbone.state_dict(), tmp_path / "bare.pt")
    assert load_pretrained_backbone(make_model("tiny", 3), tmp_path / "bare.pt", log=None)[0] > 0

    with pytest.raises(LongtailError, match=r"first missing is backbone\.conv1\.weight"):
        load_pretrained_backbone(make_model("resnet8", 10), tmp_path / "ddp.pt", log=None)  # another architecture
    partial = {k: v for k, v in wrapped.items() if "net.4" not in k}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(LongtailError, match=r"only \d+ of the \d+ backbone tensors.*net\.4"):
        load_pretrained_backbone(make_model("tiny", 10), tmp_path / "partial.pt", log=None)
    torch.save({"projector.0.weight": torch.zeros(2, 2)}, tmp_path / "heads.pt")
    with pytest.raises(LongtailError, match="no backbone tensor"):
        load_pretrained_backbone(make_model("tiny", 10), tmp_path / "heads.pt", log=None)
    with pytest.raises(LongtailError, match="does not fit"):
        load_pretrained_backbone(make_model("tiny", 10, in_channels=1), tmp_path / "ddp.pt", log=None)
    with pytest.raises(LongtailError):
        load_pretrained_backbone(make_model("tiny", 10), tmp_path / "missing", log=None)


@pytest.mark.parametrize("method", ["moco", "simsiam-rwsam"])
def test_pretraining_resumes_exactly(tmp_path, splits, method):
    # MoCo: the queue and the last step's keys; rwSAM: KDE weights of epoch 0 reused in epoch 1
    ssl = replace(TINY_SSL, rw_every=2)
    cfg = tiny_config(epochs=2)
    full = pretrain_run(method, cfg, tmp_path / "full", ssl=ssl, splits=splits, progress=False)
    assert pretrain_run(method, cfg, tmp_path / "cut", ssl=ssl, splits=splits, progress=False, stop_after=1) == {}
    resumed = pretrain_run(method, cfg, tmp_path / "cut", ssl=ssl, splits=splits, progress=False, log=lambda s: None)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    if method == "moco":
        assert int(a["queue_ptr"]) == (2 * (len(splits.train) // 16) * 16) % ssl.moco_queue
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["knn"]["per_class"] == full["knn"]["per_class"]
    with pytest.raises(LongtailError, match="holds a run with other settings: the method or its settings"):
        pretrain_run("rotation", cfg, tmp_path / "cut", ssl=ssl, splits=splits, progress=False)


def test_ssl_overrides():
    ssl = apply_overrides(RunConfig(), {"ssl.moco_queue": "1024", "ssl.kde_bandwidth": "none",
                                        "ssl.sam_adaptive": "false", "ssl.rw_weights": "class"}).ssl
    assert (ssl.moco_queue, ssl.kde_bandwidth, ssl.sam_adaptive, ssl.rw_weights) == (1024, None, False, "class")
    with pytest.raises(LongtailError, match="unknown setting"):
        apply_overrides(RunConfig(), {"ssl.queue": "1"})
    with pytest.raises(LongtailError, match="rw_weights"):
        apply_overrides(RunConfig(), {"ssl.rw_weights": "labels"})
    assert default_ssl("moco", "imagenet-lt").moco_queue == 65536 and default_ssl("moco").moco_queue == 4096
    assert default_config("rotation").train == TrainConfig()  # the supervised reference recipe
    assert default_config("simsiam").train.schedule == "cosine"


def test_rotation_pretraining_reports_its_pretext_accuracy(tmp_path, splits):
    out = tmp_path / "rot"
    result = pretrain_run("rotation", tiny_config(epochs=1), out, ssl=TINY_SSL, splits=splits, progress=False)
    assert 0.0 <= result["rotation_test_accuracy"] <= 100.0
    assert "Rotation prediction accuracy (the 4-way pretext task" in (out / "report.md").read_text()
    assert "rotation_train_acc" in json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    with pytest.raises(LongtailError, match="unknown pre-training method"):
        pretrain_run("rotations", tiny_config(), tmp_path / "x", splits=splits)
    with pytest.raises(LongtailError, match="reads no labels"):
        pretrain_run("simsiam", tiny_config(sampler="class-balanced"), tmp_path / "y", ssl=TINY_SSL, splits=splits,
                     progress=False)
