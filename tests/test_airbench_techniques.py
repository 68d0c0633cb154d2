"""airbench94's techniques as settings (issue 15), each against a transcription of ``airbench94.py``
(KellerJordan/cifar10-airbench 01a2367): flip + translate test-time augmentation (``model.tta=flip-translate``),
Lookahead weight averaging (``optim.lookahead``), the BatchNorm biases' learning-rate multiplier
(``optim.bn_bias_lr_mult``), the whitening bias's freeze (``optim.whiten_bias_epochs``) and the alternating flip
(``augment.flip_mode=alternating``, against the loader of airbench94.py); their defaults leave every run as it was;
resuming; the settings' checks and where ``--show-config`` shows them."""

from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from longtail import LongtailError
from longtail.checkpoints import load_checkpoint
from longtail.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, apply_overrides
from longtail.data.augment import Augment, alternating_flip, eval_batches, flip_half, iterate_batches
from longtail.data.registry import Splits
from longtail.experiment import evaluate_model, train_one
from longtail.graphs import graph_unsupported_reason
from longtail.loop import fit, make_sgd, predict
from longtail.losses import make_loss
from longtail.models import FlipTranslateTTA, FlipTTA, make_model, tta_model
from longtail.optim import Lookahead, RunOptimizer, batchnorm_biases, make_optimizer, optim_settings
from longtail.tasks import SupervisedTask

from conftest import synthetic_set

pytestmark = pytest.mark.usefixtures("one_thread")


# test-time augmentation ----------------------------------------------------------------------------------------


def _reflect(i: int, n: int) -> int:
    """Index ``i`` of a side of ``n`` pixels, reflected at the borders without repeating the edge (F.pad reflect)."""
    return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[.., i, j] = x[.., reflect(i + dy), reflect(j + dx)]``, written out pixel by pixel."""
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    for i in range(h):
        for j in range(w):
            out[..., i, j] = x[..., _reflect(i + dy, h), _reflect(j + dx, w)]
    return out


def test_flip_translate_tta_equals_the_hand_computed_average_on_a_linear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    x = torch.randn(5, 2, 4, 4)
    f = model
    down_right, up_left = _shifted(x, -1, -1), _shifted(x, 1, 1)  # padded[:H, :W] and padded[2:, 2:]
    # weights: the image and its mirror 1/4 each, each shifted view and its mirror 1/8 each
    expected = (0.25 * (f(x) + f(x.flip(3)))
                + 0.125 * (f(down_right) + f(down_right.flip(3)) + f(up_left) + f(up_left.flip(3))))
    tta = FlipTranslateTTA(model)
    torch.testing.assert_close(tta(x), expected, rtol=1e-6, atol=1e-6)
    # a linear model of the six views is the model of their weighted mean image
    mean_image = 0.25 * (x + x.flip(3)) + 0.125 * (down_right + down_right.flip(3) + up_left + up_left.flip(3))
    torch.testing.assert_close(tta(x), f(mean_image), rtol=1e-5, atol=1e-6)
    assert set(tta.state_dict()) == {"model." + k for k in model.state_dict()}  # no parameters of its own
    with pytest.raises(LongtailError, match="model.tta=flip-translate .* at least 2x2"):
        tta(torch.randn(1, 2, 1, 4))


def test_flip_translate_tta_is_airbench94s_level_2():
    """``infer_mirror_translate`` of airbench94.py (lines 463-476), transcribed for 32x32 images."""

    def infer_mirror(inputs, net):
        return 0.5 * net(inputs) + 0.5 * net(inputs.flip(-1))

    def infer_mirror_translate(inputs, net):
        logits = infer_mirror(inputs, net)
        pad = 1
        padded_inputs = F.pad(inputs, (pad,) * 4, 'reflect')
        inputs_translate_list = [
            padded_inputs[:, :, 0:32, 0:32],
            padded_inputs[:, :, 2:34, 2:34],
        ]
        logits_translate_list = [infer_mirror(inputs_translate, net) for inputs_translate in inputs_translate_list]
        logits_translate = torch.stack(logits_translate_list).mean(0)
        return 0.5 * logits + 0.5 * logits_translate

    torch.manual_seed(0)
    model = make_model("fastnet-s", 4).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(FlipTranslateTTA(model)(x), infer_mirror_translate(x, model))
        # channels_last inputs and a non-square image work too
        cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(FlipTranslateTTA(model)(cl), infer_mirror_translate(x, model))
        assert FlipTranslateTTA(model)(torch.randn(2, 3, 12, 20)).shape == (2, 4)


def test_tta_modes_and_evaluation():
    torch.manual_seed(0)
    model = make_model("tiny", 4, in_channels=3)
    assert tta_model(model, "none") is model
    assert isinstance(tta_model(model, "flip"), FlipTTA)
    assert isinstance(tta_model(model, "flip-translate"), FlipTranslateTTA)
    with pytest.raises(LongtailError, match="unknown model.tta 'translate'"):
        tta_model(model, "translate")
    with pytest.raises(LongtailError, match="unknown model.tta 'translate'"):
        ModelConfig(tta="translate")
    test = synthetic_set([5, 5, 5, 5], seed=1, name="test")
    summary = evaluate_model(model, test, test.class_counts(), torch.device("cpu"), "auto", "flip-translate")
    logits, labels = predict(FlipTranslateTTA(model), eval_batches(test, 512), torch.device("cpu"))
    assert summary["top1"] == pytest.approx(100.0 * (logits.argmax(1) == labels).float().mean().item())
    plain, _ = predict(model, eval_batches(test, 512), torch.device("cpu"))
    assert not torch.equal(plain, logits)


# Lookahead -----------------------------------------------------------------------------------------------------


class AirbenchLookaheadState:
    """airbench94.py lines 271-280, as written."""

    def __init__(self, net):
        self.net_ema = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net, decay):
        for ema_param, net_param in zip(self.net_ema.values(), net.state_dict().values()):
            if net_param.dtype in (torch.half, torch.float):
                ema_param.lerp_(net_param, 1 - decay)
                # Copy the ema parameters back to the network, similarly to the Lookahead optimizer
                net_param.copy_(ema_param)


class BNNet(nn.Module):
    """Linear -> BatchNorm -> ReLU -> linear head, with BatchNorm statistics to average."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU())
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.backbone(x))


def _batches(epochs=4, steps=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[(torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(steps)]
            for _ in range(epochs)]


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_lookahead_equals_airbench94s_loop_over_12_steps():
    """The training loop of airbench94.py (lines 388-413: step, count, every 5 steps from epoch 3 start or
    update with decay 0.95^5 (k / K)^3, and the decay-1 update after every epoch), transcribed with decay 0.9,
    every 2 steps from epoch 1, against the optimizer driven as longtail.loop.fit drives it."""
    batches = _batches()
    total_train_steps = sum(len(b) for b in batches)  # 12
    decay_base, every_n_steps, start_epochs, decay_pow = 0.9, 2, 1, 3.0
    lr, momentum, wd = 0.2, 0.85, 5e-3

    ref = BNNet()
    optimizer = torch.optim.SGD(ref.parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=wd)
    lookahead_state, current_steps, ref_epochs = None, 0, []
    for epoch in range(len(batches)):
        for inputs, labels in batches[epoch]:
            loss = F.cross_entropy(ref(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            current_steps += 1
            if epoch >= start_epochs and current_steps % every_n_steps == 0:
                if lookahead_state is None:
                    lookahead_state = AirbenchLookaheadState(ref)
                else:
                    base_rho = decay_base ** every_n_steps
                    rho = base_rho * (current_steps / total_train_steps) ** decay_pow
                    lookahead_state.update(ref, decay=rho)
            if current_steps >= total_train_steps:
                break
        if lookahead_state is not None:
            lookahead_state.update(ref, decay=1.0)
        ref_epochs.append(_snapshot(ref))

    model = BNNet()
    cfg = RunConfig(train=TrainConfig(lr=lr, momentum=momentum, nesterov=True, weight_decay=wd),
                    optim=OptimConfig(lookahead=decay_base, lookahead_every=every_n_steps,
                                      lookahead_start=start_epochs))
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, RunOptimizer) and isinstance(opt.lookahead, Lookahead)
    decays: list[float] = []
    update = opt.lookahead.update
    opt.lookahead.update = lambda d: (decays.append(d), update(d))[1]  # type: ignore[method-assign]
    for epoch, epoch_batches in enumerate(batches):
        opt.on_epoch_start(epoch, len(epoch_batches), len(batches))
        for x, y in epoch_batches:
            def closure(x=x, y=y):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss
            opt.step(closure)
        assert opt.lookahead.started == (epoch >= start_epochs)
        opt.on_epoch_end(epoch)
        mine = _snapshot(model)
        for k, v in ref_epochs[epoch].items():
            assert torch.equal(mine[k], v), (epoch, k)
        if opt.lookahead.started:  # the epoch ends on the averaged weights
            assert all(torch.equal(opt.lookahead.weights[k], mine[k]) for k in opt.lookahead.weights)
    # step 4 starts it; updates at steps 6, 8, 10, 12 and after epochs 1, 2, 3
    r = [0.9 ** 2 * (k / 12) ** 3 for k in (6, 8, 10, 12)]
    assert decays == pytest.approx([r[0], 1.0, r[1], 1.0, r[2], r[3], 1.0], rel=1e-12)
    assert "num_batches_tracked" not in " ".join(opt.lookahead.weights)  # floats only
    assert "backbone.1.running_var" in opt.lookahead.weights  # BatchNorm statistics are averaged too
    state = opt.state_dict()
    assert state["lookahead"]["decay"] == 0.9 and set(state["lookahead"]["weights"]) == set(opt.lookahead.weights)
    assert torch.equal(mine["head.weight"], ref.head.weight.detach())


def test_lookahead_state_before_it_starts_and_restored():
    model = BNNet()
    cfg = RunConfig(optim=OptimConfig(lookahead=0.95))
    opt = make_optimizer(model, cfg)
    assert "lookahead" not in opt.state_dict()  # not started: nothing to keep
    opt.load_state_dict(opt.state_dict())
    assert not opt.lookahead.started  # type: ignore[attr-defined]
    opt.lookahead.start()  # type: ignore[attr-defined]
    saved = opt.state_dict()
    again = make_optimizer(BNNet(), cfg)
    again.load_state_dict(saved)
    assert again.lookahead.started  # type: ignore[attr-defined]
    for k, v in saved["lookahead"]["weights"].items():
        assert torch.equal(again.lookahead.weights[k], v)  # type: ignore[attr-defined]
    with pytest.raises(LongtailError, match="needs the run's steps"):  # stepped outside longtail.loop.fit
        fresh = make_optimizer(BNNet(), replace(cfg, optim=OptimConfig(lookahead=0.95, lookahead_start=0,
                                                                       lookahead_every=1)))
        x, y = _batches(1, 1)[0][0]
        fresh.zero_grad()
        F.cross_entropy(fresh.lookahead.model(x), y).backward()  # type: ignore[attr-defined]
        fresh.step()


# the BatchNorm biases' learning rate ---------------------------------------------------------------------------


def test_bn_bias_group_lr_and_weight_decay_at_each_step():
    torch.manual_seed(0)
    model = make_model("fastnet-s", 4)
    lr, wd, mult = 0.5, 1e-3, 64.0
    cfg = RunConfig(model=ModelConfig(arch="fastnet-s"),
                    train=TrainConfig(lr=lr, momentum=0.85, nesterov=True, weight_decay=wd),
                    optim=OptimConfig(bn_bias_lr_mult=mult))
    opt = make_optimizer(model, cfg)
    rest, shifts = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in shifts["params"]) == sorted(
        n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) for n in [f"{n}.bias"])
    assert len(shifts["params"]) == 6 and shifts["lr_mult"] == mult and shifts["weight_decay"] == wd / mult
    assert rest["weight_decay"] == wd and "lr_mult" not in rest
    assert len(rest["params"]) + len(shifts["params"]) == len(list(model.parameters()))
    # the airbench transcription: its two groups (lines 356-361) with lr x the schedule's factor (LambdaLR)
    ref = make_model("fastnet-s", 4)
    ref.load_state_dict(model.state_dict())
    norm_biases = [p for k, p in ref.named_parameters() if 'norm' in k and p.requires_grad]
    other_params = [p for k, p in ref.named_parameters() if 'norm' not in k and p.requires_grad]
    airbench_wd = wd * lr  # its decoupled weight decay; PyTorch's weight_decay is wd / lr per group
    lr_biases = lr * mult
    param_configs = [dict(params=norm_biases, lr=lr_biases, weight_decay=airbench_wd / lr_biases),
                     dict(params=other_params, lr=lr, weight_decay=airbench_wd / lr)]
    schedule = [0.2, 0.6, 1.0, 0.5]
    ref_opt = torch.optim.SGD(param_configs, momentum=0.85, nesterov=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(ref_opt, lambda i: schedule[min(i, len(schedule) - 1)])
    seen = []
    base_step = opt.base_optimizer.step  # type: ignore[attr-defined]

    def recording_step(*a, **k):
        seen.append([g["lr"] for g in opt.param_groups])
        return base_step(*a, **k)

    opt.base_optimizer.step = recording_step  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(0)
    for factor in schedule:
        x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
        for group in opt.param_groups:  # as longtail.graphs.EagerStep.start_epoch: one rate for every group
            group["lr"] = lr * factor

        def closure(x=x, y=y):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
        assert [gr["lr"] for gr in opt.param_groups] == [lr * factor, lr * factor]  # restored after the step
        ref_opt.zero_grad(set_to_none=True)
        F.cross_entropy(ref(x), y).backward()
        ref_opt.step()
        scheduler.step()
    assert seen == [[lr * f, lr * f * mult] for f in schedule]
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    # the decay per step (lr x weight_decay) is the same in both groups
    assert rest["lr"] * rest["weight_decay"] == pytest.approx(rest["lr"] * shifts["lr_mult"] * shifts["weight_decay"])


def test_bn_bias_group_with_decay_bn_bias_false_and_models_without_batchnorm():
    model = make_model("resnet8", 4)
    cfg = RunConfig(optim=OptimConfig(bn_bias_lr_mult=8.0, decay_bn_bias=False))
    decayed, free, shifts = make_optimizer(model, cfg).param_groups
    assert free["weight_decay"] == 0.0 and shifts["weight_decay"] == 0.0 and shifts["lr_mult"] == 8.0
    assert all(p.dim() > 1 for p in decayed["params"]) and {id(p) for p in shifts["params"]} == {
        id(p) for p in batchnorm_biases(model)}
    names = {id(p): n for n, p in model.named_parameters()}
    assert any(names[id(p)].endswith("weight") and "bn" in names[id(p)] for p in free["params"])  # scales stay
    linear = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    with pytest.raises(LongtailError, match=r"optim.bn_bias_lr_mult=8.0 .*Sequential \(model.arch=resnet32\) has no "
                                            "BatchNorm layer"):
        make_optimizer(linear, cfg)


# the whitening bias ------------------------------------------------------------------------------------------


def _fastnet_fit(whiten_bias_epochs, epochs=3):
    train = synthetic_set([24, 12, 6, 3], size=8)
    torch.manual_seed(0)
    model = make_model("fastnet-s", 4)
    model.backbone.init_from_data(train.images, mean=train.mean, std=train.std)
    task = SupervisedTask(train, make_loss("ce", train.class_counts()), batch_size=16,
                          augment=Augment(crop_padding=1, flip=True))
    cfg = RunConfig(model=ModelConfig(arch="fastnet-s"), train=TrainConfig(lr=0.05, momentum=0.85, nesterov=True,
                                                                         weight_decay=5e-4),
                    optim=OptimConfig(whiten_bias_epochs=whiten_bias_epochs))
    opt = make_optimizer(model, cfg)
    biases = [model.backbone.whiten.bias.detach().clone()]

    def on_epoch_end(rec):
        biases.append(model.backbone.whiten.bias.detach().clone())

    fit(model, task, opt, epochs=epochs, lr_at=lambda e: 0.05, seed=0, device=torch.device("cpu"), progress=False,
        on_epoch_end=on_epoch_end)
    return model, opt, biases


def test_whitening_bias_trains_before_its_epoch_and_is_frozen_from_it():
    model, opt, biases = _fastnet_fit(1)
    assert not torch.equal(biases[1], biases[0])  # epoch 0 trains it
    assert torch.equal(biases[2], biases[1]) and torch.equal(biases[3], biases[1])  # frozen from epoch 1
    assert not model.backbone.whiten.bias.requires_grad and model.backbone.whiten.bias.grad is None
    _, _, free = _fastnet_fit(None)
    assert all(not torch.equal(a, b) for a, b in zip(free[1:], free[:-1]))  # the default: trains throughout
    assert torch.equal(free[1], biases[1])  # the same first epoch
    # a run resumed at epoch 2 (a fresh model and optimizer) freezes it before its first step
    fresh = make_model("fastnet-s", 4)
    resumed = make_optimizer(fresh, RunConfig(model=ModelConfig(arch="fastnet-s"),
                                              optim=OptimConfig(whiten_bias_epochs=1)))
    assert fresh.backbone.whiten.bias.requires_grad
    resumed.on_epoch_start(2, 3, 3)  # type: ignore[attr-defined]
    assert not fresh.backbone.whiten.bias.requires_grad
    # 0 freezes it from the start; an epoch before the freeze leaves requires_grad as it is
    zero = make_model("fastnet-s", 4)
    opt0 = make_optimizer(zero, RunConfig(optim=OptimConfig(whiten_bias_epochs=0)))
    opt0.on_epoch_start(0, 3, 3)  # type: ignore[attr-defined]
    assert not zero.backbone.whiten.bias.requires_grad


# defaults, resuming, checks, --show-config ----------------------------------------------------------------------


def test_defaults_build_exactly_the_plain_sgd_of_before():
    """Every setting at its default: the optimizer is torch.optim.SGD of make_sgd (no wrapper, no hooks), and a
    fitted epoch equals one with a hand-built SGD bit for bit."""
    train = synthetic_set([24, 12, 6, 3], size=8)
    cfg = RunConfig(model=ModelConfig(arch="fastnet-s"), train=TrainConfig(lr=0.05, momentum=0.85, nesterov=True,
                                                                         weight_decay=5e-4))
    assert optim_settings(cfg) == [] and cfg.optim == OptimConfig(lookahead=0.0, lookahead_start=3, lookahead_every=5,
                                                                  bn_bias_lr_mult=1.0, whiten_bias_epochs=None)
    states = []
    for build in ("make_optimizer", "by hand"):
        torch.manual_seed(0)
        model = make_model("fastnet-s", 4)
        model.backbone.init_from_data(train.images, mean=train.mean, std=train.std)
        if build == "make_optimizer":
            opt = make_optimizer(model, cfg)
            assert type(opt) is torch.optim.SGD and not hasattr(opt, "on_epoch_start")
            ref = make_sgd(model, lr=0.05, momentum=0.85, weight_decay=5e-4, nesterov=True)
            assert opt.state_dict()["param_groups"] == ref.state_dict()["param_groups"]
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.85, weight_decay=5e-4, nesterov=True)
        task = SupervisedTask(train, make_loss("ce", train.class_counts()), batch_size=16,
                          augment=Augment(crop_padding=1, flip=True))
        fit(model, task, opt, epochs=1, lr_at=lambda e: 0.05, seed=0, device=torch.device("cpu"), progress=False)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def airbench_config(epochs=3, **optim) -> RunConfig:
    return RunConfig(
        recipe="airbench-test", data=DataConfig(dataset="synthetic"), model=ModelConfig(arch="fastnet-s",
                                                                                        tta="flip-translate"),
        train=TrainConfig(epochs=epochs, batch_size=16, lr=0.01, momentum=0.85, nesterov=True, weight_decay=5e-4,
                          schedule="onecycle", warmup_epochs=46.0, device="cpu", checkpoint_every=1, crop_padding=1),
        optim=OptimConfig(**optim))


@pytest.mark.slow
def test_stopped_and_resumed_run_with_every_technique_equals_an_uninterrupted_one(tmp_path):
    splits = Splits(synthetic_set([24, 12, 6, 3]), synthetic_set([5, 5, 5, 5], seed=1, name="test"))
    cfg = airbench_config(lookahead=0.95, lookahead_start=1, lookahead_every=2, bn_bias_lr_mult=64.0,
                          whiten_bias_epochs=1)
    quiet = dict(splits=splits, progress=False, log=lambda m: None)
    full = train_one(cfg, tmp_path / "full", **quiet)
    assert train_one(cfg, tmp_path / "cut", stop_after=1, **quiet) == {}
    cut = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert cut["next_epoch"] == 1 and "lookahead" not in cut["optimizer"]  # averaging starts in epoch 1
    resumed = train_one(cfg, tmp_path / "cut", **quiet)
    a, b = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("full", "cut"))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, v in a["optimizer"]["lookahead"]["weights"].items():
        assert torch.equal(v, b["optimizer"]["lookahead"]["weights"][k]), k
        assert torch.equal(v, a["model"][k]), k  # the run ends on the averaged weights
    assert a["optimizer"]["param_groups"][-1]["lr_mult"] == 64.0
    # the whitening bias trained in epoch 0 only: the resumed run kept it frozen
    assert torch.equal(b["model"]["backbone.whiten.bias"], cut["model"]["backbone.whiten.bias"])
    assert resumed["per_class"] == full["per_class"]
    # a stop inside the averaging resumes equally (the copy comes back from the checkpoint)
    assert train_one(cfg, tmp_path / "cut2", stop_after=2, **quiet) == {}
    assert "lookahead" in load_checkpoint(tmp_path / "cut2" / "checkpoints" / "last.pt")["optimizer"]
    again = train_one(cfg, tmp_path / "cut2", **quiet)
    c = load_checkpoint(tmp_path / "cut2" / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])
    assert again["per_class"] == full["per_class"]


def test_settings_are_checked_and_refused_where_they_cannot_apply():
    for key, value, words in (("optim.lookahead", "1", r"optim.lookahead must be .* in \[0, 1\)"),
                              ("optim.lookahead_every", "0", "optim.lookahead_every must be"),
                              ("optim.lookahead_start", "-1", "optim.lookahead_start must be"),
                              ("optim.bn_bias_lr_mult", "0", r"optim.bn_bias_lr_mult must be .* > 0"),
                              ("optim.whiten_bias_epochs", "-1", "optim.whiten_bias_epochs must be"),
                              ("model.tta", "translate", "unknown model.tta")):
        with pytest.raises(LongtailError, match=words):
            apply_overrides(RunConfig(), {key: value})
    assert apply_overrides(RunConfig(), {"optim.whiten_bias_epochs": "none"}).optim.whiten_bias_epochs is None
    model = make_model("fastnet-s", 4)
    with pytest.raises(LongtailError, match="both average the weights"):
        make_optimizer(model, RunConfig(optim=OptimConfig(lookahead=0.95, ema=0.999)))
    for optim in (OptimConfig(lookahead=0.95), OptimConfig(bn_bias_lr_mult=64.0), OptimConfig(whiten_bias_epochs=3)):
        on = optim_settings(RunConfig(optim=optim))
        assert len(on) == 1
        with pytest.raises(LongtailError, match=f"train.engine=graph captures SGD \\(or SAM\\) steps, not {on[0]}"):
            make_optimizer(model, RunConfig(train=TrainConfig(engine="graph"), optim=optim))
        opt = make_optimizer(model, RunConfig(model=ModelConfig(arch="fastnet-s"), optim=optim))
        task = SupervisedTask(synthetic_set([4, 4]), nn.CrossEntropyLoss(), batch_size=4)
        assert "optim.lookahead" in (graph_unsupported_reason(task, opt) or "")  # auto steps eagerly
    with pytest.raises(LongtailError, match=r"optim.whiten_bias_epochs=3 freezes the bias of FastNet's "
                                            r"patch-whitening layer, and Classifier \(model.arch=resnet8\) has none"):
        make_optimizer(make_model("resnet8", 4), RunConfig(model=ModelConfig(arch="resnet8"),
                                                           optim=OptimConfig(whiten_bias_epochs=3)))


def test_stacked_seeds_and_pretraining_refuse_them():
    from longtail.ssl import build_pretraining
    from longtail.stacked import stack_unsupported_reason

    for optim, words in ((OptimConfig(lookahead=0.95), "optim.lookahead=0.95"),
                         (OptimConfig(bn_bias_lr_mult=64.0), "optim.bn_bias_lr_mult=64.0"),
                         (OptimConfig(whiten_bias_epochs=3), "optim.whiten_bias_epochs=3")):
        cfg = replace(airbench_config(), model=ModelConfig(arch="resnet8", tta="flip-translate"), optim=optim)
        assert words in (stack_unsupported_reason(cfg) or "")
        with pytest.raises(LongtailError, match=f"{words} are for supervised training"):
            build_pretraining("rotation", cfg, None, synthetic_set([4, 4]), torch.device("cpu"))  # type: ignore[arg-type]
    # model.tta is evaluation only (finish_run evaluates every member with it): stacked seeds take it
    assert stack_unsupported_reason(replace(airbench_config(), model=ModelConfig(arch="resnet8",
                                                                                 tta="flip-translate"))) is None


def test_show_config_shows_them_for_the_fast_recipes_and_reads_back(tmp_path):
    import tomllib

    from longtail.cli import show_config
    from longtail.config import config_from_file, unused_settings
    from longtail.recipes import get_recipe

    fast = get_recipe("cifar10-lt-fast-la").config
    keys = {f"{s}.{k}" for s, t in tomllib.loads(show_config(fast)).items() if isinstance(t, dict) for k in t}
    assert {"model.tta", "optim.lookahead", "optim.bn_bias_lr_mult", "optim.whiten_bias_epochs"} <= keys
    assert not {"optim.lookahead_start", "optim.lookahead_every"} & keys  # Lookahead's own, while it is off
    on = apply_overrides(fast, {"optim.lookahead": "0.95", "optim.whiten_bias_epochs": "3",
                                "model.tta": "flip-translate"})
    text = show_config(on)
    assert "lookahead_start = 3" in text and "whiten_bias_epochs = 3" in text
    (tmp_path / "c.toml").write_text(text)
    assert config_from_file(tmp_path / "c.toml") == on
    (tmp_path / "d.toml").write_text(show_config(fast))
    assert config_from_file(tmp_path / "d.toml") == fast
    resnet = get_recipe("cifar10-lt-ce").config
    assert "optim.whiten_bias_epochs" in unused_settings(resnet)  # no whitening layer: not shown
    assert "optim.whiten_bias_epochs" not in unused_settings(fast)
    assert optim_settings(fast) == []  # every fast recipe leaves them off


# the alternating flip ------------------------------------------------------------------------------------------


class AirbenchFlipLoader:
    """The flip of airbench94.py's ``CifarLoader`` with ``altflip=True`` and no translation, transcribed: at epoch 0
    the images are pre-flipped once by a mask (airbench draws it with ``batch_flip_lr``; here it is given), and the
    whole pre-flipped set is mirrored in every odd epoch; then a shuffled order is taken."""

    def __init__(self, images: torch.Tensor, mask: torch.Tensor) -> None:
        self.images, self.mask, self.epoch = images, mask, 0
        self.proc: dict[str, torch.Tensor] = {}

    def epoch_images(self, order: torch.Tensor) -> torch.Tensor:
        if self.epoch == 0:
            self.proc["flip"] = torch.where(self.mask.view(-1, 1, 1, 1), self.images.flip(-1), self.images)
        images = self.proc["flip"]
        if self.epoch % 2 == 1:
            images = images.flip(-1)
        self.epoch += 1
        return images[order]


def test_alternating_flip_is_airbench94s_with_its_half_from_a_hash_of_the_row():
    data = synthetic_set([30, 20, 10, 5])
    ref = AirbenchFlipLoader(data.images, flip_half(torch.arange(len(data)), salt=7))
    aug = Augment(crop_padding=0, flip=True, flip_mode="alternating", flip_salt=7)
    g = torch.Generator().manual_seed(0)
    for epoch in range(5):
        order = torch.randperm(len(data), generator=g)
        ours = torch.cat([b.images for b in iterate_batches(data, order, 16, augment=aug, generator=g, epoch=epoch)])
        want = ref.epoch_images(order).float() / 255.0
        torch.testing.assert_close(ours, (want - 0.5) / 0.25, rtol=0, atol=0)
    # each image is mirrored in exactly one of any two consecutive epochs, and half of them in each epoch
    x = data.images.float()
    e0, e1, e2 = (alternating_flip(x, torch.arange(len(data)), e, salt=7) for e in (0, 1, 2))
    torch.testing.assert_close(e0.flip(-1), e1, rtol=0, atol=0)
    torch.testing.assert_close(e0, e2, rtol=0, atol=0)
    half = flip_half(torch.arange(100_000), salt=7)
    assert abs(half.float().mean().item() - 0.5) < 0.01
    # another salt (the seed) gives another half, unrelated to the first; the same salt gives the same half
    other = flip_half(torch.arange(100_000), salt=8)
    assert abs((half == other).float().mean().item() - 0.5) < 0.01
    assert torch.equal(half, flip_half(torch.arange(100_000), salt=7))
    with pytest.raises(ValueError, match="needs each image's row and the epoch"):
        aug(data.images, g)
    with pytest.raises(ValueError, match="unknown flip mode"):
        Augment(flip_mode="sometimes")


def test_alternating_flip_setting_trains_resumes_and_is_refused_where_it_cannot_apply(tmp_path):
    from longtail.ssl import build_pretraining

    with pytest.raises(LongtailError, match="augment.flip_mode"):
        apply_overrides(RunConfig(), {"augment.flip_mode": "sometimes"})
    splits = Splits(synthetic_set([24, 12, 6, 3]), synthetic_set([5, 5, 5, 5], seed=1, name="test"))
    cfg = apply_overrides(airbench_config(epochs=3), {"augment.flip_mode": "alternating"})
    quiet = dict(splits=splits, progress=False, log=lambda m: None)
    full = train_one(cfg, tmp_path / "full", **quiet)
    train_one(replace(cfg, augment=replace(cfg.augment, flip_mode="random")), tmp_path / "plain", **quiet)
    a, p = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("full", "plain"))
    assert any(not torch.equal(a["model"][k], p["model"][k]) for k in a["model"])  # the setting reaches the batches
    assert train_one(cfg, tmp_path / "cut", stop_after=1, **quiet) == {}
    resumed = train_one(cfg, tmp_path / "cut", **quiet)
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert resumed["per_class"] == full["per_class"]
    fixmatch = apply_overrides(cfg, {"semi.method": "fixmatch"})
    from longtail.experiment import augment_from_config
    with pytest.raises(LongtailError, match="flip_mode=alternating on a FixMatch run"):
        augment_from_config(fixmatch, splits.train)
    from longtail.data.files import FileImageSet
    files = FileImageSet("root", ["a.jpg", "b.jpg"], torch.tensor([0, 1]), ("x", "y"))
    with pytest.raises(LongtailError, match="flipped as they are decoded"):
        augment_from_config(cfg, files)
    with pytest.raises(LongtailError, match="the augment section"):
        build_pretraining("rotation", cfg, None, synthetic_set([4, 4]), torch.device("cpu"))  # type: ignore[arg-type]
