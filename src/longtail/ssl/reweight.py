"""Per-example weights for the ascent pass of rwSAM (Liu et al., ICLR 2022).

Liu, HaoChen, Gaidon & Ma, "Self-supervised learning is more robust to dataset imbalance":
sharpness-aware minimisation whose perturbation is computed from a loss that up-weights rare
examples, so the flat region it seeks is flat for the rare examples too. Two sources of weights:

* ``class``, when labels may be used: ``w_i ∝ n_{y_i}^(-power)``. (The authors' CIFAR script
  uses ``1.2^{y_i}``, which relies on the classes being sorted by frequency.)
* ``kde``, label-free (the paper's version): a Gaussian kernel density estimate in feature space,

      p_i = 1/(N-1) sum_{j != i} exp(-||f_i - f_j||^2 / (2 h^2)),   f = L2-normalised features,

  and ``w_i ∝ p_i^(-power)``: examples in low-density regions (rare kinds of image) weigh more.
  ``h`` defaults to the median pairwise distance (the median heuristic). The authors precompute
  the weights once from the features of a pre-trained model; here they are recomputed from the
  current backbone every ``rw_every`` epochs.

Weights are clipped to ``max_weight`` times their median and normalised to mean 1. The scale does
not change SAM's ascent direction (``e = rho g / ||g||``); it keeps logged losses comparable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..counts import ClassCounts
from ..errors import LongtailError
from ..loop import extract_features


def _normalise(w: torch.Tensor, max_weight: float | None) -> torch.Tensor:
    """Clip at ``max_weight`` times the median (robust to the outliers being clipped), then mean 1."""
    if max_weight is not None:
        w = w.clamp(max=max_weight * w.median())
    return (w / w.mean()).float()


def class_frequency_weights(labels: torch.Tensor, counts: ClassCounts, *, power: float = 1.0,
                            max_weight: float | None = None) -> torch.Tensor:
    """``w_i ∝ n_{y_i}^(-power)`` for every example, mean 1: (N,) float32 on the labels' device."""
    counts.require_nonempty()
    n = counts.tensor(device=labels.device, dtype=torch.float64)
    return _normalise(n[labels.long()].pow(-power), max_weight)


def median_distance(features: torch.Tensor, max_rows: int = 2048) -> float:
    """Median pairwise Euclidean distance between (up to ``max_rows`` evenly spaced) rows of ``features``."""
    step = max(1, features.shape[0] // max_rows)
    f = features[::step][:max_rows].float()
    d = torch.cdist(f, f)
    iu = torch.triu_indices(f.shape[0], f.shape[0], offset=1, device=f.device)
    vals = d[iu[0], iu[1]]
    return float(vals.median()) if vals.numel() else 1.0


@torch.no_grad()
def kde_density(features: torch.Tensor, *, bandwidth: float | None = None, chunk: int = 4096) -> torch.Tensor:
    """Leave-one-out Gaussian KDE of each row of ``features`` (N, D) among the others: (N,).

    Features are L2-normalised first (cosine geometry, as the SSL losses use). Computed in
    ``chunk`` rows at a time: memory O(chunk * N), time O(N^2 D).
    """
    n = features.shape[0]
    if n < 2:
        raise LongtailError("a density estimate needs at least two examples")
    f = F.normalize(features.float(), dim=1)
    h = bandwidth if bandwidth is not None else median_distance(f)
    h = max(h, 1e-6)
    sq = (f * f).sum(dim=1)
    out = torch.empty(n, device=f.device, dtype=torch.float64)
    for start in range(0, n, chunk):
        rows = f[start:start + chunk]
        d2 = (sq[start:start + chunk, None] + sq[None, :] - 2 * rows @ f.t()).clamp_min(0)
        k = torch.exp(-d2 / (2 * h * h))
        # leave one out: drop each row's own kernel value, exp(0) = 1; sum in float64
        out[start:start + chunk] = (k.sum(dim=1, dtype=torch.float64) - 1.0) / (n - 1)
    return out


def kde_weights(features: torch.Tensor, *, bandwidth: float | None = None, power: float = 1.0,
                max_weight: float | None = 10.0, eps: float = 1e-12) -> torch.Tensor:
    """``w_i ∝ p_i^(-power)`` with ``p`` from :func:`kde_density`; mean 1, (N,) float32."""
    p = kde_density(features, bandwidth=bandwidth)
    return _normalise((p + eps).pow(-power), max_weight)


class ClassFrequencyWeights:
    """Constant per-example weights ``∝ n_{y_i}^(-power)`` (uses the labels)."""

    def __init__(self, labels: torch.Tensor, counts: ClassCounts, *, power: float = 1.0,
                 max_weight: float | None = None) -> None:
        self.weight = class_frequency_weights(labels, counts, power=power, max_weight=max_weight)

    def weights_at(self, epoch: int) -> torch.Tensor:
        return self.weight


class KDEWeights:
    """Label-free weights from a KDE of the current backbone's features, refreshed every ``every`` epochs.

    ``weights_at(epoch)`` recomputes them when ``epoch % every == 0`` (or when none are held),
    from ``backbone`` in eval mode on the un-augmented training images. ``state_dict`` carries
    the weights in use, so a run resumed between two refreshes continues with the same ones.
    """

    def __init__(self, backbone: torch.nn.Module, data, device: torch.device, *, amp: str = "auto",
                 every: int = 1, bandwidth: float | None = None, power: float = 1.0,
                 max_weight: float | None = 10.0) -> None:
        self.backbone, self.data, self.device, self.amp = backbone, data, device, amp
        self.every = max(1, int(every))
        self.bandwidth, self.power, self.max_weight = bandwidth, power, max_weight
        self.weight: torch.Tensor | None = None
        self.computed_at: int | None = None

    def weights_at(self, epoch: int) -> torch.Tensor:
        if self.weight is None or (epoch % self.every == 0 and self.computed_at != epoch):
            features = extract_features(self.backbone, self.data, self.device, self.amp)
            self.weight = kde_weights(features, bandwidth=self.bandwidth, power=self.power,
                                      max_weight=self.max_weight)
            self.computed_at = epoch
        return self.weight

    def state_dict(self) -> dict:
        return {"weight": None if self.weight is None else self.weight.cpu(), "computed_at": self.computed_at}

    def load_state_dict(self, state: dict) -> None:
        w = state.get("weight")
        self.weight = None if w is None else w.to(self.device)
        self.computed_at = state.get("computed_at")
