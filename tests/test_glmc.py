"""GLMC (longtail.glmc): the loss and the cumulative weight against a transcription of the released code
(ynu-yangpeng/GLMC 2c0261c, ``Trainer.train``), the mixed views, the model, training, resuming and the recipes."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail import LongtailError
from longtail.checkpoints import load_checkpoint
from longtail.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, apply_overrides
from longtail.counts import ClassCounts
from longtail.data.augment import Augment
from longtail.data.registry import Splits
from longtail.decouple import decouple_run
from longtail.driver import Context
from longtail.experiment import SupervisedStage, build_task, evaluate_checkpoint, train_one
from longtail.glmc import (
    GLMCTask,
    check_glmc,
    cumulative_alpha,
    glmc_class_weights,
    glmc_loss,
    partner_sampler,
    soft_label_ce,
)
from longtail.graphs import EagerStep
from longtail.loop import epoch_generator, fit
from longtail.models import GLMCClassifier, build_model, make_model
from longtail.optim import make_optimizer
from longtail.recipes import RECIPES
from longtail.runs import RunDir
from longtail.stacked import stack_unsupported_reason

from conftest import synthetic_set

CPU = torch.device("cpu")


def tiny_config(epochs: int = 3, **train) -> RunConfig:
    return RunConfig(recipe="tiny-glmc", data=DataConfig(dataset="synthetic"), model=ModelConfig(arch="tiny"),
                     train=TrainConfig(**{**dict(epochs=epochs, batch_size=16, lr=0.05, device="cpu",
                                                 checkpoint_every=1, crop_padding=1, task="glmc"), **train}))


@pytest.fixture
def splits():
    return Splits(synthetic_set([48, 24, 12, 6]), synthetic_set([10, 10, 10, 10], seed=1, name="test"))


# --- their code, transcribed (GLMC-2023/Trainer.py, main.py) -------------------------------------------------

def their_per_cls_weights(cls_num_list, label_weighting):  # Trainer.update_weight
    per_cls_weights = 1.0 / (np.array(cls_num_list) ** label_weighting)
    per_cls_weights = per_cls_weights / np.sum(per_cls_weights) * len(cls_num_list)
    return torch.FloatTensor(per_cls_weights)


def their_loss(out, target_org, target_invs, lam, per_cls_weights, alpha, contrast_weight, num_classes):
    """Trainer.train's loss, given the model's outputs on the mixup (1) and CutMix (2) views."""
    output_1, output_cb_1, z1, p1, output_2, output_cb_2, z2, p2 = out

    def simsiam(p, z):  # SimSiamLoss, version='simplified'
        z = z.detach()
        return - F.cosine_similarity(p, z, dim=-1).mean()

    one_hot_org = torch.zeros(target_org.size(0), num_classes).scatter_(1, target_org.view(-1, 1), 1)
    one_hot_org_w = per_cls_weights * one_hot_org
    one_hot_invs = torch.zeros(target_invs.size(0), num_classes).scatter_(1, target_invs.view(-1, 1), 1)
    one_hot_invs_w = per_cls_weights * one_hot_invs
    # GLMC_mixed: one lam for both views
    mixup_y = lam * one_hot_org + (1 - lam) * one_hot_invs
    mixup_y_w = lam * one_hot_org_w + (1 - lam) * one_hot_invs_w
    cutmix_y = lam * one_hot_org + (1 - lam) * one_hot_invs
    cutmix_y_w = lam * one_hot_org_w + (1 - lam) * one_hot_invs_w
    contrastive_loss = simsiam(p1, z2) + simsiam(p2, z1)
    loss_mix = -torch.mean(torch.sum(F.log_softmax(output_1, dim=1) * mixup_y, dim=1))
    loss_cut = -torch.mean(torch.sum(F.log_softmax(output_2, dim=1) * cutmix_y, dim=1))
    loss_mix_w = -torch.mean(torch.sum(F.log_softmax(output_cb_1, dim=1) * mixup_y_w, dim=1))
    loss_cut_w = -torch.mean(torch.sum(F.log_softmax(output_cb_2, dim=1) * cutmix_y_w, dim=1))
    balance_loss = loss_mix + loss_cut
    rebalance_loss = loss_mix_w + loss_cut_w
    return alpha * balance_loss + (1 - alpha) * rebalance_loss + contrast_weight * contrastive_loss


# --- the loss and the schedule -------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha,contrast_weight,label_weighting", [(1.0, 4.0, 1.2), (0.4375, 1.0, 1.0),
                                                                   (0.0, 0.0, 0.0)])
def test_the_loss_and_its_gradients_equal_their_trainers(alpha, contrast_weight, label_weighting):
    g = torch.Generator().manual_seed(0)
    b, c, p_dim = 12, 5, 7
    counts = [50, 20, 9, 4, 1]
    out = [torch.randn(b, d, generator=g, requires_grad=True) for d in (c, c, p_dim, p_dim) * 2]
    y, y_b = torch.randint(c, (b,), generator=g), torch.randint(c, (b,), generator=g)
    lam = 0.3141
    theirs = their_loss(out, y, y_b, lam, their_per_cls_weights(counts, label_weighting), alpha, contrast_weight, c)
    weight = glmc_class_weights(ClassCounts(tuple(counts)), label_weighting)
    mine = glmc_loss(tuple(out[:4]), tuple(out[4:]), y, y_b, torch.full((b,), lam), class_weight=weight,
                     alpha=alpha, contrast_weight=contrast_weight)
    torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6)
    g_mine = torch.autograd.grad(mine, out, allow_unused=True)
    g_theirs = torch.autograd.grad(theirs, out, allow_unused=True)
    for a, t in zip(g_mine, g_theirs):
        if t is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, t, rtol=1e-5, atol=1e-7)


def test_soft_label_ce_is_mixed_cross_entropy_and_a_batch_mean():
    g = torch.Generator().manual_seed(1)
    logits, a, b = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([1, 1, 0, 2, 2, 0])
    lam = torch.tensor(0.7)
    expected = 0.7 * F.cross_entropy(logits, a) + 0.3 * F.cross_entropy(logits, b)
    torch.testing.assert_close(soft_label_ce(logits, a, b, lam), expected)
    w = torch.tensor([2.0, 0.5, 0.5])  # weighted: divided by B, not by the weights (their loss)
    per_row = -(0.7 * w[a] * F.log_softmax(logits, 1).gather(1, a[:, None])[:, 0]
                + 0.3 * w[b] * F.log_softmax(logits, 1).gather(1, b[:, None])[:, 0])
    torch.testing.assert_close(soft_label_ce(logits, a, b, lam, w), per_row.mean())


def test_the_cumulative_weight_is_their_formula():
    epochs = 200
    for epoch in range(epochs):  # Trainer.train: alpha = 1 - (epoch / self.epochs) ** 2
        assert cumulative_alpha(epoch, epochs) == 1 - (epoch / epochs) ** 2
    assert cumulative_alpha(0, epochs) == 1.0 and cumulative_alpha(100, epochs) == 0.75
    task = GLMCTask(synthetic_set([8, 4]), ClassCounts((8, 4)), epochs=10, batch_size=4)
    task.on_epoch_start(5)
    assert task.alpha == 0.75


def test_class_weights_and_partner_draws_are_theirs():
    counts = [100, 30, 7, 2]
    for k in (0.0, 1.0, 1.2):
        torch.testing.assert_close(glmc_class_weights(ClassCounts(tuple(counts)), k), their_per_cls_weights(counts, k))
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    for q in (0.0, 0.2, 1.0):
        # main.py: each image drawn with weight cls_weight[y] ∝ n_y^-q, so class c with probability ∝ n_c^(1-q)
        cls_weight = 1.0 / (np.array(counts) ** q)
        per_image = cls_weight[labels.numpy()]
        theirs = np.array([per_image[labels.numpy() == c].sum() for c in range(4)]) / per_image.sum()
        sampler = partner_sampler(labels, 4, ClassCounts(tuple(counts)), q)
        np.testing.assert_allclose(sampler.class_probs.numpy(), theirs, rtol=1e-12)
        assert sampler.epoch_indices(torch.Generator().manual_seed(0)).shape == (len(labels),)


def test_the_views_are_mixup_and_cutmix_with_the_partners():
    train = synthetic_set([6, 6], size=8)
    task = GLMCTask(train, ClassCounts((6, 6)), epochs=2, batch_size=4, augment=None)
    g = torch.Generator().manual_seed(3)
    x1, x2, p1, p2 = (torch.randn(4, 3, 8, 8, generator=g) for _ in range(4))
    y, y_b = torch.tensor([0, 1, 0, 1]), torch.tensor([1, 1, 0, 0])
    batch = task._mix(x1, x2, p1, p2, y, y_b, torch.arange(4), torch.Generator().manual_seed(5))
    lam = batch.lam[0].item()
    assert batch.lam.shape == (4,) and (batch.lam == batch.lam[0]).all() and 0 < lam < 1
    torch.testing.assert_close(batch.images, lam * x1 + (1 - lam) * p1)
    inside = (batch.cut == p2).all(dim=(0, 1))  # (H, W): where the local view took the partners' pixels
    assert (batch.cut[:, :, ~inside] == x2[:, :, ~inside]).all()
    rows, cols = inside.any(1).nonzero()[:, 0], inside.any(0).nonzero()[:, 0]
    if inside.any():  # one rectangle
        assert inside[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    assert batch.labels.tolist() == y.tolist() and batch.labels_b.tolist() == y_b.tolist()


def test_an_epoch_of_batches_is_drawn_from_the_generator_alone():
    train = synthetic_set([20, 10, 5], size=8)
    task = GLMCTask(train, ClassCounts((20, 10, 5)), epochs=2, batch_size=8, augment=Augment(crop_padding=1))
    a = list(task.batches(0, epoch_generator(0, 0, CPU)))
    b = list(task.batches(0, epoch_generator(0, 0, CPU)))
    assert len(a) == task.steps_per_epoch == 5 and [x.images.shape[0] for x in a] == [8, 8, 8, 8, 3]
    for x, z in zip(a, b):
        for s, t in zip(x, z):
            assert torch.equal(s, t)
    assert not torch.equal(a[0].images, a[0].cut)  # two views, two mixings


# --- the model ---------------------------------------------------------------------------------------------------

def test_the_model_evaluates_the_rebalanced_head():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model(cfg, 4, 3)
    assert isinstance(model, GLMCClassifier)
    assert {k.split(".")[0] for k in model.state_dict()} == {"backbone", "head", "fc", "projector", "predictor"}
    x = torch.randn(5, 3, 8, 8)
    model.eval()
    std, cb, z, p = model.train_outputs(x)
    assert torch.equal(model(x), cb) and std.shape == cb.shape == (5, 4) and z.shape == p.shape == (5, 128)
    torch.testing.assert_close(p, model.predictor(z))
    plain = build_model(replace(cfg, train=replace(cfg.train, task="supervised")), 4, 3)
    assert type(plain).__name__ == "Classifier"
    # MaxNorm (optim.maxnorm) caps the evaluated head, as their MaxNorm_via_PGD caps fc_cb
    opt = make_optimizer(model, replace(cfg, optim=OptimConfig(maxnorm=0.1)))
    assert opt.head_weight is model.head.weight


def test_their_width_is_a_model_option():
    wide = make_model("resnet32-w4", 10)
    assert wide.num_features == 256
    assert abs(sum(p.numel() for p in wide.parameters()) / 1e6 - 7.39) < 0.01  # their ResNet_modify(nf=64)


# --- training, resuming, recipes ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_task_trains_the_standard_head_first(splits):
    cfg = tiny_config(epochs=4)
    counts = splits.train.class_counts()
    torch.manual_seed(0)
    model = build_model(cfg, 4, 3)
    task = build_task(cfg, splits.train, counts, splits)
    assert isinstance(task, GLMCTask) and task.contrast_weight == 4.0
    cb_before = model.head.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    # epoch 0 has alpha = 1: the re-balanced head gets no gradient (their schedule)
    fit(model, task, opt, epochs=1, lr_at=lambda e: 0.05, seed=0, device=CPU, progress=False)
    assert torch.equal(model.head.weight, cb_before)
    records = fit(model, task, opt, epochs=4, start_epoch=1, lr_at=lambda e: 0.05, seed=0, device=CPU,
                  progress=False)
    assert not torch.equal(model.head.weight, cb_before)
    assert all(np.isfinite(r.train_loss) for r in records)
    model.eval()
    with torch.no_grad():
        std = model.train_outputs(splits.test.images.float() / 255 / 0.25 - 2)[0]  # the set's mean 0.5, std 0.25
    assert (std.argmax(1) == splits.test.labels).float().mean() > 0.4  # above chance (0.25)


@pytest.mark.slow
def test_a_glmc_run_resumes_bit_identically_and_reevaluates(tmp_path, splits, monkeypatch):
    cfg = tiny_config(epochs=3, schedule="cosine", warmup_epochs=0)
    full = train_one(cfg, tmp_path / "full", splits=splits, progress=False)
    assert train_one(cfg, tmp_path / "cut", splits=splits, progress=False, stop_after=1) == {}
    resumed = train_one(cfg, tmp_path / "cut", splits=splits, progress=False)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    assert any(k.startswith("fc.") for k in a) and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["per_class"] == full["per_class"]
    # `longtail evaluate` rebuilds the GLMC model from the run's config alone and evaluates its re-balanced head
    import longtail.experiment

    monkeypatch.setattr(longtail.experiment, "load_splits", lambda data: splits)
    assert evaluate_checkpoint(tmp_path / "full", device="cpu", write=False)["per_class"] == full["per_class"]
    # and a second stage re-trains the evaluated head on the frozen backbone (cRT, one epoch)
    crt = decouple_run(tmp_path / "full", "crt", out=tmp_path / "crt", epochs=1, splits=splits, device="cpu",
                       bn="frozen", log=lambda _: None)
    assert "top1" in crt


def recipe_splits(num_classes: int) -> Splits:
    return Splits(synthetic_set([4] + [3 - c % 3 for c in range(1, num_classes)], size=8, name="train"),
                  synthetic_set([1] * num_classes, size=8, seed=1, name="test"))


@pytest.mark.slow
@pytest.mark.parametrize("name,classes,contrast", [("cifar10-lt-glmc", 10, 1.0), ("cifar100-lt-glmc", 100, 4.0)])
def test_the_recipes_build_and_take_a_step(name, classes, contrast, tmp_path, one_thread):
    recipe = RECIPES[name]
    t = recipe.config.train
    assert (t.task, t.batch_size, t.lr, t.weight_decay, t.schedule, t.warmup_epochs, t.epochs) == \
        ("glmc", 64, 0.01, 5e-3, "cosine", 0, 200)
    g = recipe.config.glmc
    assert (g.resample_weighting, g.label_weighting, g.contrast_weight) == (0.0, 1.2, contrast)
    assert recipe.config.model.arch == "resnet32" and "[R]" in recipe.published
    cfg = replace(recipe.config, train=replace(t, device="cpu"))
    splits = recipe_splits(classes)
    built = SupervisedStage(cfg, RunDir(tmp_path / "run")).build(
        Context(splits, splits.train.class_counts(), CPU, True, print, False))
    assert isinstance(built.model, GLMCClassifier) and isinstance(built.task, GLMCTask)
    step = EagerStep(built.model, built.task, built.optimizer, CPU, cfg.train.amp)
    step.start_epoch(cfg.train.lr)
    built.model.train()
    built.task.on_epoch_start(0)
    batch = next(iter(built.task.batches(0, epoch_generator(cfg.seed, 0, CPU))))
    before = [p.detach().clone() for p in built.model.parameters()]
    assert torch.isfinite(step(batch))
    assert any(not torch.equal(a, b) for a, b in zip(built.model.parameters(), before))


# --- what GLMC refuses ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting,match", [
    ({"train.weighting": "inverse"}, "re-weights its second head itself"),
    ({"train.drw_start": 160}, "re-weights its second head itself"),
    ({"loss.name": "focal"}, "soft-label cross-entropy"),
    ({"augment.mix": "mixup"}, "mixes every batch itself"),
    ({"semi.method": "fixmatch"}, "semi.method=fixmatch"),
    ({"mfw.strength": 0.5}, "major feature weakening"),
    ({"train.freeze_backbone": True}, "freeze_backbone"),
    ({"data.pseudo_labels": "somewhere"}, "pseudo-labels"),
])
def test_glmc_refuses_what_it_cannot_keep(setting, match):
    cfg = apply_overrides(tiny_config(), setting)
    with pytest.raises(LongtailError, match=match) as e:
        check_glmc(cfg)
    assert e.value.fix


def test_glmc_refuses_image_files_and_stacked_seeds():
    with pytest.raises(LongtailError, match="images held in memory"):
        check_glmc(tiny_config(), train=object())
    assert "train.task=glmc" in (stack_unsupported_reason(tiny_config()) or "")
    assert not GLMCTask.multi_process and not GLMCTask.image_files and GLMCTask.graphable
    with pytest.raises(LongtailError, match="unknown train.task"):
        apply_overrides(tiny_config(), {"train.task": "glmcc"})


def test_glmc_keeps_the_task_contract():
    from test_task_contract import TASKS
    from test_task_contract import test_a_task_has_the_loop_methods_and_declares_its_capabilities as contract

    assert GLMCTask in TASKS
    contract(GLMCTask)


def test_the_graph_engine_trains_glmc_as_the_eager_steps(splits, monkeypatch):
    """GLMC is graphable: its loss reads alpha from a device tensor refilled in place every epoch. With CUDA's graph
    and stream calls replaced by CPU stand-ins (tests/test_graphs.py), the captured and replayed steps train what the
    closure steps train, through epochs whose alpha differs (1, 0.9375, 0.75, 0.4375)."""
    import test_graphs as tg
    from longtail.graphs import GraphStep, make_stepper

    fakes = {"CUDAGraph": tg._FakeGraph, "Stream": tg._FakeStream, "current_stream": lambda *a: tg._FakeStream(),
             "stream": lambda s: contextlib.nullcontext(), "synchronize": lambda *a: None}
    for name, fake in fakes.items():
        monkeypatch.setattr(torch.cuda, name, fake)
    monkeypatch.setattr(GraphStep, "_record", tg._fake_record)
    cfg = tiny_config(epochs=4)
    counts = splits.train.class_counts()
    results, steppers = [], []
    for engine in ("eager", "graph"):
        torch.manual_seed(0)
        model = build_model(cfg, 4, 3)
        task = build_task(cfg, splits.train, counts, splits)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

        def capturing(*args, _engine=engine, **kw):
            s = make_stepper(*args, **kw)
            assert isinstance(s, GraphStep if _engine == "graph" else EagerStep)
            if isinstance(s, GraphStep):
                s.capture = True
                steppers.append(s)
            return s

        monkeypatch.setattr("longtail.loop.make_stepper", capturing)
        recs = fit(model, task, opt, epochs=4, lr_at=lambda e: 0.05, seed=0, device=CPU, amp="off", engine=engine,
                   progress=False)
        results.append(([r.train_loss for r in recs], {k: v.clone() for k, v in model.state_dict().items()}))
        assert float(task.shares[0]) == pytest.approx(task.alpha) == pytest.approx(0.4375)
    (la, wa), (lb, wb) = results
    assert lb == pytest.approx(la, rel=1e-5)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5, msg=k)
    (step,) = steppers
    assert step.recorded >= 1 and sum(g.replays for g, _, _ in step.graphs.values()) > 0
