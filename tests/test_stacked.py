"""Several seeds trained at once as one stacked network: exact equivalence with sequential runs."""

import json
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from longtail import LongtailError
from longtail.checkpoints import load_checkpoint
from longtail.config import DataConfig, LossConfig, MFWConfig, ModelConfig, RunConfig, TrainConfig
from longtail.data.augment import Augment
from longtail.data.registry import Splits
from longtail.experiment import train_one
from longtail.loop import epoch_generator
from longtail.losses import make_loss
from longtail.models import MODELS, Classifier, make_model
from longtail.models.resnet_cifar import ResNetCifar
from longtail.samplers import make_sampler
from longtail.stacked import (
    StackedTask,
    check_stackable,
    stack,
    stack_images,
    stack_optimizer_state,
    stack_unsupported_reason,
    stacked_resume_problem,
    train_stacked,
    unstack,
    unstack_optimizer_state,
)
from longtail.tasks import SupervisedTask
from longtail.weights import make_weighting

from conftest import synthetic_set

ARCH = "resnet-tiny-test"  # ResNetCifar with one block per stage: both zero-pad shortcuts, 4 -> 8 -> 16 channels


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def tiny_resnet(monkeypatch):
    monkeypatch.setitem(MODELS, ARCH, lambda c: ResNetCifar(1, in_channels=c, widths=(4, 8, 16)))


def members(head="linear", arch=ARCH, seeds=(0, 1, 2)):
    out = []
    for s in seeds:
        torch.manual_seed(s)
        out.append(make_model(arch, 4, head=head, in_channels=3))
    return out


def warm_up_bn(models, seed=10):
    """Move BatchNorm running statistics away from their initial values."""
    g = torch.Generator().manual_seed(seed)
    for m in models:
        m.train()
        with torch.no_grad():
            m(torch.randn(6, 3, 8, 8, generator=g) * 2 + 0.5)


@pytest.mark.parametrize("head,arch", [("linear", ARCH), ("cosine", ARCH), ("linear", "tiny")])
def test_stack_unstack_round_trip_is_bit_identical(head, arch):
    models = members(head, arch)
    warm_up_bn(models)
    stacked = stack(models)
    assert len({p.data_ptr() for p in stacked.parameters()}) == len(list(stacked.parameters()))  # nothing shared
    back = unstack(stacked)
    for m, b in zip(models, back):
        assert type(b) is Classifier and str(b) == str(m)
        sa, sb = m.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    # the members are independent copies: changing one touches neither the stack nor the originals
    with torch.no_grad():
        back[0].head.weight.add_(1.0)
    assert torch.equal(unstack(stacked)[0].head.weight, models[0].head.weight)
    assert torch.equal(back[1].head.weight, models[1].head.weight)
    assert stack(back).head.weight.shape == stacked.head.weight.shape


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_stacked_forward_equals_member_forwards(head):
    models = members(head)
    warm_up_bn(models)
    stacked = stack(models)
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(5, 3, 8, 8, generator=g) for _ in models]
    x = stack_images(xs)
    for mode in ("train", "eval"):
        for m in models:
            m.train(mode == "train")
        stacked.train(mode == "train")
        logits = stacked(x)
        assert logits.shape == (3, 5, 4)
        for s, m in enumerate(models):
            torch.testing.assert_close(logits[s], m(xs[s]), atol=1e-5, rtol=1e-5)
        feats = stacked.features(x)
        for s, m in enumerate(models):
            torch.testing.assert_close(feats[s], m.features(xs[s]), atol=1e-5, rtol=1e-5)
    # the train-mode forward updated the running statistics of each member exactly as its own
    for m, b in zip(models, unstack(stacked)):
        for k, v in m.state_dict().items():
            torch.testing.assert_close(b.state_dict()[k], v, atol=1e-6, rtol=1e-5, msg=k)
    same = stacked.repeat_input(xs[0])
    stacked.eval()
    torch.testing.assert_close(stacked(same)[2], models[2].eval()(xs[0]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_sgd_steps_on_the_stack_equal_separate_steps(head):
    models = members(head)
    stacked = stack(models)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4) for m in models]
    opt = torch.optim.SGD(stacked.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(4)
    for _ in range(3):  # several steps: momentum buffers matter
        xs = [torch.randn(8, 3, 8, 8, generator=g) for _ in models]
        ys = [torch.randint(0, 4, (8,), generator=g) for _ in models]
        for m, o, x, y in zip(models, opts, xs, ys):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
        opt.zero_grad()
        logits = stacked(stack_images(xs))
        sum(F.cross_entropy(logits[s], ys[s]) for s in range(len(models))).backward()
        opt.step()
    for m, b in zip(models, unstack(stacked)):
        for k, v in m.state_dict().items():
            torch.testing.assert_close(b.state_dict()[k], v, atol=1e-5, rtol=1e-4, msg=k)
    states = unstack_optimizer_state(stacked, opt.state_dict())
    for o, st in zip(opts, states):
        ref = o.state_dict()
        assert st["param_groups"] == ref["param_groups"]
        for i in ref["state"]:
            torch.testing.assert_close(st["state"][i]["momentum_buffer"], ref["state"][i]["momentum_buffer"],
                                       atol=1e-5, rtol=1e-4)
    # and back: stacking the per-member states gives the stacked state exactly
    again = stack_optimizer_state(stacked, states)
    for i, v in opt.state_dict()["state"].items():
        assert torch.equal(again["state"][i]["momentum_buffer"], v["momentum_buffer"])


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_steps_on_the_stack_equal_separate_sam_steps(adaptive):
    """SAM / ASAM over stacked members takes one gradient norm per member (``SAM(members=S)``): each member's
    perturbation, and so its step, is the one its own SAM would take. One norm over the whole stack would mix the
    seeds; the test also shows that it does (a mutation check)."""
    from longtail.optim import SAM

    def run(members_norm: bool):
        models = members()
        warm_up_bn(models)
        stacked = stack(models)
        opts = [SAM(torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4), rho=0.5,
                    adaptive=adaptive) for m in models]
        opt = SAM(torch.optim.SGD(stacked.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4), rho=0.5,
                  adaptive=adaptive, members=len(models) if members_norm else 1)
        g = torch.Generator().manual_seed(4)
        for _ in range(3):
            xs = [torch.randn(8, 3, 8, 8, generator=g) for _ in models]
            ys = [torch.randint(0, 4, (8,), generator=g) for _ in models]
            for m, o, x, y in zip(models, opts, xs, ys):
                def closure(m=m, o=o, x=x, y=y):
                    o.zero_grad()
                    loss = F.cross_entropy(m(x), y)
                    loss.backward()
                    return loss
                o.step(closure)

            def stacked_closure(xs=xs, ys=ys):
                opt.zero_grad()
                logits = stacked(stack_images(xs))
                loss = sum(F.cross_entropy(logits[s], ys[s]) for s in range(len(models)))
                loss.backward()
                return loss
            opt.step(stacked_closure)
        return models, unstack(stacked)

    models, got = run(True)
    for m, b in zip(models, got):
        for k, v in m.state_dict().items():
            torch.testing.assert_close(b.state_dict()[k], v, atol=1e-5, rtol=1e-4, msg=k)
    models, mixed = run(False)  # one norm over all members: not each member's own step
    assert any(not torch.allclose(b.state_dict()[k], v, atol=1e-4, rtol=1e-3)
               for m, b in zip(models, mixed) for k, v in m.state_dict().items())


def test_sam_over_members_refuses_a_tensor_that_is_not_member_major():
    from longtail.optim import SAM

    w = nn.Parameter(torch.ones(3, 2))
    w.grad = torch.ones(3, 2)
    with pytest.raises(LongtailError, match="member-major"):
        SAM(torch.optim.SGD([w], lr=0.1), members=2).perturbation()
    with pytest.raises(LongtailError, match="members >= 1"):
        SAM(torch.optim.SGD([w], lr=0.1), members=0)


def supervised_task(train, counts):
    return SupervisedTask(train, make_loss("focal", counts, gamma=1.0), batch_size=16,
                          augment=Augment(crop_padding=2, flip=True),
                          sampler=make_sampler("class-balanced", train.labels, train.num_classes),
                          weighting=make_weighting("inverse", counts, start_epoch=1))


def test_stacked_task_draws_each_members_sequential_batches():
    train = synthetic_set([30, 15, 8, 4])
    counts = train.class_counts()
    seeds = [3, 7]
    stacked_task = StackedTask([supervised_task(train, counts) for _ in seeds], seeds)
    models = members(seeds=(0, 1))
    model = stack(models)
    for epoch in (0, 1):
        stacked_task.on_epoch_start(epoch)
        got = list(stacked_task.batches(epoch, torch.Generator().manual_seed(123)))
        for s, seed in enumerate(seeds):
            ref_task = supervised_task(train, counts)
            ref_task.on_epoch_start(epoch)
            ref = list(ref_task.batches(epoch, epoch_generator(seed, epoch, torch.device("cpu"))))
            assert len(got) == len(ref) == 4
            for b, r in zip(got, ref):
                assert torch.equal(b.images[:, 3 * s:3 * (s + 1)], r.images)
                assert torch.equal(b.labels[s], r.labels) and torch.equal(b.index[s], r.index)
            # the loss term of member s is its own task's loss (with the epoch's class weights)
            loss = stacked_task.member_loss_terms(model, got[0])[s]
            torch.testing.assert_close(loss, ref_task.loss(models[s].train(), ref[0]), atol=1e-5, rtol=1e-5)
        assert (stacked_task.members[0].class_weight is None) == (epoch == 0)  # DRW switched on at epoch 1


def tiny_config(epochs=2, **train) -> RunConfig:
    return RunConfig(
        recipe="stacked-test",
        data=DataConfig(dataset="synthetic"),
        model=ModelConfig(arch=ARCH, head="linear"),
        loss=LossConfig(name="focal"),
        train=TrainConfig(**{**dict(epochs=epochs, batch_size=16, lr=0.05, device="cpu", checkpoint_every=1,
                                    crop_padding=1, sampler="class-balanced", weighting="inverse",
                                    drw_start=100.0, warmup_epochs=0.0), **train}),
    )


@pytest.fixture
def splits():
    return Splits(synthetic_set([40, 20, 10, 6]), synthetic_set([10, 10, 10, 10], seed=1, name="test"))


def weights(folder):
    return load_checkpoint(folder / "checkpoints" / "last.pt")


def assert_close_runs(a, b, atol=1e-4):
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=atol, rtol=1e-4, msg=k)
    for i, st in a["optimizer"]["state"].items():
        torch.testing.assert_close(st["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"],
                                   atol=atol, rtol=1e-4)
    assert a["next_epoch"] == b["next_epoch"]


@pytest.mark.slow
def test_train_stacked_matches_sequential_runs(tmp_path, splits):
    cfg = tiny_config(epochs=2)
    seeds = [0, 5]
    results = train_stacked(cfg, seeds, tmp_path / "stacked", splits=splits, progress=False, log=lambda _: None)
    assert [r["seed"] for r in results] == seeds
    for s, result in zip(seeds, results):
        seq = train_one(replace(cfg, seed=s), tmp_path / f"seq-{s}", splits=splits, progress=False)
        run = tmp_path / "stacked" / f"seed-{s}"
        for f in ("config.json", "metrics.jsonl", "report.json", "report.md", "checkpoints/last.pt"):
            assert (run / f).is_file(), f
        a, b = weights(run), weights(tmp_path / f"seq-{s}")
        assert a["config"] == b["config"] and a["config"]["seed"] == s
        assert_close_runs(a, b)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        seq_rows = [json.loads(line) for line in (tmp_path / f"seq-{s}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [0, 1] and [r["steps"] for r in rows] == [r["steps"] for r in seq_rows]
        for r, q in zip(rows, seq_rows):
            assert r["train_loss"] == pytest.approx(q["train_loss"], rel=1e-4) and r["lr"] == q["lr"]
        report = json.loads((run / "report.json").read_text())
        assert report["seed"] == s and report["stacked_seeds"] == seeds and result["top1"] == report["top1"]
        # 40 test images: near-identical weights may at most flip a near-tie
        assert abs(result["top1"] - seq["top1"]) <= 100 / 40 + 1e-9


def test_stacked_and_sequential_runs_keep_the_same_epoch_records(tmp_path):
    """One EpochLog for both drivers: with a validation split evaluated every epoch, the stacked run logs
    val_top1 and val_balanced, keeps best-val.pt and reports best_val_epoch, as a sequential run does."""
    val_splits = Splits(synthetic_set([40, 20, 10, 6]), synthetic_set([10, 10, 10, 10], seed=1, name="test"),
                        synthetic_set([5, 5, 5, 5], seed=2, name="val"))
    cfg = tiny_config(epochs=3, eval_every=1)
    train_stacked(cfg, [0, 1], tmp_path / "stacked", splits=val_splits, progress=False, log=lambda _: None)
    train_one(cfg, tmp_path / "seq", splits=val_splits, progress=False)
    runs = {"stacked": tmp_path / "stacked" / "seed-0", "sequential": tmp_path / "seq"}
    rows = {k: [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()] for k, r in runs.items()}
    reports = {k: json.loads((r / "report.json").read_text()) for k, r in runs.items()}
    for k, run in runs.items():
        assert all({"val_top1", "val_balanced"} <= set(r) for r in rows[k]), k
        assert (run / "checkpoints" / "best-val.pt").is_file(), k
        assert not (run / "checkpoints" / "previous-best-val.pt").exists(), k
        best = max(range(3), key=lambda e: (rows[k][e]["val_balanced"], -e))  # the first epoch of the best score
        assert reports[k]["best_val_epoch"]["epoch"] == best + 1, k
        assert "val" in reports[k], k
    for a, b in zip(rows["stacked"], rows["sequential"]):
        assert a["val_balanced"] == pytest.approx(b["val_balanced"], abs=100 / 20 + 1e-9)  # 20 images: one flip at most


@pytest.mark.slow
@pytest.mark.parametrize("optim", [{"name": "sam", "sam_rho": 0.5, "sam_rho_late": 1.0, "sam_rho_late_start": 100.0},
                                   # ASAM at its default radius 2 on this 4-channel network amplifies the stack's
                                   # rounding (1e-6 after one epoch, 0.5 in a BatchNorm variance after three): 0.2
                                   {"name": "asam", "sam_rho": 0.2, "sam_bn_stats": "both"}])
def test_train_stacked_with_sam_matches_sequential_sam_runs(tmp_path, splits, optim):
    """``--stack-seeds`` with SAM / ASAM (issue 14's long recipes train with SAM): each seed's run, its radius change
    at the late epoch and BatchNorm's statistics from the first pass or both, equals its sequential run."""
    from longtail.config import OptimConfig

    cfg = replace(tiny_config(epochs=3), optim=OptimConfig(**optim))
    assert stack_unsupported_reason(cfg) is None
    seeds = [0, 5]
    train_stacked(cfg, seeds, tmp_path / "stacked", splits=splits, progress=False, log=lambda _: None)
    for s in seeds:
        train_one(replace(cfg, seed=s), tmp_path / f"seq-{s}", splits=splits, progress=False)
        a, b = weights(tmp_path / "stacked" / f"seed-{s}"), weights(tmp_path / f"seq-{s}")
        assert a["config"] == b["config"] and a["config"]["optim"]["name"] == optim["name"]
        assert_close_runs(a, b)
        # each epoch's loss is the first passes' (SAM's step returns the loss at w), not both passes'
        rows = [[json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
                for run in (tmp_path / "stacked" / f"seed-{s}", tmp_path / f"seq-{s}")]
        assert rows[0] == pytest.approx(rows[1], rel=1e-4)


@pytest.mark.slow
def test_train_stacked_from_pretrained_weights_matches_sequential_runs(tmp_path, splits):
    """``train.init_from``: every member's backbone starts from the weights, as each seed's own run does; a stacked
    run stopped and resumed keeps its own weights (the starting ones are not loaded again)."""
    train_one(replace(tiny_config(epochs=1), seed=9), tmp_path / "source", splits=splits, progress=False)
    cfg = replace(tiny_config(epochs=2), train=replace(tiny_config(epochs=2).train, init_from=str(tmp_path / "source")))
    assert stack_unsupported_reason(cfg) is None
    seeds, quiet = [1, 2], dict(splits=splits, progress=False, log=lambda _: None)
    assert train_stacked(cfg, seeds, tmp_path / "stacked", stop_after=1, **quiet) == [{}, {}]
    after_one = {s: weights(tmp_path / "stacked" / f"seed-{s}") for s in seeds}
    train_stacked(cfg, seeds, tmp_path / "stacked", **quiet)  # resumed: epoch 2 from its own weights
    for s in seeds:
        train_one(replace(cfg, seed=s), tmp_path / f"seq-{s}", stop_after=1, **quiet)
        assert_close_runs(after_one[s], weights(tmp_path / f"seq-{s}"))
        train_one(replace(cfg, seed=s), tmp_path / f"seq-{s}", **quiet)
        assert_close_runs(weights(tmp_path / "stacked" / f"seed-{s}"), weights(tmp_path / f"seq-{s}"))
    # the starting weights matter: the same seeds from their random starts end elsewhere (a mutation check)
    train_stacked(tiny_config(epochs=1), seeds, tmp_path / "scratch", **quiet)
    a, b = weights(tmp_path / "scratch" / "seed-1")["model"], after_one[1]["model"]
    assert any(not torch.allclose(a[k], b[k], atol=1e-3) for k in a if k.startswith("backbone.") and
               a[k].is_floating_point())


@pytest.mark.slow
def test_resume_stacked_and_across_modes(tmp_path, splits):
    cfg = tiny_config(epochs=2)
    seeds = [1, 2]
    quiet = dict(splits=splits, progress=False, log=lambda _: None)
    train_stacked(cfg, seeds, tmp_path / "full", **quiet)
    assert train_stacked(cfg, seeds, tmp_path / "cut", stop_after=1, **quiet) == [{}, {}]
    assert weights(tmp_path / "cut" / "seed-1")["next_epoch"] == 1
    train_stacked(cfg, seeds, tmp_path / "cut", **quiet)
    for s in seeds:
        a, b = weights(tmp_path / "full" / f"seed-{s}"), weights(tmp_path / "cut" / f"seed-{s}")
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), k
        assert len(a["records"]) == len(b["records"]) == 2
    # seeds started sequentially and interrupted are finished stacked
    for s in seeds:
        train_one(replace(cfg, seed=s), tmp_path / "mixed" / f"seed-{s}", stop_after=1, **quiet)
    train_stacked(cfg, seeds, tmp_path / "mixed", **quiet)
    for s in seeds:
        assert_close_runs(weights(tmp_path / "mixed" / f"seed-{s}"), weights(tmp_path / "full" / f"seed-{s}"))
    # and a stacked checkpoint resumes sequentially (train_one finds the finished run and re-evaluates)
    again = train_one(replace(cfg, seed=1), tmp_path / "cut" / "seed-1", **quiet)
    assert again["top1"] == json.loads((tmp_path / "full" / "seed-1" / "report.json").read_text())["top1"]


def test_what_cannot_be_stacked(tmp_path, splits, monkeypatch):
    assert stack_unsupported_reason(RunConfig()) is None  # resnet32, linear head
    assert stack_unsupported_reason(replace(RunConfig(), model=ModelConfig("resnet20", "cosine"))) is None
    with pytest.raises(LongtailError, match="feature weakening") as e:
        check_stackable(replace(tiny_config(), mfw=MFWConfig(strength=0.5)))
    assert "one after another" in str(e.value)
    def odd(c):
        net = nn.Sequential(nn.Conv2d(c, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        net.out_features = 4
        return net

    monkeypatch.setitem(MODELS, "odd", odd)
    with pytest.raises(LongtailError, match="GELU"):
        train_stacked(replace(tiny_config(), model=ModelConfig("odd")), [0, 1], tmp_path / "x", splits=splits)
    with pytest.raises(LongtailError, match="distinct seeds"):
        train_stacked(tiny_config(), [0, 0], tmp_path / "y", splits=splits)
    with pytest.raises(LongtailError, match="another architecture"):
        stack(members(seeds=(0,)) + members(arch="tiny", seeds=(1,)))
    # only some seed folders hold a checkpoint
    train_one(replace(tiny_config(), seed=0), tmp_path / "part" / "seed-0", splits=splits, progress=False,
              stop_after=1)
    assert "only some seed folders" in stacked_resume_problem(tmp_path / "part", [0, 1])
    assert stacked_resume_problem(tmp_path / "part", [0]) is None
    assert stacked_resume_problem(tmp_path / "nothing-yet", [0, 1]) is None
    with pytest.raises(LongtailError, match="only some seed folders"):
        train_stacked(tiny_config(), [0, 1], tmp_path / "part", splits=splits, progress=False)
    train_one(replace(tiny_config(), seed=1), tmp_path / "part" / "seed-1", splits=splits, progress=False)
    assert "different epochs [1, 2]" in stacked_resume_problem(tmp_path / "part", [0, 1])
