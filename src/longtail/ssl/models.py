"""Pre-training models: a backbone plus the heads of a pretext task.

Every model keeps the backbone under the attribute ``backbone``, so its tensors are
``backbone.*`` in a checkpoint, exactly as in ``Classifier``; everything else is a head that
:func:`longtail.ssl.load_pretrained_backbone` ignores (``HEAD_MODULES``).

* rotation: ``Classifier(backbone, LinearHead(d, 4))``, the head named ``head``.
* MoCo v2: ``projector`` (MLP d -> hidden -> dim), a momentum copy of backbone and projector
  (``momentum_backbone``, ``momentum_projector``) and the ``queue`` (K, dim) of negatives.
* SimSiam: ``projector`` (MLP with BatchNorm, last BN without affine) and ``predictor``
  (bottleneck MLP dim -> hidden -> dim).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import Classifier
from ..models.heads import LinearHead


def rotation_model(backbone: nn.Module) -> Classifier:
    """The backbone with a 4-way rotation head (0, 90, 180, 270 degrees)."""
    return Classifier(backbone, LinearHead(int(backbone.out_features), 4))  # type: ignore[arg-type]


def _split_forward(module: nn.Module, x: torch.Tensor, splits: int, order: torch.Tensor | None = None) -> torch.Tensor:
    """``module`` over ``splits`` groups of rows, so BatchNorm normalises each group separately.

    ``order`` (B,) permutes the rows into groups (and the output back): MoCo's "shuffling BN"
    on one device. One group is the plain forward pass.
    """
    if splits <= 1 or x.shape[0] < 2 * splits:
        return module(x)
    if order is not None:
        x = x[order]
    out = torch.cat([module(chunk) for chunk in x.chunk(splits)])
    if order is not None:
        out = out[torch.argsort(order)]
    return out


class MoCo(nn.Module):
    """MoCo v2 (He et al. 2020; Chen et al. 2020): query encoder, momentum key encoder, queue.

    ``queue`` (K, dim) holds L2-normalised keys of past batches; ``queue_ptr`` the next row to
    write. The momentum encoder is updated ``theta_k <- m theta_k + (1 - m) theta_q`` (parameters
    only; its BatchNorm statistics are its own) by :meth:`momentum_update`, which the task calls
    once per optimiser step.

    Shuffled BN on one device: BatchNorm statistics shared by a query and its own key let the
    network cheat. MoCo shuffles the keys across GPUs; here the queries are normalised in
    ``bn_splits`` contiguous groups and the keys in ``bn_splits`` strided groups (row i in group
    i mod splits), so a query and its key share a BN group only by chance, as with a shuffle.
    Across processes (``torchrun``) the task shuffles the keys over the processes as MoCo does
    (``longtail.ssl.tasks.MoCoTask``); ``bn_splits`` then splits each process's part further.
    """

    queue: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(self, backbone: nn.Module, *, dim: int = 128, hidden: int = 512, queue_size: int = 4096,
                 momentum: float = 0.99, temperature: float = 0.2, bn_splits: int = 1) -> None:
        super().__init__()
        width = int(backbone.out_features)  # type: ignore[arg-type]
        self.backbone = backbone
        self.projector = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in list(self.momentum_backbone.parameters()) + list(self.momentum_projector.parameters()):
            p.requires_grad_(False)
        self.momentum, self.temperature, self.bn_splits = float(momentum), float(temperature), int(bn_splits)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim, generator=g), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @property
    def queue_size(self) -> int:
        return int(self.queue.shape[0])

    def _query_encoder(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def _key_encoder(self, x: torch.Tensor) -> torch.Tensor:
        return self.momentum_projector(self.momentum_backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The queries: the pass with gradients, so ``DistributedDataParallel`` sees it (keys come from :meth:`key`)."""
        return self.query(x)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, dim) normalised queries (with gradients)."""
        return F.normalize(_split_forward(self._query_encoder, x, self.bn_splits).float(), dim=1)

    @torch.no_grad()
    def key(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, dim) normalised keys from the momentum encoder (no gradients)."""
        b = x.shape[0]
        splits = self.bn_splits
        strided = torch.arange(b, device=x.device).view(-1, splits).t().reshape(-1) if b % splits == 0 else None
        return F.normalize(_split_forward(self._key_encoder, x, splits, strided).float(), dim=1)

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        q = list(self.backbone.parameters()) + list(self.projector.parameters())
        k = list(self.momentum_backbone.parameters()) + list(self.momentum_projector.parameters())
        return q, k

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``theta_k <- m theta_k + (1 - m) theta_q`` for every parameter pair."""
        q, k = self._pairs()
        torch._foreach_mul_(k, self.momentum)
        torch._foreach_add_(k, [p.detach() for p in q], alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (B, dim) at ``queue_ptr``, wrapping around the end; the pointer advances by B mod K."""
        keys = keys.detach().to(self.queue.dtype)[-self.queue_size:]  # more keys than K: keep the newest
        n = keys.shape[0]
        rows = (self.queue_ptr + torch.arange(n, device=keys.device)) % self.queue_size
        self.queue[rows] = keys
        self.queue_ptr.copy_((self.queue_ptr + n) % self.queue_size)


def _mlp(dims: list[int], *, last_bn_affine: bool | None) -> nn.Sequential:
    """Linear (no bias) + BN + ReLU between ``dims``; the last layer gets BN (affine or not) or a bias."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        if not last:
            layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_bn_affine is None:
            layers.append(nn.Linear(a, b))
        else:
            layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b, affine=last_bn_affine)]
    return nn.Sequential(*layers)


class SimSiam(nn.Module):
    """SimSiam (Chen & He 2021): ``z = projector(backbone(x))``, ``p = predictor(z)``.

    Projector: ``proj_layers`` linear layers of width ``dim`` with BN and ReLU, the last BN
    without affine parameters (the paper's CIFAR variant has 2 layers, ImageNet 3). Predictor:
    ``dim -> pred_hidden -> dim`` with BN and ReLU in the bottleneck (hidden = dim / 4 in the paper).
    """

    def __init__(self, backbone: nn.Module, *, dim: int = 2048, pred_hidden: int = 512, proj_layers: int = 2) -> None:
        super().__init__()
        width = int(backbone.out_features)  # type: ignore[arg-type]
        self.backbone = backbone
        self.projector = _mlp([width] + [dim] * proj_layers, last_bn_affine=False)
        self.predictor = _mlp([dim, pred_hidden, dim], last_bn_affine=None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> features f (B, d), projection z (B, dim), prediction p (B, dim)."""
        f = self.backbone(x)
        z = self.projector(f)
        return f, z, self.predictor(z)
