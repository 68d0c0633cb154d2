"""Weight balancing (Alshammari et al., CVPR 2022): its class-balanced loss against a transcription of their code,
the second stage (``longtail decouple --method wb``) on a tiny trained run, and the two-stage recipes.

The loss transcription follows ShadeAlsha/LTR-weight-balancing (e89f292) ``utils/class_balanced_loss.py``
``CB_loss(labels, logits, samples_per_cls, no_of_classes, "softmax", beta=0.9999, gamma=2.0)``: effective-number
weights normalised to sum C, repeated over each row's C entries, and ``F.binary_cross_entropy`` of the softmax
probabilities against one-hot targets with those weights (mean over all B x C entries). Written here in NumPy (and,
for the gradient, in the source's own torch call), sharing no code with longtail.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import longtail.decouple as dc
from longtail import ClassCounts, LongtailError
from longtail.checkpoints import load_checkpoint
from longtail.cli import build_parser, main
from longtail.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from longtail.data.registry import Splits
from longtail.decouple import METHODS, decouple_run, second_stage_for
from longtail.experiment import train_one
from longtail.maxnorm import MaxNorm, row_norms
from longtail.models import make_model
from longtail.recipes import RECIPES
from longtail.storage import digest
from longtail.weight_balancing import softmax_bce
from longtail.weights import class_weights

from conftest import synthetic_set

# the loss against their code ----------------------------------------------------------------------

COUNTS = ClassCounts((500, 100, 20, 5))
TARGETS = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 0])
LOGITS = torch.randn(len(TARGETS), 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).mul(3.0)


def their_cb_softmax(z: np.ndarray, y: np.ndarray, samples_per_cls: list[int], beta: float = 0.9999) -> float:
    """``CB_loss(..., "softmax", beta)``: ``binary_cross_entropy(softmax(z), onehot(y), weight=w[y] per entry)``,
    logs clamped at -100 (PyTorch docs), mean over the B x C entries."""
    c = len(samples_per_cls)
    effective_num = 1.0 - np.power(beta, samples_per_cls)
    w = (1.0 - beta) / np.array(effective_num)
    w = (w / np.sum(w) * c).astype(np.float32)  # their torch.tensor(weights).float()
    onehot = np.eye(c)[y]
    weights = np.repeat(w[y][:, None], c, axis=1)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p = p / p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):  # log(0) = -inf, clamped as PyTorch clamps it
        bce = -(onehot * np.maximum(np.log(p), -100) + (1 - onehot) * np.maximum(np.log(1 - p), -100))
    return float((weights * bce).mean())


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_softmax_bce_matches_their_class_balanced_softmax_loss(scale):
    z = LOGITS * scale
    ours = softmax_bce(z, TARGETS, weight=class_weights("class-balanced", COUNTS, beta=0.9999)).item()
    theirs = their_cb_softmax(z.numpy(), TARGETS.numpy(), list(COUNTS.counts))
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_softmax_bce_gradient_is_that_of_their_torch_call():
    w = class_weights("class-balanced", COUNTS).double()
    a, b = LOGITS.clone().requires_grad_(), LOGITS.clone().requires_grad_()
    softmax_bce(a, TARGETS, weight=w).backward()
    onehot = F.one_hot(TARGETS, 4).double()
    F.binary_cross_entropy(b.softmax(dim=1), onehot, weight=w[TARGETS].unsqueeze(1).repeat(1, 4)).backward()
    assert a.grad is not None and b.grad is not None
    assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-12)


def test_softmax_bce_is_not_a_weighted_cross_entropy_and_runs_under_autocast():
    """Two classes, no weights: BCE of softmax counts the target's log-probability twice (p and 1 - p of the
    other class), averaged over 2 entries: exactly the cross-entropy, a coincidence of C = 2; with C > 2 it differs."""
    z, y = LOGITS[:, :2], TARGETS.clamp(max=1)
    assert softmax_bce(z, y).item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-9)
    assert softmax_bce(LOGITS, TARGETS).item() != pytest.approx(F.cross_entropy(LOGITS, TARGETS).item(), rel=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # F.binary_cross_entropy refuses autocast; ours runs
        assert torch.isfinite(softmax_bce(LOGITS.float().bfloat16(), TARGETS))


# the registry ------------------------------------------------------------------------------------


def test_wb_settings_are_their_demo_s():
    m = METHODS["wb"]
    assert (m.trains, m.sampler, m.maxnorm, m.takes_tau, m.needs_val) == (True, "instance", 0.1, False, False)
    for ds in ("cifar100", "cifar10", "digits", "imagenet-lt", "folder"):
        s = second_stage_for(ds, "wb")
        assert (s.epochs["wb"], s.batch_size, s.lr, s.momentum, s.weight_decay, s.nesterov, s.schedule) == \
            (10, 64, 0.01, 0.9, 0.1, False, "cosine")
        assert "LTR-weight-balancing" in s.source
    assert second_stage_for("cifar100") is second_stage_for("cifar100", "crt")  # cRT's stays the default


def test_unknown_methods_and_methods_without_training_settings_are_clear_errors():
    with pytest.raises(LongtailError, match="unknown decoupling method 'wbb'") as e:
        dc.method_named("wbb")
    assert e.value.fix is not None and e.value.fix.startswith("did you mean wb?")
    assert all(name in e.value.fix for name in METHODS)
    with pytest.raises(LongtailError, match="tau-norm trains nothing"):
        second_stage_for("cifar10", "tau-norm")


def test_the_command_line_offers_every_method():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    decouple = sub.choices["decouple"]  # type: ignore[attr-defined]
    method = next(a for a in decouple._actions if a.dest == "method")
    assert list(method.choices) == list(METHODS)


# the second stage on a tiny trained run ------------------------------------------------------------

TRAIN_COUNTS = [48, 24, 12, 6]


def tiny_config(epochs: int = 3, head: str = "linear") -> RunConfig:
    train = TrainConfig(epochs=epochs, batch_size=16, lr=0.05, device="cpu", checkpoint_every=1, crop_padding=1)
    return RunConfig(recipe="tiny-test", data=DataConfig(dataset="synthetic"),
                     model=ModelConfig(arch="tiny", head=head), train=train)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    splits = Splits(synthetic_set(TRAIN_COUNTS), synthetic_set([10] * 4, seed=1, name="test"))
    run = tmp_path_factory.mktemp("wb") / "run"
    train_one(tiny_config(), run, splits=splits, progress=False)
    return run, splits


def state(folder):
    return load_checkpoint(folder / "checkpoints" / "last.pt")


def test_wb_trains_the_head_under_maxnorm_on_a_frozen_backbone(base, tmp_path):
    run, splits = base
    out = tmp_path / "wb"
    report = decouple_run(run, "wb", out=out, epochs=3, splits=splits, device="cpu")
    before, after = state(run)["model"], state(out)["model"]
    cap = MaxNorm(before["head.weight"].clone(), thresh=0.1).cap  # from the stage-1 head's norms
    assert report["maxnorm"]["cap"] == cap and report["maxnorm"]["thresh"] == 0.1
    norms = row_norms(after["head.weight"])
    assert bool((norms <= cap * (1 + 1e-6)).all())  # projected after the last epoch: the cap holds at the end
    assert report["head_norms"] == pytest.approx(norms.tolist())
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert not torch.equal(before["head.bias"], after["head.bias"])  # the bias is trained too (their fc.bias)
    weights = [k for k in before if k.startswith("backbone.") and not ("running_" in k or "num_batches" in k)]
    assert weights and all(torch.equal(before[k], after[k]) for k in weights)
    cfg = json.loads((out / "config.json").read_text())
    t = cfg["config"]["train"]
    assert (t["epochs"], t["batch_size"], t["lr"], t["weight_decay"], t["momentum"]) == (3, 64, 0.01, 0.1, 0.9)
    assert cfg["decouple"]["maxnorm"] == 0.1 and cfg["decouple"]["settings_from"].startswith("Alshammari")
    assert report["sampler"] == "instance" and "class-balanced softmax" in report["loss"]


def test_wb_stopped_and_resumed_equals_an_uninterrupted_one_and_keeps_the_saved_cap(base, tmp_path):
    run, splits = base
    whole = decouple_run(run, "wb", out=tmp_path / "whole", epochs=3, splits=splits, device="cpu")
    assert decouple_run(run, "wb", out=tmp_path / "parts", epochs=3, splits=splits, device="cpu", stop_after=1) == {}
    saved = state(tmp_path / "parts")
    assert saved["extra"]["maxnorm"] == {"cap": whole["maxnorm"]["cap"], "thresh": 0.1}
    assert bool((row_norms(saved["model"]["head.weight"]) <= whole["maxnorm"]["cap"] * (1 + 1e-6)).all())
    logs: list[str] = []
    parts = decouple_run(run, "wb", out=tmp_path / "parts", epochs=3, splits=splits, device="cpu", log=logs.append)
    assert any("resuming" in line and "from epoch 1/3" in line for line in logs)
    a, b = state(tmp_path / "whole")["model"], state(tmp_path / "parts")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert parts["top1"] == whole["top1"] and parts["maxnorm"] == whole["maxnorm"]


def test_a_resumed_wb_run_projects_onto_the_cap_its_checkpoint_holds(base, tmp_path):
    run, splits = base
    out = tmp_path / "parts"
    decouple_run(run, "wb", out=out, epochs=2, splits=splits, device="cpu", stop_after=1)
    path = out / "checkpoints" / "last.pt"
    st = torch.load(path, weights_only=False)
    del st["checksum"]
    st["extra"]["maxnorm"]["cap"] *= 0.5  # not the cap the source's head would give
    st["checksum"] = digest(st)
    torch.save(st, path)
    report = decouple_run(run, "wb", out=out, epochs=2, splits=splits, device="cpu")
    cap = st["extra"]["maxnorm"]["cap"]
    assert report["maxnorm"]["cap"] == cap
    assert max(report["head_norms"]) == pytest.approx(cap, rel=1e-6)


def test_wb_refuses_a_cosine_head(tmp_path):
    splits = Splits(synthetic_set(TRAIN_COUNTS), synthetic_set([2] * 4, seed=1, name="test"))
    model = make_model("tiny", 4, head="cosine")
    ctx = dc.MethodContext(model, tiny_config(head="cosine"), splits, splits.train.class_counts(), torch.device("cpu"))
    with pytest.raises(LongtailError, match="linear classifier") as e:
        dc.METHODS["wb"].prepare(ctx)  # type: ignore[misc]
    assert e.value.fix is not None and "model.head=linear" in e.value.fix


@pytest.mark.slow
def test_decouple_wb_from_the_command_line_on_digits(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "wb"
    assert main(["train", "quickstart", "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    assert main(["decouple", str(run), "--method", "wb", "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    assert "quickstart + wb" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "wb" and len(report["head_norms"]) == 10
    assert max(report["head_norms"]) <= report["maxnorm"]["cap"] * (1 + 1e-6)


# the recipes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10-lt-wb", "cifar100-lt-wb"])
def test_wb_recipes_are_their_demo_s_first_stage_on_resnet32(name):
    r = RECIPES[name]
    t = r.config.train
    assert (t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay, t.schedule, t.warmup_epochs) == \
        (320, 64, 0.01, 0.9, 5e-3, "cosine", 0)
    assert (t.sampler, t.weighting, t.crop_padding, t.flip, r.config.loss.name) == ("instance", "none", 4, True, "ce")
    assert (r.config.model.arch, r.config.model.head, r.config.data.imbalance_ratio) == ("resnet32", "linear", 100.0)
    assert r.decouple == "wb" and r.decouple_epochs is None
    if name.startswith("cifar100"):
        assert "53.35" in r.published and "ResNet-34" in r.published


@pytest.mark.slow
def test_wb_recipe_runs_both_stages_on_a_stand_in(tmp_path):
    """cifar100-lt-wb as `longtail train` chains it (stage 1, then its decouple step), one epoch each, on 8-pixel
    synthetic CIFAR-100-shaped data."""
    r = RECIPES["cifar100-lt-wb"]
    cfg = replace(r.config, train=replace(r.config.train, epochs=1, device="cpu"))
    splits = Splits(synthetic_set([4] + [1 + c % 3 for c in range(1, 100)], size=8, name="train"),
                    synthetic_set([1] * 100, size=8, seed=1, name="test"))
    run = tmp_path / "run"
    train_one(cfg, run, splits=splits, progress=False)
    assert r.decouple is not None
    report = decouple_run(run, r.decouple, epochs=1, splits=splits, device="cpu")
    assert report["method"] == "wb" and max(report["head_norms"]) <= report["maxnorm"]["cap"] * (1 + 1e-6)
    assert (run / "decouple-wb" / "report.json").is_file()
