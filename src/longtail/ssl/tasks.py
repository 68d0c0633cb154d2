"""Pretext tasks for the one training loop (``longtail.loop.fit``): rotation, MoCo v2, SimSiam.

Each task follows the ``longtail.tasks.Task`` protocol (``on_epoch_start``, ``batches``,
``loss``, ``to``) and adds ``set_phase`` (the SAM phase hook), ``end_epoch`` (called by the
caller after the last step of an epoch, before a checkpoint), ``epoch_metrics`` and
``state_dict``/``load_state_dict`` (what a checkpoint must carry for an exact resume).

Once-per-step work (MoCo): the loop evaluates ``task.loss`` inside the optimiser's closure, once
per step for SGD and twice for SAM, with the *same* batch object both times. ``MoCoTask`` does
its once-per-step work when it sees a new batch object: enqueue the previous step's keys, update
the momentum encoder (with the weights the previous optimiser step produced, as MoCo does at the
start of its forward pass), compute this step's keys. The second SAM evaluation reuses those
keys and the same queue, so nothing is enqueued or updated twice. The last step's keys are
enqueued by ``end_epoch``, before the checkpoint, so a resumed run continues exactly.

rwSAM: during SAM's ascent pass a task multiplies each example's loss by
``example_weights.weights_at(epoch)[index]`` (see ``longtail.ssl.reweight``); the descent pass
and plain SGD steps are unweighted. During the descent pass BatchNorm running statistics are
frozen, so they are updated once per step.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, NamedTuple, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.augment import Augment, Batch, iterate_batches
from ..data.imageset import ImageSet
from ..distributed import Shard, all_gather, all_mean, unwrap
from ..errors import LongtailError
from .augment import TwoViewAugment
from .losses import info_nce, info_nce_logits, rotation_loss, simsiam_loss
from .models import MoCo, SimSiam
from .sam import PHASES, frozen_bn_statistics


class ViewPair(NamedTuple):
    """Two augmented views of the same images: (B, C, H, W) each; ``index`` are rows of the set."""

    view1: torch.Tensor
    view2: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor  # type: ignore[assignment]  # a field named like tuple.index, which it hides


class ExampleWeights(Protocol):
    def weights_at(self, epoch: int) -> torch.Tensor | None: ...


def rotate(images: torch.Tensor, generator: torch.Generator | None,
           mode: str = "balanced") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotate a (B, C, H, W) batch by multiples of 90 degrees; returns (images, rotation index, source row).

    ``balanced``: each image once, the rotations 0..3 on a random quarter of the batch each (as Yang
    & Xu 2020); ``all``: every image in all four rotations, (4B, C, H, W) (Gidaris et al. 2018).
    Rotation ``k`` is ``torch.rot90(x, k, dims=(2, 3))``: k x 90 degrees counter-clockwise.
    """
    b, _, h, w = images.shape
    if h != w:
        raise LongtailError(f"rotation prediction needs square images, got {h}x{w}")
    dev = images.device
    rotations = torch.stack([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])  # (4, B, C, H, W)
    rows = torch.arange(b, device=dev)
    if mode == "all":
        k = torch.arange(4, device=dev).repeat_interleave(b)
        return rotations.flatten(0, 1), k, rows.repeat(4)
    if generator is None:
        raise LongtailError("balanced rotations need an explicit torch.Generator")
    perm = torch.randperm(b, generator=generator, device=generator.device).to(dev)
    k = (rows % 4)[perm]
    return rotations[k, rows], k, rows


class _SSLTask:
    """What every pretext task shares: the image set, the SAM phase, example weights, epoch metrics."""

    multi_process = True  # rows rank::world of every batch (longtail.ssl.run under torchrun)
    image_files = False  # image files are decoded once to tensors before pre-training
    graphable = False  # SAM's two passes and the pretext state: eager steps

    def __init__(self, train: ImageSet, *, batch_size: int, example_weights: ExampleWeights | None = None,
                 drop_last: bool = True) -> None:
        if len(train) == 0:
            raise LongtailError("the training set is empty")
        self.train = train
        self.batch_size = int(batch_size)
        self.example_weights = example_weights
        self.drop_last = drop_last and len(train) >= batch_size
        self.phase = "plain"
        self.epoch = 0
        self._weights: torch.Tensor | None = None
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    # protocol -------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> "_SSLTask":
        self.train = self.train.to(device)
        return self

    def set_phase(self, phase: str) -> None:
        """The SAM phase hook: ``plain`` (no SAM, or between steps), ``ascent`` or ``descent``."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        self.phase = phase

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self._sums, self._counts = {}, {}
        self._weights = self.example_weights.weights_at(epoch) if self.example_weights is not None else None

    def end_epoch(self) -> None:
        """Finish the epoch's once-per-step work (the caller calls it before checkpointing)."""

    def current_weights(self, index: torch.Tensor) -> torch.Tensor | None:
        """The example weights that :meth:`loss` applies to rows ``index`` now: rwSAM's ascent pass only."""
        if self.phase == "ascent" and self._weights is not None:
            return self._weights[index.to(self._weights.device)]
        return None

    #: SAM's descent pass leaves BatchNorm's running statistics as the ascent pass left them (``ssl.sam_bn_stats``
    #: ``first``); False: both passes update them (``both``, Liu et al.'s rwSAM code)
    freeze_bn_in_descent = True

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        weight = self.current_weights(batch.index)
        freeze = (frozen_bn_statistics(model) if self.phase == "descent" and self.freeze_bn_in_descent
                  else contextlib.nullcontext())
        with freeze:
            return self._loss(model, batch, weight)

    def _loss(self, model: nn.Module, batch: Any, weight: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    # metrics ----------------------------------------------------------------------------------
    def _track(self, **values: torch.Tensor) -> None:
        """Accumulate per-step metrics on the device (no host sync); the descent pass is not counted."""
        if self.phase == "descent":
            return
        for k, v in values.items():
            v = v.detach().float()
            self._sums[k] = self._sums[k] + v if k in self._sums else v
            self._counts[k] = self._counts.get(k, 0) + 1

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's means; under ``torchrun`` averaged over the processes (every process must call it)."""
        if not self._sums:
            return {}
        names = sorted(self._sums)
        means = all_mean(torch.stack([self._sums[k] / self._counts[k] for k in names]))
        return {k: float(v) for k, v in zip(names, means.tolist())}

    def state_dict(self) -> dict[str, Any]:
        sd = getattr(self.example_weights, "state_dict", None)
        return {"example_weights": sd()} if sd is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "example_weights" in state and hasattr(self.example_weights, "load_state_dict"):
            self.example_weights.load_state_dict(state["example_weights"])  # type: ignore[union-attr]

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(len(self.train), generator=generator, device=generator.device).to(self.train.device)


class RotationTask(_SSLTask):
    """Predict the rotation (0/90/180/270) of each image with a 4-way head (a ``Classifier``).

    Images get the supervised recipe's crop and flip first (Yang & Xu 2020 pre-train with it).
    Metric: ``rotation_train_acc``, the training accuracy of the 4-way pretext task in % (not a
    classification accuracy).
    """

    def __init__(self, train: ImageSet, *, batch_size: int, augment: Augment | None = None, mode: str = "balanced",
                 example_weights: ExampleWeights | None = None) -> None:
        super().__init__(train, batch_size=batch_size, example_weights=example_weights, drop_last=False)
        self.augment = augment
        self.mode = mode

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[Batch]:
        for b in iterate_batches(self.train, self._order(generator), self.batch_size, augment=self.augment,
                                 generator=generator, drop_last=self.drop_last):
            images, k, rows = rotate(b.images, generator, self.mode)
            yield Batch(images, k, b.index[rows])

    def _loss(self, model: nn.Module, batch: Batch, weight: torch.Tensor | None) -> torch.Tensor:
        logits = model(batch.images)
        self._track(rotation_train_acc=100.0 * (logits.argmax(dim=1) == batch.labels).float().mean())
        return rotation_loss(logits, batch.labels, weight)


class _TwoViewTask(_SSLTask):
    def __init__(self, train: ImageSet, *, batch_size: int, augment: TwoViewAugment,
                 example_weights: ExampleWeights | None = None) -> None:
        super().__init__(train, batch_size=batch_size, example_weights=example_weights, drop_last=True)
        self.augment = augment

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[ViewPair]:
        data = self.train
        order = self._order(generator)
        n = order.numel()
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = data.images[idx]
            yield ViewPair(self.augment(x, generator, data.mean, data.std),
                           self.augment(x, generator, data.mean, data.std),
                           data.labels[idx], idx)


class MoCoTask(_TwoViewTask):
    """MoCo v2: InfoNCE of queries (view 1) against momentum keys (view 2) and the queue.

    Metric: ``instance_acc``, how often the positive key is the top logit among 1 + K (%).

    Under ``torchrun`` (``shard`` of several processes) the task takes the whole global batch, as
    every process draws the same epoch: each process computes the queries of its rows
    ``rank::world`` (through ``DistributedDataParallel``, which averages the gradients) and the keys
    of a random ``1/world`` of the batch (MoCo's shuffled BatchNorm: a query and its own key are
    normalised with different processes' statistics), then the keys are gathered and put back in
    batch order. Every process enqueues the whole batch's keys, so the queues stay identical and
    hold what one process with the whole batch would hold. Each process splits its BatchNorm into
    ``max(1, bn_splits // world)`` sub-batches (``MoCo.set_bn_groups``), so the whole batch is
    normalised in ``bn_splits`` groups as in one process (when ``world`` divides ``bn_splits``).

    In one process (MoCo's CIFAR-10 demo, facebookresearch/moco ``colab/moco_cifar10_demo.ipynb``):
    the model's BatchNorm is split into ``bn_splits`` sub-batches and the key batch goes through the
    momentum encoder in a random order, put back in batch order after (``MoCo.key`` with this task's
    shuffle generator), so a query and its own key share BatchNorm statistics only by chance, as on
    ``bn_splits`` GPUs. With ``bn_splits`` = 1 (no split BatchNorm) nothing is shuffled.

    The shuffle is drawn from a generator seeded by the epoch's (``initial_seed() + 0x5F3759DF``), the
    same on every process: a run's keys are a function of its seed alone, and a resumed run (it
    resumes at an epoch's start) draws the same.
    """

    def __init__(self, *args: Any, shard: Shard | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.shard = shard or Shard()
        self._step_batch: ViewPair | None = None
        self._keys: torch.Tensor | None = None
        self._model: MoCo | None = None
        self._shuffle: torch.Generator | None = None

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[ViewPair]:
        world = self.shard.world
        if world > 1 and not self.drop_last and len(self.train) % world:  # one batch, smaller than batch_size
            raise LongtailError(f"MoCo across {world} processes: the {len(self.train)} training images make one "
                                f"batch that does not split into {world} equal parts",
                                f"use more images, or a number of images divisible by {world}")
        if self.shard.world > 1 and self.batch_size % self.shard.world:
            raise LongtailError(f"MoCo across {self.shard.world} processes needs a batch size divisible by "
                                f"{self.shard.world}, got {self.batch_size}",
                                f"set train.batch_size to a multiple of {self.shard.world}")
        self._shuffle = torch.Generator(device=generator.device)
        self._shuffle.manual_seed(generator.initial_seed() + 0x5F3759DF)
        return super().batches(epoch, generator)

    def _loss(self, model: nn.Module, batch: ViewPair, weight: torch.Tensor | None) -> torch.Tensor:
        moco = unwrap(model)
        if not isinstance(moco, MoCo):
            raise LongtailError("MoCoTask needs a longtail.ssl.MoCo model")
        if batch is not self._step_batch:  # a new optimiser step, not SAM's second evaluation
            if self.shard.world > 1:
                moco.set_bn_groups(max(1, moco.bn_splits // self.shard.world))
            self._enqueue_pending()
            moco.momentum_update()
            self._keys = self._batch_keys(moco, batch.view2)
            self._step_batch, self._model = batch, moco
        assert self._keys is not None
        view1, keys, scale = batch.view1, self._keys, 1.0
        if self.shard.world > 1:  # this process's rows of the global batch
            rows, scale = self.shard.batch_rows(view1.shape[0])
            rows = rows.to(view1.device)
            view1, keys = view1[rows], keys[rows]
            if weight is not None:  # a weighted mean: this process's share is its share of the weight
                scale = self.shard.weighted_scale(weight, rows)  # type: ignore[assignment]
                weight = weight[rows.to(weight.device)]
        q = model(view1)  # through DDP under torchrun
        loss = info_nce(q, keys, moco.queue, moco.temperature, weight)
        with torch.no_grad():
            top = info_nce_logits(q, keys, moco.queue, moco.temperature).argmax(dim=1)
            self._track(instance_acc=100.0 * (top == 0).float().mean())
        return loss if isinstance(scale, float) and scale == 1.0 else loss * scale

    @torch.no_grad()
    def _batch_keys(self, moco: MoCo, view2: torch.Tensor) -> torch.Tensor:
        """The keys of the whole batch, in batch order; shuffled across the BatchNorm sub-batches in one
        process (when there are several), across processes under ``torchrun``."""
        world = self.shard.world
        if world == 1 and not moco.shuffles_keys:
            return moco.key(view2)
        if self._shuffle is None:
            raise LongtailError("MoCoTask shuffles its keys with a generator that batches() seeds",
                                "take the batches from task.batches(epoch, generator)")
        if world == 1:
            return moco.key(view2, self._shuffle)
        b = view2.shape[0]
        perm = torch.randperm(b, generator=self._shuffle, device=self._shuffle.device).to(view2.device)
        parts = all_gather(moco.key(view2[perm[self.shard.rank::world]]))
        keys = torch.empty(b, parts[0].shape[1], dtype=parts[0].dtype, device=parts[0].device)
        for r, part in enumerate(parts):
            keys[perm[r::world]] = part
        return keys

    def _enqueue_pending(self) -> None:
        if self._model is not None and self._keys is not None:
            self._model.enqueue(self._keys)
        self._keys, self._step_batch = None, None

    def end_epoch(self) -> None:
        self._enqueue_pending()


class SimSiamTask(_TwoViewTask):
    """SimSiam: symmetric negative cosine between predictions and stop-gradient projections.

    Metric: ``z_std``, the per-dimension std of the L2-normalised projections times sqrt(dim):
    about 1 for a healthy representation, 0 when it has collapsed to a constant (Chen & He 2021, Fig. 2).
    """

    def _loss(self, model: nn.Module, batch: ViewPair, weight: torch.Tensor | None) -> torch.Tensor:
        if not isinstance(unwrap(model), SimSiam):
            raise LongtailError("SimSiamTask needs a longtail.ssl.SimSiam model")
        _, z1, p1 = model(batch.view1)
        _, z2, p2 = model(batch.view2)
        with torch.no_grad():
            zn = F.normalize(z1.float(), dim=1)
            self._track(z_std=zn.std(dim=0).mean() * math.sqrt(zn.shape[1]))
        return simsiam_loss(p1, p2, z1, z2, weight)
