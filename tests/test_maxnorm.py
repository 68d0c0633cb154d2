"""MaxNorm (longtail.maxnorm) against a transcription of Alshammari et al.'s ``MaxNorm_via_PGD`` on fixed inputs, and
the projection's own properties.

The transcription follows ShadeAlsha/LTR-weight-balancing (e89f292) ``utils/regularizers.py``: ``setPerLayerThresh``
reads the per-row L2 norms of ``[fc.weight, fc.bias]`` once (a one-dimensional tensor gets an infinite threshold)
and sets ``min + thresh * (max - min)``; ``PGD`` scales every row whose norm (to the power ``tau``) exceeds it by
``threshold / norm^tau``. Written here from that description in the source's own torch calls, sharing no code with
longtail; the demo uses ``thresh=0.1, LpNorm=2, tau=1``.
"""

from __future__ import annotations

import pytest
import torch

from longtail.maxnorm import MaxNorm, row_norms


def their_thresholds(layers: list[torch.Tensor], thresh: float) -> list[torch.Tensor | float]:
    """``setPerLayerThresh``: one threshold per tensor, infinite for a bias."""
    out: list[torch.Tensor | float] = []
    for p in layers:
        if p.dim() <= 1:
            out.append(float("inf"))
            continue
        norms = torch.linalg.norm(p.reshape(p.shape[0], -1), ord=2, dim=1).unsqueeze(-1)
        out.append(norms.min() + thresh * (norms.max() - norms.min()))
    return out


@torch.no_grad()
def their_pgd(layers: list[torch.Tensor], thresholds: list[torch.Tensor | float], tau: float = 1.0) -> None:
    """``PGD``: rows over the threshold scaled by ``threshold / norm^tau``, in place (the bias included, never over)."""
    for p, cap in zip(layers, thresholds):
        norms = (torch.linalg.norm(p.reshape(p.shape[0], -1), ord=2, dim=1) ** tau).unsqueeze(-1)
        over = (norms > cap).squeeze()
        factor = cap / norms[over].squeeze() ** tau
        for _ in range(p.dim() - 1):
            factor = factor.unsqueeze(-1)
        scaling = torch.ones_like(p)
        scaling[over] = scaling[over] * factor
        p[over] = scaling[over] * p[over]


def spread_rows(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A classifier weight whose rows have norms spread over a decade, as a long-tailed head's do."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    scale = torch.logspace(1, 0, shape[0])  # head classes first: largest norms
    return w * scale.reshape(-1, *([1] * (len(shape) - 1)))


@pytest.mark.parametrize("shape", [(10, 16), (7, 2, 3), (2, 5)])
@pytest.mark.parametrize("thresh", [0.1, 0.0, 0.5, 1.0])
def test_matches_their_maxnorm_via_pgd_through_training_like_updates(shape, thresh):
    w0, bias0 = spread_rows(shape, seed=0), torch.randn(shape[0], generator=torch.Generator().manual_seed(1))
    ours_w, theirs_w, theirs_b = w0.clone(), w0.clone(), bias0.clone()
    thresholds = their_thresholds([theirs_w, theirs_b], thresh)
    m = MaxNorm(ours_w, thresh=thresh)
    assert torch.tensor(m.cap, dtype=torch.float32) == thresholds[0]  # float32 arithmetic, as theirs
    g = torch.Generator().manual_seed(2)
    for step in range(5):  # project, then an update that grows some rows, as a few epochs would
        m.project()
        their_pgd([theirs_w, theirs_b], thresholds)
        assert torch.equal(ours_w, theirs_w), step
        assert torch.equal(theirs_b, bias0)  # their bias is never projected; ours is not touched at all
        delta = torch.randn(*shape, generator=g)
        ours_w += delta
        theirs_w += delta


def test_the_demo_setting_on_a_known_head():
    """Norms 5, 1, 2, 4: cap 1 + 0.1 * 4 = 1.4; rows 0, 2 and 3 projected onto it, row 1 left as it is."""
    w = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 2.0], [4.0, 0.0]])
    m = MaxNorm(w, thresh=0.1)
    assert m.cap == pytest.approx(1.4)
    m.project()
    assert torch.allclose(row_norms(w), torch.tensor([1.4, 1.0, 1.4, 1.4]))
    assert torch.allclose(w[0], torch.tensor([3.0, 4.0]) * 1.4 / 5) and torch.equal(w[1], torch.tensor([0.0, 1.0]))


def test_projection_properties():
    w = spread_rows((12, 8), seed=3)
    before = w.clone()
    m = MaxNorm(w, thresh=0.3)
    m.project()
    norms_before, norms_after = row_norms(before), row_norms(w)
    below = norms_before <= m.cap
    assert torch.equal(w[below], before[below])  # rows under the cap: bit-identical
    assert torch.allclose(norms_after[~below], torch.full_like(norms_after[~below], m.cap))
    cosine = torch.nn.functional.cosine_similarity(w, before, dim=1)
    assert torch.allclose(cosine, torch.ones_like(cosine))  # directions kept: only lengths change
    after = w.clone()
    m.project()
    assert torch.equal(w, after)  # a projection is idempotent (up to the last bit)


def test_thresh_one_changes_nothing_at_the_start_and_zero_caps_at_the_smallest_norm():
    w = spread_rows((6, 4), seed=4)
    before = w.clone()
    MaxNorm(w, thresh=1.0).project()
    assert torch.equal(w, before)
    m = MaxNorm(w, thresh=0.0)
    m.project()
    assert torch.allclose(row_norms(w), torch.full((6,), m.cap))
    assert m.cap == pytest.approx(float(row_norms(before).min()))


def test_state_keeps_the_cap_of_the_start():
    w = spread_rows((5, 3), seed=5)
    m = MaxNorm(w, thresh=0.1)
    state = m.state_dict()
    w.mul_(10)  # later weights: a MaxNorm made now would read another cap
    resumed = MaxNorm(w, thresh=0.1)
    assert resumed.cap != state["cap"]
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state


def test_bad_inputs():
    with pytest.raises(ValueError, match="one row per class"):
        MaxNorm(torch.ones(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MaxNorm(torch.ones(3, 2), thresh=1.5)
