"""Major Feature Weakening: who is weakened, how, and the task that trains with it."""

from __future__ import annotations

import pytest
import torch

from longtail.counts import ClassCounts
from longtail.errors import LongtailError
from longtail.losses import make_loss
from longtail.mfw import MajorFeatureWeakening, MFWTask, weakening_probabilities
from longtail.models import make_model
from longtail.tasks import SupervisedTask

from conftest import synthetic_set

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# head 1000 ... tail 10: p = strength * (n - 10) / 990
COUNTS = ClassCounts((1000, 505, 10))


def batch(b: int = 64, d: int = 8, device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, d, generator=g).to(device)
    labels = (torch.arange(b) % COUNTS.num_classes).to(device)
    return feats, labels


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def test_probabilities_follow_the_class_counts() -> None:
    p = weakening_probabilities(COUNTS, 0.8)
    assert p.tolist() == pytest.approx([0.8, 0.4, 0.0])
    assert weakening_probabilities(ClassCounts((7, 7, 7)), 1.0).tolist() == [0.0, 0.0, 0.0]  # balanced: never
    mfw = MajorFeatureWeakening(COUNTS, strength=0.8)
    assert "select_prob" in dict(mfw.named_buffers())


@pytest.mark.parametrize("device", DEVICES)
def test_rarest_class_never_weakened_and_head_at_its_probability(device: str) -> None:
    mfw = MajorFeatureWeakening(COUNTS, strength=0.6).to(device)
    labels = torch.tensor([0, 1, 2] * 4000, device=device)
    feats = torch.randn(labels.numel(), 4, device=device)
    _, mask = mfw(feats, labels, gen(1, device))
    assert mask.dtype == torch.bool and mask.shape == labels.shape
    assert not mask[labels == 2].any()
    # 4000 draws: std of the frequency is about 0.008
    assert mask[labels == 0].float().mean().item() == pytest.approx(0.6, abs=0.04)
    assert mask[labels == 1].float().mean().item() == pytest.approx(0.3, abs=0.04)
    full = MajorFeatureWeakening(COUNTS, strength=1.0).to(device)
    assert full(feats, labels, gen(2, device))[1][labels == 0].all()


@pytest.mark.parametrize("device", DEVICES)
def test_weakened_rows_are_convex_mixes_of_another_row(device: str) -> None:
    mfw = MajorFeatureWeakening(COUNTS, strength=1.0, lam_min=0.5).to(device)
    feats, labels = batch(48, 8, device)
    out, mask = mfw(feats, labels, gen(3, device))
    assert mask.any() and (~mask).any()
    assert torch.equal(out[~mask], feats[~mask])  # others bit-for-bit unchanged
    # Without knowing the draw: each weakened row is lam * f_i + (1 - lam) * f_j for some j != i
    # with lam in [lam_min, 1]; solve for lam per candidate j by least squares.
    for i in mask.nonzero().flatten().tolist():
        d = (feats[i] - feats).double()  # (B, D): f_i - f_j
        r = (out[i] - feats).double()  # out_i - f_j = lam (f_i - f_j)
        lam = (d * r).sum(1) / (d * d).sum(1).clamp_min(1e-12)
        resid = (r - lam[:, None] * d).norm(dim=1)
        resid[i] = float("inf")
        j = int(resid.argmin())
        assert j != i and resid[j] < 1e-4
        assert 0.5 - 1e-5 <= lam[j] <= 1.0
    # With the same generator the draw is the one that was applied, row by row.
    mask2, partner, lam = mfw.draw(labels, gen(3, device))
    assert torch.equal(mask2, mask) and not (partner == torch.arange(48, device=device)).any()
    expected = lam[:, None] * feats + (1 - lam[:, None]) * feats[partner]
    torch.testing.assert_close(out[mask], expected[mask])


def test_labels_unchanged_and_eval_and_zero_strength_are_identity() -> None:
    feats, labels = batch()
    before = labels.clone()
    mfw = MajorFeatureWeakening(COUNTS, strength=1.0)
    mfw(feats, labels, gen())
    assert torch.equal(labels, before)
    mfw.eval()
    out, mask = mfw(feats, labels, gen())
    assert out is feats and not mask.any()
    off = MajorFeatureWeakening(COUNTS, strength=0.0)
    out, mask = off(feats, labels, gen())
    assert torch.equal(out, feats) and not mask.any()
    one, _ = MajorFeatureWeakening(COUNTS, strength=1.0)(feats[:1], labels[:1], gen())  # nobody to mix with
    assert torch.equal(one, feats[:1])


def test_bad_knobs_are_refused() -> None:
    with pytest.raises(LongtailError, match="strength"):
        MajorFeatureWeakening(COUNTS, strength=1.5)
    with pytest.raises(LongtailError, match="lam_min"):
        MajorFeatureWeakening(COUNTS, lam_min=-0.1)


# ------------------------------------------------------------------------------------------
# the task
# ------------------------------------------------------------------------------------------
def make_task(seed: int = 0, strength: float = 1.0) -> MFWTask:
    train = synthetic_set([40, 20, 10, 5])
    return MFWTask(train, make_loss("ce", train.class_counts()), batch_size=16, strength=strength, seed=seed)


def first_batch(task: MFWTask, epoch: int = 0):
    return next(iter(task.batches(epoch, torch.Generator().manual_seed(epoch))))


def test_task_loss_is_finite_and_gradients_flow() -> None:
    torch.manual_seed(0)
    model = make_model("tiny", 4)
    model.train()
    task = make_task()
    task.on_epoch_start(0)
    loss = task.loss(model, first_batch(task))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(p.grad.abs().sum() > 0 for p in model.backbone.parameters())  # through the mix


def test_task_is_supervised_task_and_eval_mode_matches_plain_loss() -> None:
    torch.manual_seed(0)
    model = make_model("tiny", 4).eval()
    task = make_task()
    assert isinstance(task, SupervisedTask)
    task.on_epoch_start(0)
    b = first_batch(task)
    plain = SupervisedTask(task.train, task.criterion, batch_size=16)
    plain.on_epoch_start(0)
    torch.testing.assert_close(task.loss(model, b), plain.loss(model, b))


def test_task_is_deterministic_per_seed_and_epoch() -> None:
    torch.manual_seed(0)
    model = make_model("tiny", 4).train()
    model.backbone.eval()  # freeze batch-norm statistics so repeated calls see one network

    def losses(task: MFWTask, epochs=(0, 1)) -> list[float]:
        out = []
        for e in epochs:
            task.on_epoch_start(e)
            with torch.no_grad():
                out.append(float(task.loss(model, first_batch(task, e))))
        return out

    a, b = losses(make_task(seed=5)), losses(make_task(seed=5))
    assert a == b
    # A resumed run starts at epoch 1 and draws what an uninterrupted one drew at epoch 1.
    assert losses(make_task(seed=5), epochs=(1,)) == a[1:]
    assert losses(make_task(seed=6)) != a


def test_training_with_mfw_reduces_the_loss() -> None:
    from longtail.loop import fit, make_sgd

    torch.manual_seed(0)
    model = make_model("tiny", 4)
    task = make_task(strength=0.5)
    records = fit(model, task, make_sgd(model, lr=0.05, momentum=0.9, weight_decay=0.0), epochs=4,
                  lr_at=lambda e: 0.05, seed=0, device=torch.device("cpu"), progress=False)
    assert records[-1].train_loss < records[0].train_loss
