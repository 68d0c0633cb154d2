"""Tasks: what the training loop does with a batch.

A task supplies an epoch's batches, the loss of a batch, and a hook at the start of every
epoch. The loop (``longtail.loop.fit``) is the same for every method; supervised remedies,
self-supervised pre-training and semi-supervised training differ only in their task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Protocol, TypeVar, cast

import torch
import torch.nn as nn

from .data.augment import Augment, Batch, iterate_batches
from .data.imageset import ImageSet
from .data.mix import Mix, MixedBatch, mixed_loss
from .samplers import Sampler
from .weights import Weighting, reweighting_started

if TYPE_CHECKING:
    from .data.files import FileImageSet


#: a supervised task's batch: mixed (``augment.mix``) or not
TrainBatch = Batch | MixedBatch

#: a task's batch: ``Batch`` for the supervised tasks, others for FixMatch (``FixMatchBatch``) or
#: self-supervised pre-training (two views); a bare ``Task`` takes any
B = TypeVar("B")


class Task(Protocol[B]):
    """What the loop needs of a task, and what a task declares it supports (class attributes):

    - ``multi_process``: it can run under ``torchrun`` (each process takes its rows of every batch);
    - ``image_files``: its training set may be image files decoded per batch (``LoaderTask``);
    - ``graphable``: its loss reads only the batch and its per-class ``class_weight`` (None or a tensor), so
      a step can be captured as a CUDA graph (``longtail.graphs`` keeps the weights where the graph reads them).
    """

    # read-only: a class attribute or a property (a wrapper reads its inner task's)
    @property
    def multi_process(self) -> bool: ...

    @property
    def image_files(self) -> bool: ...

    @property
    def graphable(self) -> bool: ...

    def on_epoch_start(self, epoch: int) -> None: ...

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[B]: ...

    def loss(self, model: nn.Module, batch: B) -> torch.Tensor: ...

    def to(self, device: torch.device | str) -> "Task[B]": ...


class _Permutation:
    def __init__(self, n: int) -> None:
        self.n = n

    def epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.n, generator=generator, device=generator.device)


class SupervisedTask:
    """Classification with any loss, sampler and (deferred) per-class weighting.

    ``criterion(logits, targets, weight=None)`` is a loss from ``longtail.losses``; the
    weighting's ``weight_at(epoch)`` gives the per-class weights of an epoch (None: unweighted),
    which is how deferred re-weighting (DRW) switches at its epoch without a branch in the loop.
    ``mix`` (mixup or CutMix, :mod:`longtail.data.mix`): every batch is a ``MixedBatch`` and the loss is
    ``lam * L(logits, y_a) + (1 - lam) * L(logits, y_b)`` with the same loss and per-class weights.
    """

    multi_process = True
    image_files = True
    # Mixing keeps the task graphable: the permutation's labels (labels_b) and the share (lam) are tensors of
    # the batch, drawn in batches() outside the step, so the loss still reads only the batch and class_weight;
    # a CUDA graph copies them in with the images, and a batch left unmixed (mix_prob < 1) has lam = 1 and the
    # same shapes, so it replays the same graph.
    graphable = True

    def __init__(
        self,
        train: ImageSet | FileImageSet,
        criterion: nn.Module,
        *,
        batch_size: int,
        augment: Augment | None = None,
        sampler: Sampler | None = None,
        weighting: Weighting | None = None,
        mix: Mix | None = None,
    ) -> None:
        self.train = train
        self.criterion = criterion
        self.batch_size = batch_size
        self.augment = augment
        self.mix = mix
        self.sampler = sampler if sampler is not None else _Permutation(len(train))
        self.weighting = weighting
        self.class_weight: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "SupervisedTask":
        self.train = self.train.to(device)
        self.criterion = self.criterion.to(device)
        # Samplers built from the labels hold them: rebuild on the device lazily via attribute.
        if hasattr(self.sampler, "to"):
            self.sampler = self.sampler.to(device)
        return self

    def on_epoch_start(self, epoch: int) -> None:
        w = self.weighting.weight_at(epoch) if self.weighting is not None else None
        self.class_weight = None if w is None else w.to(self.train.device)
        truncate = getattr(self.criterion, "truncate", None)
        if truncate is not None:  # TLA (losses.TruncatedVS): its stage follows the deferred re-weighting's
            truncate(reweighting_started(self.weighting, epoch))

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[TrainBatch]:
        order = self.sampler.epoch_indices(generator)
        # image files are batched by LoaderTask (longtail.experiment.adapt_task), never here
        train = cast(ImageSet, self.train)
        batches = iterate_batches(train, order, self.batch_size, augment=self.augment, generator=generator,
                                  epoch=epoch)
        return batches if self.mix is None else self.mix.batches(batches, generator)

    def loss(self, model: nn.Module, batch: TrainBatch) -> torch.Tensor:
        logits = model(batch.images)
        if isinstance(batch, MixedBatch):
            return mixed_loss(self.criterion, logits.float(), batch.labels, batch.labels_b, batch.lam,
                              weight=self.class_weight)
        return self.criterion(logits.float(), batch.labels, weight=self.class_weight)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train) // self.batch_size)
