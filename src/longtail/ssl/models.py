"""Pre-training models: a backbone plus the heads of a pretext task.

Every model keeps the backbone under the attribute ``backbone``, so its tensors are
``backbone.*`` in a checkpoint, exactly as in ``Classifier``; everything else is a head that
:func:`longtail.ssl.load_pretrained_backbone` ignores (``HEAD_MODULES``).

* rotation: ``Classifier(backbone, LinearHead(d, 4))``, the head named ``head``.
* MoCo v2: ``projector`` (MLP d -> hidden -> dim, or linear d -> dim with hidden 0), a momentum copy of
  backbone and projector (``momentum_backbone``, ``momentum_projector``) and the ``queue`` (K, dim) of negatives.
* SimSiam: ``projector`` (MLP with BatchNorm, last BN without affine) and ``predictor``
  (bottleneck MLP dim -> hidden -> dim).
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import Classifier
from ..models.heads import LinearHead


def rotation_model(backbone: nn.Module) -> Classifier:
    """The backbone with a 4-way rotation head (0, 90, 180, 270 degrees)."""
    return Classifier(backbone, LinearHead(int(backbone.out_features), 4))  # type: ignore[arg-type]


class SplitBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over ``num_splits`` sub-batches in training mode: one device normalises as several would.

    Source: the ``SplitBatchNorm`` layer of MoCo's CIFAR-10 demo (facebookresearch/moco,
    ``colab/moco_cifar10_demo.ipynb``), which simulates the per-GPU BatchNorm of MoCo's 8-GPU runs on
    one GPU. As there, the batch (N rows) is viewed as (N / s, s * C, ...), so sub-batch ``k`` holds the
    rows ``k, k + s, k + 2s, ...`` (row ``i`` in sub-batch ``i mod s``), each normalised with its own
    mean and (biased) variance by one ``batch_norm`` call; the running statistics move once per forward
    pass towards the mean over the sub-batches of their mean and unbiased variance, which is what the
    demo's average of ``s`` separately updated copies comes to. In eval mode (with running statistics)
    it is plain BatchNorm.

    Deviations from the demo (which handles ``BatchNorm2d`` and batches divisible by ``s`` only): any
    BatchNorm class whose ``forward`` is the standard one (1d/2d/3d and subclasses such as
    ``FrozenScaleBatchNorm``) can be split; ``momentum=None`` (a cumulative average) and
    ``num_batches_tracked`` behave as in ``nn.BatchNorm``; a batch of N rows uses ``min(s, N // 2)``
    sub-batches (each has at least 2 rows), the same strided rows ``i mod s`` when ``s`` does not divide
    ``N`` (then one ``batch_norm`` call per sub-batch); momentum 0 (SAM's frozen statistics) leaves the
    running statistics bit for bit unchanged.

    The parameters and buffers are those of the BatchNorm it replaces (:func:`split_batchnorm`), so a
    state dict has the same keys and loads into a plain BatchNorm.
    """

    num_splits: int = 1

    def __init__(self, num_features: int, num_splits: int = 1, **kw: Any) -> None:
        super().__init__(num_features, **kw)
        self.num_splits = int(num_splits)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        n = x.shape[0]
        groups = min(int(self.num_splits), n // 2)
        batch_statistics = self.training or (self.running_mean is None and self.running_var is None)
        if groups <= 1 or not batch_statistics:
            return super().forward(x)
        update = self.training and self.running_mean is not None and self.running_var is not None
        factor = 0.0
        if update:
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None  # type: ignore[arg-type]
                      else float(self.momentum))
        c = self.num_features
        stats = self.running_mean if update else None

        def scratch(k: int) -> torch.Tensor | None:  # batch_norm writes a group's mean / unbiased variance here
            return torch.zeros(k * c, dtype=stats.dtype, device=stats.device) if stats is not None else None

        if n % groups == 0:  # one call: channel k*C + c of the view is channel c of the rows k::groups
            mean, var = scratch(groups), scratch(groups)
            w = self.weight.repeat(groups) if self.weight is not None else None
            b = self.bias.repeat(groups) if self.bias is not None else None
            y = F.batch_norm(x.reshape(n // groups, groups * c, *x.shape[2:]), mean, var, w, b, True, 1.0,
                             self.eps).reshape(x.shape)
        else:  # sub-batches of unequal size: one call each, the rows put back in order
            outs, means, variances = [], [], []
            for k in range(groups):
                m, v = scratch(1), scratch(1)
                outs.append(F.batch_norm(x[k::groups], m, v, self.weight, self.bias, True, 1.0, self.eps))
                means.append(m)
                variances.append(v)
            order = torch.cat([torch.arange(k, n, groups, device=x.device) for k in range(groups)])
            y = torch.cat(outs)[torch.argsort(order)]
            mean = torch.cat(means) if update else None  # type: ignore[arg-type]
            var = torch.cat(variances) if update else None  # type: ignore[arg-type]
        if update and factor != 0.0:
            assert mean is not None and var is not None
            with torch.no_grad():
                self.running_mean.mul_(1.0 - factor).add_(mean.view(groups, c).mean(0), alpha=factor)  # type: ignore[union-attr]
                self.running_var.mul_(1.0 - factor).add_(var.view(groups, c).mean(0), alpha=factor)  # type: ignore[union-attr]
        return y


class SplitBatchNorm1d(SplitBatchNorm, nn.BatchNorm1d):
    """:class:`SplitBatchNorm` for (N, C) and (N, C, L) inputs."""


class SplitBatchNorm2d(SplitBatchNorm, nn.BatchNorm2d):
    """:class:`SplitBatchNorm` for (N, C, H, W) inputs (the demo's layer)."""


class SplitBatchNorm3d(SplitBatchNorm, nn.BatchNorm3d):
    """:class:`SplitBatchNorm` for (N, C, D, H, W) inputs."""


_SPLIT_CLASSES: dict[type, type] = {nn.BatchNorm1d: SplitBatchNorm1d, nn.BatchNorm2d: SplitBatchNorm2d,
                                    nn.BatchNorm3d: SplitBatchNorm3d}


def _split_class(cls: type) -> type:
    if cls not in _SPLIT_CLASSES:  # a BatchNorm subclass (e.g. FrozenScaleBatchNorm): the split twin of it
        _SPLIT_CLASSES[cls] = type(f"Split{cls.__name__}", (SplitBatchNorm, cls), {"__module__": __name__})
    return _SPLIT_CLASSES[cls]


def split_batchnorm(module: nn.Module, splits: int) -> nn.Module:
    """Make every BatchNorm layer of ``module`` a :class:`SplitBatchNorm` over ``splits`` sub-batches, in place.

    Each layer keeps its parameters, buffers, mode and hooks (its class becomes the split twin of its
    own class); layers that are already split get the new count; ``SyncBatchNorm`` and other classes
    with their own ``forward`` are left alone. Returns ``module`` (for a BatchNorm itself, the same object).
    """
    splits = int(splits)
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    for m in module.modules():
        if isinstance(m, SplitBatchNorm):
            m.num_splits = splits
        elif (isinstance(m, nn.modules.batchnorm._BatchNorm)
              and type(m).forward is nn.modules.batchnorm._BatchNorm.forward):
            m.__class__ = _split_class(type(m))
            cast(SplitBatchNorm, m).num_splits = splits
    return module


class MoCo(nn.Module):
    """MoCo v2 (He et al. 2020; Chen et al. 2020): query encoder, momentum key encoder, queue.

    ``queue`` (K, dim) holds L2-normalised keys of past batches; ``queue_ptr`` the next row to
    write. The momentum encoder is updated ``theta_k <- m theta_k + (1 - m) theta_q`` (parameters
    only; its BatchNorm statistics are its own) by :meth:`momentum_update`, which the task calls
    once per optimiser step.

    Shuffled BN (MoCo's answer to BatchNorm letting a query and its own key share batch statistics,
    an information leak the network exploits): MoCo runs each GPU's BatchNorm on its own part of the
    batch and shuffles the keys across the GPUs before the key encoder, unshuffling them after. On one
    device this follows MoCo's CIFAR-10 demo (facebookresearch/moco, ``colab/moco_cifar10_demo.ipynb``,
    8 splits of batch 512 by default there): with ``bn_splits`` > 1 every BatchNorm of both encoders is a
    :class:`SplitBatchNorm` over ``bn_splits`` sub-batches (rows ``i mod bn_splits``), the queries go
    through in batch order, and :meth:`key` given a generator permutes the key batch before the momentum
    encoder and puts the keys back in batch order after (the demo's ``_batch_shuffle_single_gpu`` /
    ``_batch_unshuffle_single_gpu``), so a query and its key share a sub-batch only by chance (1 in
    ``bn_splits``), as on ``bn_splits`` GPUs. Deviation: the permutation comes from an explicit
    ``torch.Generator`` (the task's, seeded from the run's seed), not the global random state.
    ``bn_splits`` = 1 is plain BatchNorm over the whole batch (no shuffle can help there).

    Across processes (``torchrun``) the task shuffles the keys over the processes as MoCo does
    (``longtail.ssl.tasks.MoCoTask``) and splits each process's part into ``bn_splits // world``
    sub-batches (:meth:`set_bn_groups`), so ``bn_splits`` is the number of BatchNorm groups of the
    whole batch however many processes compute it.
    """

    queue: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(self, backbone: nn.Module, *, dim: int = 128, hidden: int = 512, queue_size: int = 4096,
                 momentum: float = 0.99, temperature: float = 0.2, bn_splits: int = 1) -> None:
        super().__init__()
        width = int(backbone.out_features)  # type: ignore[arg-type]
        self.bn_splits = int(bn_splits)
        if self.bn_splits < 1:
            raise ValueError(f"bn_splits must be >= 1, got {bn_splits}")
        self.backbone = split_batchnorm(backbone, self.bn_splits) if self.bn_splits > 1 else backbone
        # hidden 0: one linear layer d -> dim (MoCo v1; MoCo's CIFAR demo, whose head is resnet18's fc)
        self.projector = (nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
                          if hidden > 0 else nn.Sequential(nn.Linear(width, dim)))
        self.momentum_backbone = copy.deepcopy(self.backbone)  # BatchNorm split as the query's
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in list(self.momentum_backbone.parameters()) + list(self.momentum_projector.parameters()):
            p.requires_grad_(False)
        self.momentum, self.temperature = float(momentum), float(temperature)
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
        """(B, C, H, W) -> (B, dim) normalised queries (with gradients), the rows in batch order."""
        return F.normalize(self._query_encoder(x).float(), dim=1)

    @torch.no_grad()
    def key(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, dim) normalised keys from the momentum encoder (no gradients).

        With ``generator`` the rows go through the encoder in a random order drawn from it (shuffled
        BN on one device) and come back in batch order; without, in batch order.
        """
        if generator is None:
            return F.normalize(self._key_encoder(x).float(), dim=1)
        perm = torch.randperm(x.shape[0], generator=generator, device=generator.device).to(x.device)
        keys = F.normalize(self._key_encoder(x[perm]).float(), dim=1)
        out = torch.empty_like(keys)
        out[perm] = keys  # row perm[j] of the batch went through as row j
        return out

    @property
    def shuffles_keys(self) -> bool:
        """Whether the key encoder has BatchNorm split into sub-batches, so a key shuffle changes the keys."""
        return any(isinstance(m, SplitBatchNorm) and m.num_splits > 1 for m in self._key_modules())

    def _key_modules(self) -> list[nn.Module]:
        return list(self.momentum_backbone.modules()) + list(self.momentum_projector.modules())

    def set_bn_groups(self, groups: int) -> None:
        """Split the BatchNorm layers of both encoders into ``groups`` sub-batches (only if ``bn_splits`` > 1).

        The task calls it under ``torchrun``: each process's part of the batch is ``bn_splits // world``
        sub-batches. ``bn_splits`` itself (the configured count) does not change.
        """
        for m in self.modules():
            if isinstance(m, SplitBatchNorm):
                m.num_splits = max(1, int(groups))

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        q: list[torch.Tensor] = [*self.backbone.parameters(), *self.projector.parameters()]
        k: list[torch.Tensor] = [*self.momentum_backbone.parameters(), *self.momentum_projector.parameters()]
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
