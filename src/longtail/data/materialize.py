"""Decode an image-file data set once into a uint8 tensor ``ImageSet``.

Self-supervised pre-training (``longtail.ssl``) augments whole batches on the device; for
ImageNet-LT or iNaturalist this module decodes every image once, in DataLoader workers, to a
centre square of ``size`` pixels (the evaluation view: short side resized to size x 256/224, centre
crop), after which the tensor code
paths apply unchanged. The random resized crops of MoCo / SimSiam are then drawn inside that
square rather than over the whole original image. Memory: N x 3 x size x size bytes (ImageNet-LT's
115.8k training images at 224 px are about 17 GB of host memory; at 160 px about 9 GB).
"""

from __future__ import annotations

import torch

from ..errors import LongtailError
from .files import FileImageSet
from .imageset import ImageSet
from .loader import FileLoader


def materialize(data: FileImageSet, *, size: int | None = None, batch_size: int = 256) -> ImageSet:
    """``data`` decoded to (N, 3, size, size) uint8 (size defaults to ``data.image_size``).

    Images that cannot be read stop with the file's name, or are left out under
    ``data.on_bad_image=skip``; rows keep their ``source_index``.
    """
    from dataclasses import replace

    size = size or data.image_size
    loader = FileLoader(replace(data, image_size=size), train=False)  # the evaluation view, no randomness
    rows_all = list(range(len(data)))
    plan = [[(r, 0) for r in rows_all[i:i + batch_size]] for i in range(0, len(rows_all), batch_size)]
    images, rows = [], []
    for x, _, r, usable in loader.run(plan):
        if usable:
            images.append(x)
            rows.append(r)
    if not images:
        raise LongtailError(f"{data.name}: no readable image", "check data.root and the split files")
    x = torch.cat(images)
    r = torch.cat(rows).long()
    labels = data.labels.cpu()[r]
    return ImageSet(x.contiguous(), labels, data.class_names, mean=data.mean, std=data.std, name=data.name,
                    source_index=data.source_index.cpu()[r])  # type: ignore[index]
