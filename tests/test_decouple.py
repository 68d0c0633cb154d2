"""Decoupling (cRT, tau-norm, LWS) and post-hoc logit adjustment on a tiny trained run."""

import json

import pytest
import torch

import longtail.decouple as dc
from longtail import ClassCounts, LongtailError
from longtail.checkpoints import load_checkpoint, model_from_checkpoint, save_checkpoint
from longtail.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from longtail.data.registry import Splits
from longtail.decouple import TAU_GRID, choose_tau, decouple_run
from longtail.experiment import evaluate_checkpoint, train_one
from longtail.models import LinearHead, make_model
from longtail.models.wrappers import LogitAdjustedHead, ScaledHead, fold_head, head_wrappers, tau_normalize

from conftest import synthetic_set

COUNTS = [48, 24, 12, 6]


def tiny_config(epochs=3) -> RunConfig:
    return RunConfig(
        recipe="tiny-test",
        data=DataConfig(dataset="synthetic"),
        model=ModelConfig(arch="tiny"),
        train=TrainConfig(epochs=epochs, batch_size=16, lr=0.05, device="cpu", checkpoint_every=1, crop_padding=1),
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 3-epoch run on long-tailed synthetic data with a balanced validation split of its own."""
    splits = Splits(synthetic_set(COUNTS), synthetic_set([10] * 4, seed=1, name="test"),
                    synthetic_set([8] * 4, seed=2, name="val"))
    run = tmp_path_factory.mktemp("decouple") / "run"
    train_one(tiny_config(), run, splits=splits, progress=False)
    return run, splits


def model_state(path):
    return load_checkpoint(path / "checkpoints" / "last.pt")["model"]


def assert_backbone_identical(run, out):
    a, b = model_state(run), model_state(out)
    keys = [k for k in a if k.startswith("backbone.")]
    assert any("running_mean" in k for k in keys) and any("num_batches_tracked" in k for k in keys)
    for k in keys:
        assert torch.equal(a[k], b[k]), k


def read_report(out):
    report = json.loads((out / "report.json").read_text())
    for key in ("top1", "many", "medium", "few", "method", "tau", "source_checkpoint", "base"):
        assert key in report, key
    assert (out / "report.md").is_file() and (out / "per_class_accuracy.png").is_file()
    return report


# cRT ------------------------------------------------------------------------------------------
def test_crt_with_frozen_bn_keeps_the_backbone_bit_identical_and_retrains_the_head(base, tmp_path):
    run, splits = base
    out = tmp_path / "crt"
    result = decouple_run(run, "crt", out=out, epochs=2, splits=splits, device="cpu", bn="frozen")
    assert_backbone_identical(run, out)  # parameters and BatchNorm buffers
    a, b = model_state(run), model_state(out)
    assert not torch.equal(a["head.weight"], b["head.weight"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all(r["steps"] > 0 for r in rows)
    report = read_report(out)
    assert report["method"] == "crt" and report["epochs"] == 2 and report["tau"] is None
    assert report["train_counts"] == COUNTS  # shot groups from the training counts
    assert result["top1"] == report["top1"]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["extra"]["decouple"]["head_wrappers"] == []


# tau-norm -------------------------------------------------------------------------------------
def test_tau_normalize_formula_and_tau_zero_identity():
    torch.manual_seed(0)
    head, x = LinearHead(16, 4), torch.randn(5, 16)
    same = tau_normalize(head, 0.0)
    assert torch.equal(same.weight, head.weight) and torch.equal(same.bias, torch.zeros(4))
    with torch.no_grad():
        assert torch.allclose(same(x), head(x) - head.bias, atol=1e-6)  # bias dropped, as in Kang et al.
        head.bias.zero_()
        assert torch.equal(tau_normalize(head, 0.0)(x), head(x))  # tau 0 is the identity
    unit = tau_normalize(head, 1.0)
    assert torch.allclose(unit.weight.norm(dim=1), torch.ones(4), atol=1e-6)
    half = tau_normalize(head, 0.5)
    assert torch.allclose(half.weight, head.weight / head.weight.norm(dim=1, keepdim=True) ** 0.5)


def test_tau_norm_with_explicit_tau_zero_keeps_the_weights(base, tmp_path):
    run, splits = base
    out = tmp_path / "tn0"
    report = decouple_run(run, "tau-norm", out=out, tau=0.0, splits=splits, device="cpu")
    assert report["tau"] == 0.0 and report["tau_source"] == "explicit" and "tau_grid" not in report
    a, b = model_state(run), model_state(out)
    assert torch.equal(a["head.weight"], b["head.weight"]) and not b["head.bias"].any()
    assert_backbone_identical(run, out)


def test_choose_tau_picks_the_best_balanced_accuracy():
    labels = torch.tensor([0, 1, 2, 3] * 3)
    right = torch.nn.functional.one_hot(labels, 4).float()
    wrong = torch.zeros(12, 4)
    wrong[:, 0] = 1  # always class 0: balanced accuracy 25 %
    tau, table = choose_tau(lambda t: right if abs(t - 0.7) < 1e-9 else wrong, labels, ClassCounts((3, 3, 3, 3)))
    assert tau == 0.7 and len(table) == len(TAU_GRID) == 21
    assert TAU_GRID[0] == 0.0 and TAU_GRID[-1] == 2.0
    assert table[7]["val_balanced_accuracy"] == 100.0 and table[0]["val_balanced_accuracy"] == 25.0
    tau, _ = choose_tau(lambda t: right, labels, ClassCounts((3, 3, 3, 3)))
    assert tau == 0.0  # ties go to the smallest change


def test_tau_is_chosen_on_the_validation_split_never_on_the_test_set(base, tmp_path, monkeypatch):
    run, splits = base
    seen = []

    def spy(logits_at, labels, counts, grid=TAU_GRID):
        seen.append(labels.clone())
        return choose_tau(logits_at, labels, counts, grid)

    monkeypatch.setattr(dc, "choose_tau", spy)
    first = decouple_run(run, "tau-norm", out=tmp_path / "a", splits=splits, device="cpu")
    # The same run with a very different test set (only the rarest class): tau must not move.
    other = Splits(splits.train, synthetic_set([0, 0, 0, 30], seed=5, name="test"), splits.val)
    second = decouple_run(run, "tau-norm", out=tmp_path / "b", splits=other, device="cpu")
    assert len(seen) == 2 and all(torch.equal(s, splits.val.labels) for s in seen)
    assert first["tau"] == second["tau"] and first["tau_source"] == "validation"
    grid = first["tau_grid"]
    assert [r["tau"] for r in grid] == list(TAU_GRID)
    best = max(r["val_balanced_accuracy"] for r in grid)
    assert first["tau"] == min(r["tau"] for r in grid if r["val_balanced_accuracy"] == best)
    assert read_report(tmp_path / "a")["tau"] == first["tau"]


def test_tau_norm_without_a_validation_split_says_how_to_get_one(base, tmp_path):
    run, splits = base
    with pytest.raises(LongtailError, match="--val-per-class") as err:
        decouple_run(run, "tau-norm", out=tmp_path / "x", splits=Splits(splits.train, splits.test), device="cpu")
    assert "--tau" in str(err.value)


# LWS ------------------------------------------------------------------------------------------
def test_scaled_head_starts_at_one_and_folds_exactly():
    torch.manual_seed(0)
    inner, x = LinearHead(16, 4), torch.randn(5, 16)
    head = ScaledHead(inner, 4)
    assert torch.equal(head.scale.detach(), torch.ones(4))
    with torch.no_grad():
        assert torch.equal(head(x), inner(x))
        head.scale.copy_(torch.tensor([0.5, 1.0, 2.0, 3.0]))
        folded = fold_head(head)
        assert type(folded) is LinearHead and torch.allclose(folded(x), head(x), atol=1e-5)


def test_lws_learns_scales_on_a_frozen_backbone_and_head(base, tmp_path):
    run, splits = base
    out = tmp_path / "lws"
    report = decouple_run(run, "lws", out=out, epochs=2, splits=splits, device="cpu", bn="frozen")
    assert_backbone_identical(run, out)
    scales = torch.tensor(report["lws_scales"])
    assert scales.shape == (4,) and not torch.equal(scales, torch.ones(4))  # trained away from 1
    a, b = model_state(run), model_state(out)  # saved folded: (f_c w_c, f_c b_c)
    assert torch.allclose(b["head.weight"], scales[:, None] * a["head.weight"], atol=1e-6)
    assert torch.allclose(b["head.bias"], scales * a["head.bias"], atol=1e-6)
    assert read_report(out)["method"] == "lws"


# logit adjustment -------------------------------------------------------------------------------
def test_logit_adjusted_head_is_the_identity_for_uniform_counts():
    torch.manual_seed(0)
    inner, x = LinearHead(16, 4), torch.randn(5, 16)
    head = LogitAdjustedHead.for_counts(inner, ClassCounts((7, 7, 7, 7)), tau=1.0)
    with torch.no_grad():
        z, adj = inner(x), head(x)
        assert torch.allclose(adj.softmax(1), z.softmax(1), atol=1e-6)  # z - log(1/4): a constant shift
        assert torch.equal(adj.argmax(1), z.argmax(1))
        skewed = LogitAdjustedHead.for_counts(inner, ClassCounts((40, 20, 10, 5)), tau=1.5)
        expected = z - 1.5 * torch.log(torch.tensor([40, 20, 10, 5]) / 75.0)
        assert torch.allclose(skewed(x), expected, atol=1e-5)
        assert torch.allclose(fold_head(skewed)(x), expected, atol=1e-5)


def test_logit_adjust_with_uniform_training_counts_changes_nothing(base, tmp_path):
    run, splits = base
    balanced = Splits(synthetic_set([20] * 4, seed=3), splits.test)  # no val: Menon's default tau = 1
    report = decouple_run(run, "logit-adjust", out=tmp_path / "la", splits=balanced, device="cpu")
    assert report["tau"] == 1.0 and report["tau_source"].startswith("default")
    assert report["top1"] == report["base"]["top1"]
    assert report["balanced_accuracy"] == report["base"]["balanced_accuracy"]


def test_logit_adjust_default_folder_and_the_evaluate_path(base, monkeypatch):
    run, splits = base
    report = decouple_run(run, "logit-adjust", splits=splits, device="cpu")
    out = run / "decouple-logit-adjust"
    assert report["out"] == str(out) and report["tau_source"] == "validation"
    assert read_report(out)["tau"] == report["tau"]
    assert_backbone_identical(run, out)
    # Saved as a plain linear head: `longtail evaluate` reads it like any run and agrees.
    import longtail.experiment as ex

    monkeypatch.setattr(ex, "load_splits", lambda cfg: splits)
    again = evaluate_checkpoint(out, device="cpu")
    assert again["per_class"] == report["per_class"]


# checkpoints and arguments -------------------------------------------------------------------
def test_unfoldable_cosine_wrappers_are_saved_and_rebuilt(tmp_path):
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(arch="tiny", head="cosine"))
    model = make_model("tiny", 4, head="cosine")
    model.reset_head(LogitAdjustedHead.for_counts(ScaledHead(model.head, 4), ClassCounts((8, 4, 2, 1)), 1.0))
    with torch.no_grad():
        model.head.inner.scale.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    model.reset_head(fold_head(model.head))  # a cosine head has no bias to fold into: stays wrapped
    assert head_wrappers(model.head) == ["scaled", "logit-adjusted"]
    path = tmp_path / "c.pt"
    save_checkpoint(path, config=cfg, model=model, optimizer=None, next_epoch=1, records=[],
                    extra={"decouple": {"head_wrappers": head_wrappers(model.head)}})
    again = model_from_checkpoint(load_checkpoint(path), 4, 3, str(path))
    x = torch.randn(2, 3, 8, 8)
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_tau_norm_on_a_cosine_head_changes_no_logit():
    torch.manual_seed(0)
    model = make_model("tiny", 4, head="cosine")
    f = torch.randn(3, model.num_features)
    with torch.no_grad():
        assert torch.allclose(tau_normalize(model.head, 1.7)(f), model.head(f), atol=1e-6)


def test_bad_arguments(base, tmp_path):
    run, splits = base
    with pytest.raises(LongtailError, match="unknown decoupling method") as err:
        decouple_run(run, "retrain", splits=splits, device="cpu")
    assert all(m in str(err.value) for m in ("crt", "tau-norm", "lws", "logit-adjust"))
    with pytest.raises(LongtailError, match="--epochs"):
        decouple_run(run, "tau-norm", epochs=3, splits=splits, device="cpu")
    with pytest.raises(LongtailError, match="--epochs must be >= 1"):
        decouple_run(run, "crt", epochs=0, splits=splits, device="cpu")
    with pytest.raises(LongtailError, match="--tau"):
        decouple_run(run, "crt", tau=1.0, splits=splits, device="cpu")
    with pytest.raises(LongtailError, match="finite"):
        decouple_run(run, "logit-adjust", tau=-1.0, splits=splits, device="cpu")
    with pytest.raises(LongtailError, match="is the run being decoupled"):
        decouple_run(run, "logit-adjust", out=run, splits=splits, device="cpu")
    with pytest.raises(LongtailError, match="no checkpoints"):
        decouple_run(tmp_path, "crt", splits=splits, device="cpu")


# through the run driver: resumable, a finished result re-evaluated, other settings refused ---------------


def test_crt_stopped_and_resumed_equals_an_uninterrupted_one(base, tmp_path):
    run, splits = base
    whole = decouple_run(run, "crt", out=tmp_path / "whole", epochs=3, splits=splits, device="cpu")
    assert decouple_run(run, "crt", out=tmp_path / "parts", epochs=3, splits=splits, device="cpu",
                        stop_after=1) == {}
    assert (tmp_path / "parts" / "checkpoints" / "last.pt").is_file()
    logs = []
    parts = decouple_run(run, "crt", out=tmp_path / "parts", epochs=3, splits=splits, device="cpu", log=logs.append)
    assert any("resuming" in line and "from epoch 1/3" in line for line in logs)
    a, b = model_state(tmp_path / "whole"), model_state(tmp_path / "parts")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert parts["top1"] == whole["top1"] and parts["base"] == whole["base"]
    rows = [json.loads(x) for x in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]


def test_a_finished_decoupling_is_evaluated_again_and_other_settings_are_refused(base, tmp_path):
    run, splits = base
    out = tmp_path / "lws"
    first = decouple_run(run, "lws", out=out, epochs=2, splits=splits, device="cpu")
    again = decouple_run(run, "lws", out=out, epochs=2, splits=splits, device="cpu")
    assert again["top1"] == first["top1"] and again["lws_scales"] == first["lws_scales"]
    with pytest.raises(LongtailError, match="other settings") as e:
        decouple_run(run, "lws", out=out, epochs=3, splits=splits, device="cpu")
    assert "--restart" in e.value.fix
    redone = decouple_run(run, "lws", out=out, epochs=3, splits=splits, device="cpu", restart=True)
    assert redone["epochs"] == 3


def test_a_finished_crt_with_bn_in_train_mode_is_evaluated_again_as_it_was_saved(base, tmp_path):
    """The default BatchNorm mode moves the backbone's running statistics while the head trains; evaluating the
    finished result again must use those, not the base run's (it once kept only the head, and re-saved that)."""
    run, splits = base
    out = tmp_path / "crt"
    first = decouple_run(run, "crt", out=out, epochs=2, splits=splits, device="cpu")
    saved = model_state(out)
    base_state = model_state(run)
    moved = [k for k in saved if "running_mean" in k and not torch.equal(saved[k], base_state[k])]
    assert moved  # the stage did move BatchNorm statistics
    again = decouple_run(run, "crt", out=out, epochs=2, splits=splits, device="cpu")
    after = model_state(out)
    assert all(torch.equal(saved[k], after[k]) for k in saved)
    assert again["per_class"] == first["per_class"] and again["top1"] == first["top1"]


def test_a_changed_base_run_is_another_source(base, tmp_path):
    run, splits = base
    copy = tmp_path / "base"
    train_one(tiny_config(epochs=2), copy, splits=splits, progress=False)
    out = tmp_path / "out"
    decouple_run(copy, "tau-norm", out=out, tau=1.0, splits=splits, device="cpu")
    train_one(tiny_config(epochs=2), copy, splits=splits, progress=False, restart=True)  # same settings...
    state = load_checkpoint(copy / "checkpoints" / "last.pt")
    state["model"]["head.bias"] += 1.0  # ...other weights
    save_checkpoint(copy / "checkpoints" / "last.pt", config=RunConfig.from_dict(state["config"]),
                    model=_with_state(state["model"]), optimizer=None, next_epoch=state["next_epoch"], records=[])
    with pytest.raises(LongtailError, match="other settings"):
        decouple_run(copy, "tau-norm", out=out, tau=1.0, splits=splits, device="cpu")


def _with_state(sd):
    model = make_model("tiny", len(COUNTS))
    model.load_state_dict(sd)
    return model


# the second stage's settings, as the sources give them ---------------------------------------------


def test_by_default_bn_follows_the_class_balanced_batches_and_weights_stay(base, tmp_path):
    """Kang et al.'s run_networks.py and BagofTricks-LT keep the fixed feature model in train mode."""
    run, splits = base
    out = tmp_path / "crt-bn"
    report = decouple_run(run, "crt", out=out, epochs=2, splits=splits, device="cpu")
    a, b = model_state(run), model_state(out)
    backbone = [k for k in a if k.startswith("backbone.")]
    stats = [k for k in backbone if "running_" in k]
    assert stats and all(not torch.equal(a[k], b[k]) for k in stats)  # re-estimated
    weights = [k for k in backbone if not ("running_" in k or "num_batches" in k)]
    assert weights and all(torch.equal(a[k], b[k]) for k in weights)  # never trained
    assert report["bn"] == "train" and report["nesterov"] is True and report["schedule"] == "warmup-step"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["train"]["batch_size"] == 128 and cfg["config"]["train"]["weight_decay"] == 5e-4
    assert cfg["decouple"]["settings_from"].startswith("BagofTricks-LT")


def test_second_stage_settings_per_data_set_and_their_schedules():
    small, inet, inat = dc.second_stage_for("cifar100"), dc.second_stage_for("imagenet-lt"), \
        dc.second_stage_for("inat2018")
    assert (small.epochs, small.batch_size, small.lr, small.weight_decay) == ({"crt": 30, "lws": 30}, 128, 0.1, 5e-4)
    assert (inet.epochs, inet.batch_size, inet.lr, inet.weight_decay) == ({"crt": 10, "lws": 5}, 512, 0.2, 5e-4)
    assert (inat.epochs["crt"], inat.weight_decay) == (30, 1e-4)
    assert dc.second_stage_for("folder") is inet
    lr = small.lr_at(30)  # BagofTricks-LT's WarmupMultiStepLR: from lr/3 over 5 epochs, x0.1 at 10 and 20
    assert [round(lr(e), 6) for e in (0, 4, 5, 9, 10, 19, 20, 29)] == \
        [0.033333, 0.086667, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    cos = inet.lr_at(10)
    assert cos(0) == 0.2 and 0 < cos(9) < 0.01


def test_unknown_bn_mode(base, tmp_path):
    run, splits = base
    with pytest.raises(LongtailError, match="BatchNorm mode 'eval'"):
        decouple_run(run, "crt", out=tmp_path / "x", splits=splits, device="cpu", bn="eval")
