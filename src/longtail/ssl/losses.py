"""Self-supervised losses as pure functions of tensors.

Every loss takes an optional per-example ``weight`` (B,) and returns the weighted mean
``sum_i w_i l_i / sum_i w_i`` (the plain mean without weights): this is how rwSAM re-weights its
ascent pass. The losses run in float32 whatever autocast says: a temperature of 0.2 and cosine
similarities near 1 are too coarse in bfloat16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_i w_i v_i / sum_i w_i`` over the rows of ``values`` (B,); the mean when ``weight`` is None."""
    if weight is None:
        return values.mean()
    weight = weight.to(values)
    return (values * weight).sum() / weight.sum()


def _fp32(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``-cos(p_i, stopgrad(z_i))`` per row: (B, D), (B, D) -> (B,) in [-1, 1]."""
    with _fp32(p.device):
        return -F.cosine_similarity(p.float(), z.detach().float(), dim=1)


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """SimSiam (Chen & He 2021, Algorithm 1): ``L = D(p1, z2)/2 + D(p2, z1)/2``, ``D = -cos(p, stopgrad(z))``.

    ``p``: predictor outputs, ``z``: projector outputs of the two views, all (B, D). Its minimum
    is -1 (every prediction parallel to the other view's projection).
    """
    per_example = 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)
    return weighted_mean(per_example, weight)


def info_nce_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's logits (B, 1 + K): column 0 is ``q_i . k_i / T``, then ``q_i . queue_j / T``.

    ``q``, ``k``: (B, D) L2-normalised queries and keys (keys carry no gradient);
    ``queue``: (K, D) normalised negatives.
    """
    with _fp32(q.device):
        q, k = q.float(), k.detach().float()
        positive = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
        negative = q @ queue.detach().float().t()  # (B, K)
        return torch.cat([positive, negative], dim=1) / temperature


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE (Oord et al. 2018; MoCo, He et al. 2020)::

        L_i = -log( exp(q_i.k_i / T) / (exp(q_i.k_i / T) + sum_j exp(q_i.queue_j / T)) )

    i.e. cross-entropy of :func:`info_nce_logits` with target 0. With ``q = k`` and a queue
    orthogonal to every query, ``L = log(1 + K exp(-1/T))``.
    """
    logits = info_nce_logits(q, k, queue, temperature)
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return weighted_mean(F.cross_entropy(logits, target, reduction="none"), weight)


def rotation_loss(logits: torch.Tensor, rotation: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the 4-way rotation logits (B, 4) against the rotation index (B,) in 0..3."""
    with _fp32(logits.device):
        return weighted_mean(F.cross_entropy(logits.float(), rotation, reduction="none"), weight)
