"""Batches of image files: decoding and augmentation in DataLoader workers, for the one training loop.

The training recipe of the ImageNet-LT / iNaturalist references (Liu et al. 2019; Kang et al. 2020):
``RandomResizedCrop(S)``, horizontal flip and ``ColorJitter(0.4, 0.4, 0.4)`` for training (no jitter
on iNaturalist 2018, as Kang et al.'s ``get_data_transform``: ``FileImageSet.color_jitter``);
``Resize(S * 256 / 224)`` and ``CenterCrop(S)`` for evaluation, with ``S = data.image_size``
(224). Images are decoded with PIL and transformed by ``torchvision.transforms.v2`` when
torchvision is installed (a PIL implementation of the same transforms otherwise), in worker
processes, and reach the main process as uint8 (3, S, S); normalisation happens on the device.

Determinism: which images an epoch visits is the sampler's draw from the loop's ``(seed, epoch)``
generator, as for tensor data sets; each visit also draws a 31-bit seed from that generator, and
the transform of that image runs under it. So an epoch's batches do not depend on the number of
workers, on the number of processes (:mod:`longtail.distributed`) or on resuming.

:class:`LoaderTask` wraps a task built for the file set (``SupervisedTask``, ``MFWTask``, ...):
its sampler, criterion and re-weighting are used unchanged; only the batches come from here.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ..devices import autocast_for
from ..distributed import Shard, TaskWrapper
from ..errors import LongtailError
from .augment import Batch, eval_batches, normalize
from .files import FileImageSet

#: the evaluation resize before the centre crop is image_size * 256 / 224 (256 for 224), as in the references
EVAL_RESIZE_RATIO = 256 / 224
#: views of :func:`eval_transform`: eval (resize to image_size * 256 / 224, centre crop) | whole (resize to
#: image_size, centre crop: the whole of a square image); ``config.DataConfig.decode_view``
EVAL_VIEWS = ("eval", "whole")
EVAL_BATCH_SIZE = 256


# ------------------------------------------------------------------------------------------------
# transforms: PIL image -> uint8 (3, S, S) tensor
# ------------------------------------------------------------------------------------------------
def train_transform(size: int, flip: bool = True, jitter: float = 0.4) -> Callable[[Any], torch.Tensor]:
    """RandomResizedCrop(size) (scale 0.08..1, ratio 3/4..4/3), flip, ColorJitter(jitter, jitter, jitter)
    (left out for ``jitter=0``)."""
    if jitter < 0:
        raise LongtailError(f"colour jitter must be >= 0, got {jitter}")
    try:
        from torchvision.transforms import v2
    except ImportError:
        return PilTrainTransform(size, flip=flip, jitter=jitter)
    steps = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(0.5 if flip else 0.0)]
    if jitter > 0:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    return v2.Compose([*steps, v2.PILToTensor()])


def eval_transform(size: int, view: str = "eval") -> Callable[[Any], torch.Tensor]:
    """``view="eval"`` (the references' evaluation): resize the short side to round(size * 256 / 224), then
    CenterCrop(size). ``view="whole"``: resize the short side to ``size`` (same resampling; an image whose short
    side is ``size`` already is not resampled), then CenterCrop(size): a square image is kept whole, a non-square
    one loses only the ends of its long side (``data.decode_view``, for images decoded into memory)."""
    if view not in EVAL_VIEWS:
        raise LongtailError(f"unknown evaluation view {view!r}", f"use one of: {', '.join(EVAL_VIEWS)}")
    resize = int(round(size * EVAL_RESIZE_RATIO)) if view == "eval" else size
    try:
        from torchvision.transforms import v2
    except ImportError:
        return PilEvalTransform(size, resize)
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size), v2.PILToTensor()])


def _pil_to_tensor(im: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class PilTrainTransform:
    """The training transform without torchvision: same distributions, PIL operations, torch's RNG."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), jitter: float = 0.4, flip: bool = True) -> None:
        self.size, self.scale, self.ratio, self.jitter, self.flip = size, scale, ratio, jitter, flip

    def crop_box(self, w: int, h: int) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params: 10 tries of area and log-uniform aspect, then the centre."""
        area = w * h
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(*self.scale))
            aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio)))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,)))
                left = int(torch.randint(0, w - cw + 1, (1,)))
                return left, top, left + cw, top + ch
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        left, top = (w - cw) // 2, (h - ch) // 2
        return left, top, left + cw, top + ch

    def __call__(self, im: Any) -> torch.Tensor:
        from PIL import Image, ImageEnhance, ImageOps

        im = im.resize((self.size, self.size), Image.Resampling.BILINEAR, box=self.crop_box(*im.size))
        if float(torch.rand(1)) < (0.5 if self.flip else 0.0):
            im = ImageOps.mirror(im)
        if self.jitter <= 0:
            return _pil_to_tensor(im)
        ops = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
        for k in torch.randperm(3).tolist():
            im = ops[k](im).enhance(float(torch.empty(1).uniform_(1 - self.jitter, 1 + self.jitter)))
        return _pil_to_tensor(im)


class PilEvalTransform:
    """Resize the short side to ``resize`` (bilinear), centre crop ``size``."""

    def __init__(self, size: int, resize: int) -> None:
        self.size, self.resize = size, resize

    def __call__(self, im: Any) -> torch.Tensor:
        from PIL import Image

        w, h = im.size
        s = self.resize / min(w, h)
        im = im.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.Resampling.BILINEAR)
        w, h = im.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        return _pil_to_tensor(im.crop((left, top, left + self.size, top + self.size)))


# ------------------------------------------------------------------------------------------------
# decoding in workers
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a transform under ``seed``; in the main process, leave its global RNG state as it was."""
    if get_worker_info() is not None:  # a worker: its global RNG is its own
        torch.manual_seed(seed)
        yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield


class DecodedImages(Dataset):
    """Item ``(row, seed)`` -> (uint8 (3, S, S), label, row, error message or "").

    An unreadable image gives a zero image and its error instead of raising in the worker, so the
    main process decides (stop or skip) with the file name at hand.
    """

    def __init__(self, data: FileImageSet, transform: Callable[[Any], torch.Tensor]) -> None:
        # One numpy buffer instead of a list of str: forked workers would otherwise copy every
        # string's page as they touch its reference count.
        self.paths = np.array([str(data.path(i)).encode() for i in range(len(data))], dtype=np.bytes_)
        self.labels = data.labels.cpu().numpy()
        self.transform = transform
        self.size = data.image_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int, str]:
        from PIL import Image

        row, seed = item
        try:
            with Image.open(self.paths[row].decode()) as im:
                rgb = im.convert("RGB")
            with _seeded(seed):
                x = self.transform(rgb)
            return x, int(self.labels[row]), row, ""
        # missing, not an image, truncated
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), int(self.labels[row]), row, \
                f"{type(e).__name__}: {e}"


class _Plan:
    """The DataLoader's batch sampler: the batches of (row, seed) of the current pass, set before each."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class FileLoader:
    """Decodes planned batches of a :class:`FileImageSet` with ``data.num_workers`` worker processes.

    :meth:`run` yields ``(images uint8 (b, 3, S, S), labels (b,), rows (b,), usable)`` per planned
    batch, on the CPU. Unreadable images stop with a :class:`LongtailError` (``on_bad_image="stop"``)
    or are left out and recorded in ``skipped`` (row -> error); a batch with no readable image keeps
    its first (zero) image with ``usable=False``, so every process still takes the step.
    """

    def __init__(self, data: FileImageSet, *, train: bool, flip: bool = True, pin_memory: bool = False,
                 view: str = "eval") -> None:
        """``view``: the evaluation transform's view (``train=False``), see :func:`eval_transform`."""
        self.data = data
        self.plan = _Plan()
        transform = (train_transform(data.image_size, flip, data.color_jitter) if train
                     else eval_transform(data.image_size, view))
        workers = data.num_workers
        # Workers start with each pass and end with it (not persistent): a pass's workers are forked from
        # a process that holds no other pass's live workers (a forked copy of those fails on exit).
        self.loader = DataLoader(DecodedImages(data, transform), batch_sampler=self.plan, num_workers=workers,
                                 pin_memory=pin_memory, prefetch_factor=4 if workers > 0 else None)
        self.skipped: dict[int, str] = {}

    def run(self, batches: list[list[tuple[int, int]]], *, keep_bad: bool = False
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]]:
        """``keep_bad``: under "skip", keep unreadable rows as zero images (rows stay aligned)."""
        self.plan.batches = batches
        for x, y, rows, errors in self.loader:
            bad = [k for k, e in enumerate(errors) if e]
            if not bad:
                yield x, y, rows, True
                continue
            if self.data.on_bad_image == "stop":
                k = bad[0]
                raise LongtailError(
                    f"cannot read image {self.data.path(int(rows[k]))}: {errors[k]}",
                    "replace or remove the file (and its line in the split file), or set data.on_bad_image=skip "
                    "to leave unreadable images out (they are counted in the report)")
            for k in bad:
                self.skipped[int(rows[k])] = errors[k]
            if keep_bad:
                yield x, y, rows, True
                continue
            keep = torch.tensor([not e for e in errors])
            if keep.any():
                yield x[keep], y[keep], rows[keep], True
            else:
                yield x[:1], y[:1], rows[:1], False


def to_device(x: torch.Tensor, data: FileImageSet, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, S, S) on the CPU -> normalised float32 on ``device`` (channels-last on CUDA)."""
    x = normalize(x.to(device, non_blocking=True), data.mean, data.std)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


# ------------------------------------------------------------------------------------------------
# the task and evaluation
# ------------------------------------------------------------------------------------------------
class LoaderTask(TaskWrapper):
    """A task over a :class:`FileImageSet` whose batches are decoded by a :class:`FileLoader`.

    ``inner``: the task built for the same set (its ``sampler``, ``batch_size``, ``loss`` and
    ``on_epoch_start`` are used as they are; of its ``augment``, only ``flip``). Each epoch: the
    sampler's order and one seed per visit are drawn from the loop's generator; the order is cut into
    global batches of ``batch_size``; this process decodes rows ``rank::world`` of each (see
    :mod:`longtail.distributed`) and scales its loss by ``n_rank * world / n_batch``.
    """

    def __init__(self, inner: Any, *, shard: Shard | None = None) -> None:
        if not isinstance(inner.train, FileImageSet):
            raise LongtailError(f"LoaderTask needs image files, got {type(inner.train).__name__}")
        super().__init__(inner, shard)
        self.device = inner.train.device
        self._loader: FileLoader | None = None

    image_files = True

    graphable = False  # batches decoded by worker processes, of changing composition

    @property
    def skipped(self) -> dict[int, str]:
        """Training rows left out as unreadable (``on_bad_image="skip"``), with their errors."""
        return self._loader.skipped if self._loader is not None else {}

    def to(self, device: torch.device | str) -> "LoaderTask":
        self.inner = self.inner.to(device)
        self.device = torch.device(device)
        return self

    def on_epoch_start(self, epoch: int) -> None:
        self.inner.on_epoch_start(epoch)

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[Batch]:
        if self._loader is None:
            flip = getattr(self.inner.augment, "flip", True)  # train.flip; crop_padding is for small tensor images
            self._loader = FileLoader(self.train, train=True, flip=flip, pin_memory=self.device.type == "cuda")
        order = self.inner.sampler.epoch_indices(generator).cpu()
        seeds = torch.randint(0, 2**31 - 1, (order.numel(),), generator=generator, device=generator.device).cpu()
        n, size = order.numel(), self.inner.batch_size
        plan, scales = [], []
        for start in range(0, n, size):
            rows, scale = self.shard.batch_rows(min(size, n - start))
            rows = rows + start
            plan.append(list(zip(order[rows].tolist(), seeds[rows].tolist())))
            scales.append(scale)
        mix = getattr(self.inner, "mix", None)  # augment.mix: each process mixes its own rows of the batch
        for (x, y, rows, usable), scale in zip(self._loader.run(plan), scales):
            self.scale = scale if usable else 0.0  # read by loss() for this batch
            batch = Batch(to_device(x, self.train, self.device), y.to(self.device), rows.to(self.device))
            yield batch if mix is None else mix(batch, generator)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        loss = self.inner.loss(model, batch)
        return loss if self.scale == 1.0 else loss * self.scale

    @property
    def steps_per_epoch(self) -> int:
        n = getattr(self.inner.sampler, "num_samples", len(self.train))
        return -(-n // self.inner.batch_size)


@torch.no_grad()
def predict_files(model: nn.Module, data: FileImageSet, device: torch.device, amp: str = "auto",
                  rows: torch.Tensor | None = None, batch_size: int = EVAL_BATCH_SIZE
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[int, str]]:
    """Logits (n, C) float32 on the CPU, labels (n,) and rows (n,) of ``data``'s ``rows`` (default all),
    with the evaluation transform; plus the rows skipped as unreadable (``on_bad_image="skip"``)."""

    rows = torch.arange(len(data)) if rows is None else rows.cpu()
    plan = [[(r, 0) for r in rows[k:k + batch_size].tolist()] for k in range(0, rows.numel(), batch_size)]
    loader = FileLoader(data, train=False, pin_memory=device.type == "cuda")
    model.eval()
    outs, labels, index = [], [], []
    for x, y, r, usable in loader.run(plan):
        if not usable:
            continue
        with autocast_for(device, amp):
            outs.append(model(to_device(x, data, device)).float().cpu())
        labels.append(y)
        index.append(r)
    if not outs:
        c = len(data.class_names)
        return torch.zeros(0, c), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), loader.skipped
    return torch.cat(outs), torch.cat(labels), torch.cat(index), loader.skipped


def feature_batches(data: Any, device: torch.device, batch_size: int = EVAL_BATCH_SIZE) -> Iterator[Batch]:
    """Evaluation batches of any image set in its own order, on ``device``: tensors or files.

    For code that needs the images themselves (e.g. backbone features for tau selection). Under
    ``on_bad_image="skip"`` an unreadable file comes as a zero image, so row ``i`` of the output
    is row ``i`` of ``data`` (and of ``data.labels``).
    """
    if not isinstance(data, FileImageSet):
        yield from eval_batches(data, batch_size)
        return
    rows = torch.arange(len(data))
    plan = [[(r, 0) for r in rows[k:k + batch_size].tolist()] for k in range(0, len(data), batch_size)]
    loader = FileLoader(data, train=False, pin_memory=device.type == "cuda")
    for x, y, r, _ in loader.run(plan, keep_bad=True):
        yield Batch(to_device(x, data, device), y.to(device), r.to(device))


__all__ = ["DecodedImages", "EVAL_RESIZE_RATIO", "FileLoader", "LoaderTask", "PilEvalTransform", "PilTrainTransform",
           "eval_transform", "feature_batches", "predict_files", "to_device", "train_transform"]
