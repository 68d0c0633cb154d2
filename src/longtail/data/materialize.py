"""Decode an image-file data set once into a uint8 tensor ``ImageSet``.

Self-supervised pre-training (``longtail.ssl``) augments whole batches on the device, and so do
supervised runs with ``data.in_memory=true`` (:func:`longtail.data.registry.decode_in_memory`); for
ImageNet-LT, iNaturalist or a folder this module decodes every image once, in DataLoader workers, to a
centre square of ``size`` pixels, after which the tensor code paths apply unchanged. The square is the
file pipeline's evaluation view (``view="eval"``: short side resized to size x 256/224, centre crop), or
with ``view="whole"`` the whole image (short side resized to size, not resampled when it is that size
already, centre crop: only the long side of a non-square image is cut; ``data.decode_view`` of
``data.in_memory``). Self-supervised pre-training takes the evaluation view; the random resized crops of
MoCo / SimSiam are then drawn inside that square rather than over the whole original image.
Memory: N x 3 x size x size bytes (ImageNet-LT's 115.8k training images at 224 px are about 17 GB of
host memory; at 160 px about 9 GB).

Under ``torchrun`` each process decodes only its rows ``rank::world`` and the processes exchange
them on ``device`` (the GPUs under NCCL): the decoding is split N ways and each process holds about
1/N of the set in host memory, the whole set only on its device.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..distributed import Shard, all_gather, current
from ..errors import LongtailError
from .files import FileImageSet
from .imageset import ImageSet
from .loader import FileLoader


def materialize(data: FileImageSet, *, size: int | None = None, batch_size: int = 256,
                device: torch.device | str | None = None, across_processes: bool = True,
                skipped: dict[int, str] | None = None, view: str = "eval") -> ImageSet:
    """``data`` decoded to (N, 3, size, size) uint8 (size defaults to ``data.image_size``), on ``device``.

    ``view``: ``"eval"`` (resize the short side to round(size x 256 / 224), centre crop) or ``"whole"`` (resize
    the short side to size, centre crop), see :func:`longtail.data.loader.eval_transform`.

    Images that cannot be read stop with the file's name, or are left out under
    ``data.on_bad_image=skip``; rows keep their ``source_index`` and the order of ``data``.
    ``skipped``: a dict to fill with row of ``data`` -> error of each image left out (this process's rows).
    ``across_processes=False``: this process decodes every image itself, with no collective call (under
    ``torchrun``, for code that runs on one process at a time, e.g. inside ``distributed.main_first``).
    """
    from dataclasses import replace

    shard = current() if across_processes else Shard()
    size = size or data.image_size
    device = torch.device(device) if device is not None else torch.device("cpu")
    loader = FileLoader(replace(data, image_size=size), train=False, view=view)  # an evaluation view, no randomness
    mine = shard.rows(len(data)).tolist()
    plan = [[(r, 0) for r in mine[i:i + batch_size]] for i in range(0, len(mine), batch_size)]
    images = [torch.zeros(0, 3, size, size, dtype=torch.uint8)]
    rows = [torch.zeros(0, dtype=torch.long)]
    for x, _, r, usable in loader.run(plan):
        if usable:
            images.append(x)
            rows.append(r.long())
    if skipped is not None:
        skipped.update(loader.skipped)
    x = torch.cat(images).to(device)
    r = torch.cat(rows).to(device)
    if shard.world > 1:
        x, r = _gather_rows(x, r)
    if r.numel() == 0:
        raise LongtailError(f"{data.name}: no readable image", "check data.root and the split files")
    r_cpu = r.cpu()
    # source_index: None only before FileImageSet.__post_init__ fills it
    return ImageSet(x.contiguous(), data.labels.cpu()[r_cpu].to(device), data.class_names, mean=data.mean,
                    std=data.std, name=data.name,
                    source_index=data.source_index.cpu()[r_cpu].to(device))  # type: ignore[union-attr]


def _gather_rows(x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's decoded rows on every process, in row order (shards may differ in size).

    The set is assembled in one tensor: each process broadcasts its part in turn, written straight
    into its rows, so a device holds the whole set plus one part at most (not the set twice).
    """

    shard = current()
    counts = [int(c) for c in all_gather(torch.tensor([rows.numel()], device=rows.device))]
    most = max(counts)
    padded = torch.cat([rows, rows.new_full((most - rows.numel(),), -1)])
    all_rows = torch.cat([part[:n] for part, n in zip(all_gather(padded), counts)])  # small: one index a row
    position = torch.empty_like(all_rows)
    position[torch.argsort(all_rows)] = torch.arange(all_rows.numel(), device=all_rows.device)
    out = x.new_empty((all_rows.numel(), *x.shape[1:]))
    start = 0
    for r, n in enumerate(counts):
        part = x if r == shard.rank else x.new_empty((n, *x.shape[1:]))
        if n:
            dist.broadcast(part, src=r)
            out[position[start:start + n]] = part
        start += n
    return out, torch.sort(all_rows).values
