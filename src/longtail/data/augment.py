"""Batched augmentation and batching on whatever device the images live on.

All operations take a whole (B, C, H, W) uint8 batch at once, draw their randomness from an
explicit ``torch.Generator`` and never leave the device: no PIL, no DataLoader workers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F

from .autoaugment import AutoAugment
from .imageset import ImageSet
from .randaugment import Cutout, RandAugment


@dataclass(frozen=True)
class Augment:
    """The reference CIFAR augmentation: random crop with zero padding, horizontal flip; then, when asked
    (``augment.*`` of the config), AutoAugment's ``autoaugment`` policy (:mod:`longtail.data.autoaugment`:
    cifar10), RandAugment with ``randaugment`` ops and Cutout of a square of ``cutout`` times the side, both of
    ``policy`` (:mod:`longtail.data.randaugment`: fixmatch | usb); Cutout of ``cutout_policy`` instead when it is
    set (fixmatch | usb | devries), in that order."""

    crop_padding: int = 4
    flip: bool = True
    randaugment: int = 0
    randaugment_magnitude: int | None = None
    cutout: float = 0.0
    policy: str = "fixmatch"
    padding_mode: str = "zeros"  # the crop's border: zeros (the CIFAR-LT references) | reflect (USB)
    autoaugment: str = "none"  # none | cifar10 (AutoAugment's CIFAR-10 policy, before RandAugment)
    cutout_policy: str | None = None  # whose Cutout; None: that of ``policy``
    # random: each image mirrored with probability 1/2 every epoch | alternating (airbench's): a fixed half of the
    # images (a hash of their row and ``flip_salt``) mirrored in even epochs, the other half in odd ones
    flip_mode: str = "random"
    flip_salt: int = 0  # which half starts mirrored (the run's seed)
    # progressive resizing: the images of epochs 0 .. low_res_epochs - 1 are scaled down to low_res x low_res
    # pixels after every other augmentation (a smaller, cheaper input while the network learns coarse features)
    low_res: int = 0
    low_res_epochs: int = 0

    def __post_init__(self) -> None:  # bad settings fail when the run is built, not at its first batch
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"unknown crop padding mode {self.padding_mode!r}: use one of {PADDING_MODES}")
        if self.flip_mode not in FLIP_MODES:
            raise ValueError(f"unknown flip mode {self.flip_mode!r}: use one of {FLIP_MODES}")
        if self.autoaugment != "none":
            AutoAugment(self.autoaugment)
        if self.randaugment:
            RandAugment(self.randaugment, self.randaugment_magnitude, self.policy)
        if self.cutout:
            Cutout(self.cutout, self.cutout_policy or self.policy)
        if self.low_res < 0 or self.low_res_epochs < 0:
            raise ValueError(f"low_res={self.low_res} and low_res_epochs={self.low_res_epochs} must be >= 0")

    def __call__(self, images: torch.Tensor, generator: torch.Generator, rows: torch.Tensor | None = None,
                 epoch: int | None = None) -> torch.Tensor:
        """Augment a (B, C, H, W) batch; ``rows`` (the images' rows in their set) are needed by the alternating flip
        only, ``epoch`` by it and by progressive resizing."""
        if self.crop_padding:
            images = random_crop(images, self.crop_padding, generator, self.padding_mode)
        if self.flip and self.flip_mode == "alternating":
            if rows is None or epoch is None:
                raise ValueError("the alternating flip needs each image's row and the epoch; this task does not "
                                 "give them (use flip_mode='random')")
            images = alternating_flip(images, rows, epoch, self.flip_salt)
        elif self.flip:
            images = random_flip(images, generator)
        if self.autoaugment != "none":
            images = AutoAugment(self.autoaugment)(images, generator)
        if self.randaugment:
            images = RandAugment(self.randaugment, self.randaugment_magnitude, self.policy)(images, generator)
        if self.cutout:
            images = Cutout(self.cutout, self.cutout_policy or self.policy)(images, generator)
        if self.low_res and self.low_res_epochs:
            if epoch is None:
                raise ValueError("progressive resizing needs the epoch; this task does not give it (set low_res=0)")
            if epoch < self.low_res_epochs:
                images = resize(images, self.low_res)
        return images

    @property
    def active(self) -> bool:
        """Whether it changes anything (and so needs a generator)."""
        return bool(self.crop_padding or self.flip or self.autoaugment != "none" or self.randaugment or self.cutout
                    or (self.low_res and self.low_res_epochs))


def resize(images: torch.Tensor, side: int) -> torch.Tensor:
    """A (B, C, H, W) batch scaled to ``side`` x ``side`` pixels: bilinear with antialiasing (an area-like average
    when shrinking, so no aliasing of fine texture), uint8 in, uint8 out (rounded); float batches stay float."""
    if tuple(images.shape[-2:]) == (side, side):
        return images
    out = F.interpolate(images.float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else out.to(images.dtype)




def _rand(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    # Draw on the generator's device (a CPU generator may drive CUDA data), then move.
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(high, shape, generator=generator, device=generator.device).to(device)


PADDING_MODES = ("zeros", "reflect")
FLIP_MODES = ("random", "alternating")


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Positions ``-p..size-1+p`` of a reflect-padded axis as positions of the axis itself (no edge repeat,
    as ``numpy.pad(mode="reflect")`` and torchvision's ``padding_mode="reflect"``; needs p < size)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator,
                padding_mode: str = "zeros") -> torch.Tensor:
    """Pad each side by ``padding`` (zeros, or the image reflected) and crop back to (H, W) at a random offset
    per image.

    Same distribution as torchvision's ``RandomCrop(size, padding, padding_mode=...)``: each offset is uniform
    in ``0..2*padding`` independently per axis and per image; both modes draw the same offsets.
    (B, C, H, W) -> (B, C, H, W).
    """
    b, _, h, w = images.shape
    dy = _randint(2 * padding + 1, (b,), generator, images.device)
    dx = _randint(2 * padding + 1, (b,), generator, images.device)
    rows = dy[:, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=images.device)  # (B, W)
    if padding_mode == "reflect":
        if padding >= min(h, w):
            raise ValueError(f"reflect padding of {padding} needs images larger than that, got {h}x{w}")
        padded, rows, cols = images, _reflect(rows - padding, h), _reflect(cols - padding, w)
    else:
        padded = F.pad(images, (padding, padding, padding, padding))
    batch = torch.arange(b, device=images.device)[:, None, None]
    # Advanced indexing over (batch, rows, cols) with the channel slice in between puts the
    # advanced dimensions first: (B, H, W, C); move channels back.
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image horizontally with probability 1/2."""
    flip = _rand((images.shape[0],), generator, images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def flip_half(rows: torch.Tensor, salt: int = 0) -> torch.Tensor:
    """A fixed pseudo-random half of the rows (bool, one per row): the low bit of a 32-bit integer hash (two rounds
    of xor-shift-multiply by 0x45d9f3b) of ``row + salt * 0x9E3779B9``, so the choice needs no stored state and is
    the same on every device, in every epoch and after a resume; different salts give unrelated halves."""
    m = (1 << 32) - 1
    x = (rows.long() + int(salt) * 0x9E3779B9) & m
    for _ in range(2):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & m
    return ((x ^ (x >> 16)) & 1).bool()


def alternating_flip(images: torch.Tensor, rows: torch.Tensor, epoch: int, salt: int = 0) -> torch.Tensor:
    """airbench's alternating flip (Jordan 2024, section 3.6): image ``rows[i]`` is mirrored in even epochs when it
    is in :func:`flip_half`, in odd epochs when it is not, so every image is seen both ways in any two consecutive
    epochs (a random flip shows a quarter of them the same way twice). airbench pre-flips a random half once and
    mirrors the whole set every odd epoch: the same sequence, with its half drawn from the global RNG."""
    flip = flip_half(rows.to(images.device), salt) ^ bool(epoch % 2)
    return torch.where(flip[:, None, None, None], images.flip(3), images)


@functools.lru_cache(maxsize=32)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per (constants, device), not per batch: a per-batch torch.tensor(..., device=cuda) is a
    # host-to-device copy inside every training step.
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    return m, torch.tensor(std, device=device).view(1, -1, 1, 1)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 ``(x/255 - mean) / std``."""
    m, s = _channel_stats(tuple(mean), tuple(std), images.device)
    return (images.float() / 255.0 - m) / s


class Batch(NamedTuple):
    """One training or evaluation batch: normalised float images and labels; ``index`` are rows of the set."""

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor  # type: ignore[assignment]  # a field named like tuple.index, which it hides


def iterate_batches(
    data: ImageSet,
    order: torch.Tensor,
    batch_size: int,
    *,
    augment: Augment | None = None,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    epoch: int | None = None,
) -> Iterator[Batch]:
    """Batches of ``data`` in the row order ``order`` (from a sampler).

    The augmentation for the whole epoch is drawn in one batched pass before the first batch
    (cheaper than one small kernel launch per batch); normalisation happens per batch so only
    uint8 copies of the epoch are held. ``epoch`` is needed by the alternating flip and by progressive resizing.
    """
    order = order.to(data.device)
    images = data.images[order]
    if augment is not None and augment.active:
        if generator is None:
            raise ValueError("augmentation needs an explicit torch.Generator")
        images = augment(images, generator, order, epoch)
    labels = data.labels[order]
    n = order.numel()
    stop = n - (n % batch_size) if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        yield Batch(normalize(images[start:end], data.mean, data.std), labels[start:end], order[start:end])


def eval_batches(data: ImageSet, batch_size: int = 512) -> Iterator[Batch]:
    """Batches of ``data`` in its own order, without augmentation."""
    return iterate_batches(data, torch.arange(len(data), device=data.device), batch_size)
