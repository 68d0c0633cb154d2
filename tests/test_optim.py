"""longtail.optim: SAM / ASAM steps against hand-computed ones, MaxNorm and the EMA of the weights, resuming,
evaluation from the EMA, and the settings that cannot apply."""

from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from longtail import LongtailError
from longtail.checkpoints import evaluated_weights, load_checkpoint, load_pretrained_backbone
from longtail.config import DataConfig, ModelConfig, OptimConfig, RunConfig, SemiConfig, TrainConfig
from longtail.data.registry import Splits
from longtail.experiment import evaluate_checkpoint, evaluate_model, train_one
from longtail.graphs import GraphStep, graph_unsupported_reason
from longtail.maxnorm import row_norms
from longtail.models import Classifier, build_model
from longtail.optim import SAM, RunOptimizer, evaluated_model, make_optimizer, optim_settings
from longtail.tasks import SupervisedTask

from conftest import synthetic_set


def tiny_config(epochs=2, optim: OptimConfig | None = None, **train) -> RunConfig:
    return RunConfig(
        recipe="optim-test", data=DataConfig(dataset="synthetic"), model=ModelConfig(arch="tiny"),
        train=TrainConfig(**{**dict(epochs=epochs, batch_size=16, lr=0.05, device="cpu", checkpoint_every=1,
                                    crop_padding=1), **train}),
        optim=optim or OptimConfig())


@pytest.fixture
def splits():
    return Splits(synthetic_set([24, 12, 6, 3]), synthetic_set([5, 5, 5, 5], seed=1, name="test"))


class Net(nn.Module):
    """Linear -> BatchNorm -> ReLU -> linear head: a Classifier-shaped model with BatchNorm statistics."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU())
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.backbone(x))


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)


def grads_at(model, params, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return [p.grad.detach().clone() for p in params]


def closure_for(model, opt, x, y):
    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("name", ["sam", "asam"])
def test_sam_and_asam_steps_equal_a_hand_computed_step(name):
    rho, lr, wd = (0.05 if name == "sam" else 2.0), 0.1, 1e-3
    cfg = tiny_config(optim=OptimConfig(name=name), lr=lr, momentum=0.9, weight_decay=wd)
    model, ref = Net(), Net()
    x, y = data()
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, SAM) and opt.rho == rho and opt.adaptive == (name == "asam")
    opt.step(closure_for(model, opt, x, y))

    # by hand: g at w; e = rho g / ||g|| (sam) or rho w^2 g / ||w g|| (asam); g' at w + e; SGD from w with g'
    params = list(ref.parameters())
    w = [p.detach().clone() for p in params]
    g = grads_at(ref, params, x, y)
    stats = {k: v.clone() for k, v in ref.state_dict().items() if "running" in k or "tracked" in k}
    if name == "sam":
        norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
        e = [rho * gi / norm for gi in g]
    else:
        norm = torch.sqrt(sum(((wi.abs() * gi) ** 2).sum() for wi, gi in zip(w, g)))
        e = [rho * wi * wi * gi / norm for wi, gi in zip(w, g)]
    with torch.no_grad():
        for p, ei in zip(params, e):
            p.add_(ei)
    g2 = grads_at(ref, params, x, y)
    expected = [wi - lr * (gi + wd * wi) for wi, gi in zip(w, g2)]  # SGD's first step: buf = g + wd w
    for p, want in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6)
    # BatchNorm statistics: those of the first, unperturbed pass only (one update per step)
    for k, v in stats.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert not torch.equal(model.backbone[1].running_mean, torch.zeros(6))


def test_sam_rho_setting_and_defaults():
    opt = make_optimizer(Net(), tiny_config(optim=OptimConfig(name="asam", sam_rho=0.5)))
    assert isinstance(opt, SAM) and opt.rho == 0.5 and opt.adaptive
    plain = make_optimizer(Net(), tiny_config())
    assert type(plain) is torch.optim.SGD  # every optim setting off: exactly SGD (the graph engine's)


def test_maxnorm_caps_every_row_after_each_step():
    model = Net()
    with torch.no_grad():
        model.head.weight.mul_(torch.tensor([[3.0], [1.0], [0.5]]))  # uneven norms
    start = row_norms(model.head.weight)
    t = 0.25
    opt = make_optimizer(model, tiny_config(optim=OptimConfig(maxnorm=t), lr=2.0, momentum=0.0))
    assert isinstance(opt, RunOptimizer)
    x, y = data()
    for _ in range(5):
        opt.step(closure_for(model, opt, x, y))
        cap = float(start.min() + t * (start.max() - start.min()))
        assert opt.maxnorm is not None and opt.maxnorm.cap == pytest.approx(cap)
        assert bool((row_norms(model.head.weight) <= cap * (1 + 1e-6)).all())
    assert opt.state_dict()["maxnorm"]["cap"] == opt.maxnorm.cap
    # a resumed optimizer takes the cap of the checkpoint, not one read from the weights it resumes with
    with torch.no_grad():
        model.head.weight.mul_(0.5)  # weights whose own cap would be half the saved one
    again = make_optimizer(model, tiny_config(optim=OptimConfig(maxnorm=t), lr=2.0, momentum=0.0))
    again.load_state_dict(opt.state_dict())
    assert again.maxnorm.cap == opt.maxnorm.cap  # type: ignore[attr-defined]


def test_ema_equals_the_formula_after_k_steps():
    d = 0.8
    model = Net()
    opt = make_optimizer(model, tiny_config(optim=OptimConfig(ema=d), lr=0.5, momentum=0.9))
    assert evaluated_model(model, opt) is model  # not started: the model itself
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    for k in range(4):
        x, y = data(seed=k)
        opt.step(closure_for(model, opt, x, y))
        for n, p in model.named_parameters():
            expected[n] = d * expected[n] + (1 - d) * p.detach()
    averaged = evaluated_model(model, opt)
    assert averaged is not model and not averaged.training
    for n, p in averaged.named_parameters():
        torch.testing.assert_close(p, expected[n], rtol=1e-6, atol=1e-7)
        assert not torch.equal(p, dict(model.named_parameters())[n])
    for (n, b), (_, mine) in zip(averaged.named_buffers(), model.named_buffers()):
        assert torch.equal(b, mine), n  # BatchNorm statistics copied, as USB's EMA
    assert opt.state_dict()["ema"]["decay"] == d


@pytest.mark.slow
def test_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path, splits):
    cfg = tiny_config(epochs=2, optim=OptimConfig(name="sam", maxnorm=0.2, ema=0.9))
    full = train_one(cfg, tmp_path / "full", splits=splits, progress=False, log=lambda m: None)
    assert train_one(cfg, tmp_path / "cut", splits=splits, progress=False, stop_after=1, log=lambda m: None) == {}
    resumed = train_one(cfg, tmp_path / "cut", splits=splits, progress=False, log=lambda m: None)
    a, b = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("full", "cut"))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["optimizer"]["ema"]["weights"]:
        assert torch.equal(a["optimizer"]["ema"]["weights"][k], b["optimizer"]["ema"]["weights"][k]), k
    assert a["optimizer"]["maxnorm"] == b["optimizer"]["maxnorm"]
    assert bool((row_norms(a["model"]["head.weight"]) <= a["optimizer"]["maxnorm"]["cap"] * (1 + 1e-6)).all())
    assert resumed["per_class"] == full["per_class"]


@pytest.mark.slow
def test_the_report_evaluates_the_ema(tmp_path, splits, monkeypatch):
    cfg = tiny_config(epochs=2, optim=OptimConfig(ema=0.9), eval_every=1)
    val = synthetic_set([3, 3, 3, 3], seed=2, name="val")
    result = train_one(cfg, tmp_path / "run", splits=replace(splits, val=val), progress=False, log=lambda m: None)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    ema = evaluated_weights(state)
    assert ema is not state["model"] and any(not torch.equal(ema[k], state["model"][k]) for k in ema)
    model = build_model(cfg, 4, 3)
    model.load_state_dict(ema)
    summary = evaluate_model(model, splits.test, splits.train.class_counts(), torch.device("cpu"), "auto")
    assert result["per_class"] == summary["per_class"] and result["top1"] == summary["top1"]
    assert result["evaluated_weights"] == "EMA of the weights, decay 0.9"
    # best-val.pt holds the network that was validated: the EMA of that epoch
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best-val.pt")
    assert set(best["model"]) == set(ema) and best["optimizer"] is None
    # `longtail evaluate` reads the EMA too
    monkeypatch.setattr("longtail.experiment.load_splits", lambda data: splits)
    again = evaluate_checkpoint(tmp_path / "run", write=False)
    assert again["per_class"] == result["per_class"] and "evaluated_weights" in again
    # and a run initialised from this one (train.init_from) starts from the EMA's backbone
    fresh = build_model(cfg, 4, 3)
    load_pretrained_backbone(fresh, tmp_path / "run", log=None)
    for k, v in fresh.backbone.state_dict().items():
        assert torch.equal(v, ema[f"backbone.{k}"]), k


def test_settings_that_cannot_apply_are_refused(tmp_path):
    model = Net()
    graph_only = r"train.engine=graph captures SGD \(or SAM\) steps, not optim.ema=0.9(\n|$)"
    with pytest.raises(LongtailError, match=graph_only):
        make_optimizer(model, tiny_config(optim=OptimConfig(name="sam", sam_rho_late=0.1, ema=0.9), engine="graph"))
    # SAM alone is graphed (longtail.graphs.GraphStep; tests/test_graphs.py)
    assert isinstance(make_optimizer(model, tiny_config(optim=OptimConfig(name="asam", sam_rho_late=1.0),
                                                        engine="graph")), SAM)
    with pytest.raises(LongtailError, match="optim.sam_rho is SAM's radius"):
        make_optimizer(model, tiny_config(optim=OptimConfig(sam_rho=0.1)))
    cosine = replace(tiny_config(optim=OptimConfig(maxnorm=0.1)), model=ModelConfig(arch="tiny", head="cosine"))
    with pytest.raises(LongtailError, match="cosine head"):
        make_optimizer(model, cosine)
    with pytest.raises(LongtailError, match="distribution alignment twice"):
        make_optimizer(model, replace(tiny_config(optim=OptimConfig(name="asam")),
                                      semi=SemiConfig(method="fixmatch", alignment="da")))
    with pytest.raises(LongtailError, match="classifier head with a weight"):
        make_optimizer(nn.Sequential(nn.Linear(3, 2)), tiny_config(optim=OptimConfig(maxnorm=0.1)))
    plain = make_optimizer(model, tiny_config()).state_dict()  # a checkpoint of a run without the EMA
    with pytest.raises(LongtailError, match="holds no EMA"):
        make_optimizer(model, tiny_config(optim=OptimConfig(ema=0.9))).load_state_dict(plain)

    # the graph engine: auto steps eagerly (the reason is given), graph refuses clearly
    train = synthetic_set([4, 4])
    task = SupervisedTask(train, nn.CrossEntropyLoss(), batch_size=4)
    net = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)), nn.Linear(4, 2))
    assert graph_unsupported_reason(task, make_optimizer(net, tiny_config(optim=OptimConfig(name="sam")))) is None
    for optim, words in ((OptimConfig(name="sam", maxnorm=0.1), "MaxNorm and the EMA"),
                         (OptimConfig(ema=0.9), "MaxNorm and the EMA")):
        opt = make_optimizer(net, tiny_config(optim=optim))
        assert words in (graph_unsupported_reason(task, opt) or "")
        with pytest.raises(LongtailError, match=f"train.engine=graph cannot run this training: .*{words}"):
            GraphStep(net, task, opt, torch.device("cpu"), "auto")  # type: ignore[arg-type]


def test_stacked_seeds_and_pretraining_refuse_optim_settings():
    from longtail.ssl import build_pretraining
    from longtail.stacked import check_stackable, stack_unsupported_reason

    cfg = tiny_config(optim=OptimConfig(ema=0.999))
    assert "optim.ema=0.999" in (stack_unsupported_reason(cfg) or "")  # auto: the seeds train one after another
    with pytest.raises(LongtailError, match="seeds cannot be trained stacked: optim.ema=0.999"):
        check_stackable(cfg)
    with pytest.raises(LongtailError, match="optim.ema=0.999 are for supervised training"):
        build_pretraining("rotation", cfg, None, synthetic_set([4, 4]), torch.device("cpu"))  # type: ignore[arg-type]


def test_decay_bn_bias_false_leaves_biases_and_batchnorm_out_of_weight_decay():
    """USB's bn_wd_skip: the weights of convolutions and linear layers decay, biases and BatchNorm do not."""
    from longtail.loop import make_sgd
    from longtail.models import make_model

    model = make_model("resnet8", 4)
    plain = make_sgd(model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["weight_decay"] == 5e-4
    split = make_sgd(model, lr=0.1, momentum=0.9, weight_decay=5e-4, decay_bn_bias=False)
    decayed, free = split.param_groups
    assert decayed["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() > 1 for p in decayed["params"]) and all(p.dim() == 1 for p in free["params"])
    assert any("bn" in names[id(p)] for p in free["params"]) and any(n.endswith("bias") for n in
                                                                     (names[id(p)] for p in free["params"]))
    assert len(decayed["params"]) + len(free["params"]) == len(list(model.parameters()))
    cfg = RunConfig(optim=OptimConfig(decay_bn_bias=False))
    assert "optim.decay_bn_bias=false" in optim_settings(cfg)
    assert len(make_optimizer(model, cfg).param_groups) == 2
