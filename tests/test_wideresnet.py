"""WRN-28-2 as USB defines it, FixMatch's 7/16 cosine, and the USB-protocol DARP recipes (issue 13, item 6)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from longtail.config import DataConfig, RunConfig, SemiConfig, TrainConfig
from longtail.data.pools import darp_counts, hide_labels
from longtail.data.semi import SemiSplits
from longtail.driver import Context
from longtail.experiment import SupervisedStage
from longtail.graphs import EagerStep
from longtail.loop import fit, make_sgd
from longtail.losses import make_loss
from longtail.models import MODELS, WideResNet, make_model
from longtail.recipes import RECIPES, USB_EPOCHS, USB_ITERATIONS
from longtail.runs import RunDir
from longtail.schedule import describe_schedule, fixmatch_cosine_lr, lr_function
from longtail.semi.fixmatch import FixMatchTask

from conftest import synthetic_set

pytestmark = pytest.mark.usefixtures("one_thread")


class RefBlock(nn.Module):
    """USB's ``semilearn/nets/wrn/wrn.py`` ``BasicBlock`` (drop rate 0), rewritten from its forward."""

    def __init__(self, c_in: int, c_out: int, stride: int, abr: bool) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in, momentum=0.001), nn.BatchNorm2d(c_out, momentum=0.001)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.equal, self.abr = c_in == c_out, abr
        self.convShortcut = None if self.equal else nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)  # noqa: N815

    def forward(self, x):
        act = lambda t: F.leaky_relu(t, 0.1)  # noqa: E731
        if not self.equal and self.abr:
            x = act(self.bn1(x))
        else:
            out = act(self.bn1(x))  # computed in every other case, used only when the widths are equal
        out = act(self.bn2(self.conv1(out if self.equal else x)))
        return (x if self.equal else self.convShortcut(x)) + self.conv2(out)


class RefWRN(nn.Module):
    """USB's ``WideResNet(first_stride=1, depth=28, widen_factor=k)``: logits only."""

    def __init__(self, k: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        ch = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=True)
        blocks = [nn.Sequential(*(RefBlock(ch[s] if i == 0 else ch[s + 1], ch[s + 1], (1, 2, 2)[s] if i == 0 else 1,
                                           s == 0) for i in range(4))) for s in range(3)]
        self.block1, self.block2, self.block3 = blocks
        self.bn1 = nn.BatchNorm2d(ch[3], momentum=0.001, eps=0.001)
        self.classifier = nn.Linear(ch[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.classifier(F.adaptive_avg_pool2d(F.leaky_relu(self.bn1(out), 0.1), 1).flatten(1))


def ours_to_ref(key: str) -> str:
    """A key of our ``Classifier`` state dict as USB names it."""
    key = key.removeprefix("backbone.").replace("shortcut", "convShortcut").replace("head.", "classifier.")
    return "bn1." + key.removeprefix("bn.") if key.startswith("bn.") else key


def test_wrn_28_2_has_usbs_parameters_and_registry_names():
    assert {"wrn-28-2", "wrn-28-8"} <= set(MODELS)
    model = make_model("wrn-28-2", 10)
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(p.numel() for p in RefWRN(2).parameters()) == 1_467_626  # USB: "1.47M"
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen == 2 * (32 + 64)  # the unused bn1 of the first blocks of stages 2 and 3
    assert model.num_features == 128
    assert make_model("wrn-28-2", 10, in_channels=1).backbone.conv1.in_channels == 1


def test_wrn_28_8_width():
    backbone = WideResNet(28, 8)
    assert backbone.out_features == 512
    assert sum(p.numel() for p in backbone.parameters()) + 512 * 10 + 10 == 23_354_858  # USB's wrn_28_8


@pytest.mark.parametrize("train", [True, False])
def test_forward_matches_usbs_module(train):
    torch.manual_seed(0)
    ours, ref = make_model("wrn-28-2", 10), RefWRN(2)
    with torch.no_grad():  # random BatchNorm statistics and affine parameters, so eval mode tests them too
        for m in ours.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3), m.running_var.uniform_(0.5, 2.0)
    state = {ours_to_ref(k): v for k, v in ours.state_dict().items()}
    assert set(state) == set(ref.state_dict())
    ref.load_state_dict(state)
    ours.train(train), ref.train(train)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    if train:  # the running statistics moved alike (all but the two unused BatchNorms, which USB updates)
        after = {ours_to_ref(k): v for k, v in ours.state_dict().items()}
        dead = {"block2.0.bn1", "block3.0.bn1"}
        for k, v in ref.state_dict().items():
            if "running" in k and k.rsplit(".", 1)[0] not in dead:
                torch.testing.assert_close(after[k], v, rtol=1e-5, atol=1e-6)


def test_init_and_no_weight_decay_follow_usb():
    torch.manual_seed(0)
    model = make_model("wrn-28-2", 10)
    head = model.head
    assert isinstance(head, nn.Linear) and torch.all(head.bias == 0)
    assert head.weight.std().item() == pytest.approx(math.sqrt(2 / (128 + 10)), rel=0.15)  # Xavier normal
    conv = model.backbone.block3[1].conv1  # Kaiming normal, fan out, gain sqrt 2
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.05)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.momentum == 0.001 for m in bns) and model.backbone.bn.eps == 1e-3
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    names = model.backbone.no_weight_decay()
    assert "conv1.bias" in names and "bn.weight" in names and "block1.0.bn2.bias" in names
    assert not any("conv" in n and n.endswith("weight") for n in names)


def test_fixmatch_cosine_is_the_formula_per_step():
    cfg = RunConfig(train=TrainConfig(epochs=3, lr=0.03, schedule="fixmatch-cosine", warmup_epochs=0.0))
    lr_at = lr_function(cfg)
    assert getattr(lr_at, "per_step", False)
    spe, K = 4, 12  # steps per epoch, steps in all
    for k in (0, 1, 5, 6, 11, 12):
        assert lr_at(k / spe) == pytest.approx(0.03 * math.cos(7 * math.pi * k / (16 * K)), abs=1e-12)
    assert fixmatch_cosine_lr(1.0, base_lr=1.0, epochs=4, warmup_epochs=2) == 0.5  # linear warm-up from 0
    assert fixmatch_cosine_lr(2.0, base_lr=1.0, epochs=4, warmup_epochs=2) == 1.0
    assert "cos(7 pi k / 16 K)" in describe_schedule(cfg)[0]

    class Recorder:  # a task whose loss records the rate the loop set for its step
        steps_per_epoch, graphable, multi_process, image_files = spe, False, True, False

        def __init__(self, optimizer_box):
            self.box, self.seen = optimizer_box, []

        def on_epoch_start(self, epoch):
            pass

        def batches(self, epoch, generator):
            return (torch.zeros(1) for _ in range(spe))

        def loss(self, model, batch):
            self.seen.append(self.box[0].param_groups[0]["lr"])
            return (model.weight ** 2).sum()

    model = nn.Linear(2, 1)
    box = [make_sgd(model, lr=0.03, momentum=0.9, weight_decay=0)]
    task = Recorder(box)
    fit(model, task, box[0], epochs=3, lr_at=lr_at, seed=0, device=torch.device("cpu"), amp="off", progress=False)
    assert task.seen == pytest.approx([0.03 * math.cos(7 * math.pi * k / (16 * K)) for k in range(K)], abs=1e-12)


def test_usb_epochs_are_2_to_the_18_steps():
    n = sum(darp_counts(1500, 10, 100))
    assert n == 3720 and USB_ITERATIONS == 2 ** 18
    lab = synthetic_set(darp_counts(1500, 10, 100), size=2)
    pool = hide_labels(synthetic_set([2] * 10, size=2, seed=1), name="pool")
    task = FixMatchTask(lab, pool, make_loss("ce", lab.class_counts()), batch_size=64, mu=2)
    assert task.steps_per_epoch == 59 and USB_EPOCHS == round(USB_ITERATIONS / 59)
    assert abs(USB_EPOCHS * task.steps_per_epoch - USB_ITERATIONS) < task.steps_per_epoch


def test_the_darp_recipes_follow_usb_and_the_short_ones_keep_the_old_settings():
    for name in ("cifar10-semi-darp-fixmatch", "cifar10-semi-darp-fixmatch-da", "cifar10-semi-darp-fixmatch-la",
                 "cifar10-semi-darp-supervised"):
        cfg = RECIPES[name].config
        t, s = cfg.train, cfg.semi
        assert cfg.model.arch == "wrn-28-2" and cfg.optim.ema == 0.999
        assert (t.epochs, t.batch_size, t.lr, t.momentum, t.nesterov, t.weight_decay, t.schedule, t.warmup_epochs) == \
            (USB_EPOCHS, 64, 0.03, 0.9, True, 5e-4, "fixmatch-cosine", 0.0)
        d = cfg.data
        assert (d.protocol, d.darp_n1, d.darp_m1, d.darp_gamma_l, d.darp_gamma_u, d.darp_order, d.darp_include_labeled,
                d.normalization) == ("darp", 1500, 3000, 100, 100, "shuffled", False, "imagenet")
        if name.endswith("supervised"):
            assert s.method == "none" and cfg.augment.randaugment == 0  # USB's supervised run: weak views only
        else:
            assert (s.method, s.mu, s.threshold, s.lambda_u) == ("fixmatch", 2, 0.95, 1.0)
            a = cfg.augment
            assert (a.randaugment, a.randaugment_magnitude, a.cutout, a.policy) == (3, None, 0.5, "usb")
    assert RECIPES["cifar10-semi-darp-fixmatch-da"].config.semi.alignment == "da"
    assert RECIPES["cifar10-semi-darp-fixmatch-la"].config.semi.alignment == "la"
    darp = DataConfig(dataset="cifar10", protocol="darp", normalization="cifar10-data")  # DARP's all_cifar10.py
    for suffix in ("", "-short"):  # a pseudo-label run cuts the split as the run that labeled its pool
        assert RECIPES[f"cifar10-semi-darp-pseudo{suffix}"].config.data == \
            RECIPES[f"cifar10-semi-darp-supervised{suffix}"].config.data
    assert RECIPES["cifar10-semi-darp-pseudo"].config.model.arch == "resnet32"
    for name, train, semi in (("cifar10-semi-darp-supervised-short", TrainConfig(), SemiConfig()),
                              ("cifar10-semi-darp-pseudo-short", TrainConfig(batch_size=256), SemiConfig()),
                              ("cifar10-semi-darp-fixmatch-short", TrainConfig(), SemiConfig(method="fixmatch")),
                              ("cifar10-semi-darp-fixmatch-da-short", TrainConfig(),
                               SemiConfig(method="fixmatch", alignment="da")),
                              ("cifar10-semi-darp-fixmatch-la-short", TrainConfig(),
                               SemiConfig(method="fixmatch", alignment="la"))):
        assert RECIPES[name].config == RunConfig(recipe=name, data=darp, train=train, semi=semi)


@pytest.mark.slow
def test_usb_fixmatch_recipe_builds_and_trains_a_step(tmp_path):
    """The recipe's model, task and optimizer as the run driver builds them, one step on an 8-pixel stand-in."""
    recipe = RECIPES["cifar10-semi-darp-fixmatch"]
    cfg = replace(recipe.config, train=replace(recipe.config.train, device="cpu"))
    train, test = synthetic_set([4, 3, 2, 2, 1, 1, 1, 1, 1, 1]), synthetic_set([1] * 10, seed=1)
    splits = SemiSplits(train, test, unlabeled=hide_labels(synthetic_set([3] * 10, seed=2), name="pool"))
    built = SupervisedStage(cfg, RunDir(tmp_path / "run")).build(
        Context(splits, train.class_counts(), torch.device("cpu"), True, print, False))
    task = built.task
    assert isinstance(task, FixMatchTask) and task.mu == 2 and task.threshold == 0.95
    assert task.strong is not None and (task.strong.randaugment, task.strong.cutout, task.strong.policy) == \
        (3, 0.5, "usb")  # the strong view: crop + flip + USB's RandAugment(3) + Cutout
    assert task.weak.randaugment == 0 and task.weak.cutout == 0  # the labeled batch and weak view: crop + flip
    group = built.optimizer.param_groups[0]
    assert group["nesterov"] and group["weight_decay"] == 5e-4 and group["momentum"] == 0.9
    model = built.trains or built.model
    before = [p.detach().clone() for p in model.parameters()]
    step = EagerStep(model, task, built.optimizer, torch.device("cpu"), "off")
    step.start_epoch(cfg.train.lr)
    model.train()
    batch = next(iter(task.batches(0, torch.Generator().manual_seed(0))))
    assert batch.u_weak.shape[0] == batch.u_strong.shape[0] == 2 * batch.images.shape[0]
    assert torch.isfinite(step(batch))
    moved = [not torch.equal(p, b) for p, b in zip(model.parameters(), before)]
    trainable = [p.requires_grad for p in model.parameters()]
    assert moved == trainable  # every trainable parameter moved, the frozen (unused) BatchNorms did not


@pytest.mark.parametrize("train", [True, False])
def test_the_kekmodel_form_is_usbs_without_the_stem_bias_and_with_eps_1e5(train):
    """``wrn-28-2-kekmodel`` (kekmodel/FixMatch-pytorch's ``models/wideresnet.py``, ACR's network): USB's module
    with no bias on the first convolution and the last BatchNorm's eps at PyTorch's default 1e-5."""
    torch.manual_seed(0)
    ours, ref = make_model("wrn-28-2-kekmodel", 10), RefWRN(2)
    assert ours.backbone.conv1.bias is None and ours.backbone.bn.eps == 1e-5
    assert sum(p.numel() for p in ours.parameters()) == 1_467_626 - 16
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3), m.running_var.uniform_(0.5, 2.0)
        state = {ours_to_ref(k): v for k, v in ours.state_dict().items()}
        ref.load_state_dict({**state, "conv1.bias": torch.zeros(16)})  # their stem: no bias
        ref.bn1.eps = 1e-5  # their last BatchNorm: nn.BatchNorm2d(channels[3], momentum=0.001)
    ours.train(train), ref.train(train)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    usb = make_model("wrn-28-2", 10)
    usb.load_state_dict({**ours.state_dict(), "backbone.conv1.bias": torch.zeros(16)})
    usb.train(train)
    assert not torch.allclose(usb(x), ours(x), rtol=0, atol=1e-7)  # the last BatchNorm's eps shows
