"""An image set as tensors: uint8 images, integer labels and class names.

Small-image data sets (CIFAR, SVHN, digits) live whole on the device; a long-tailed subset,
a validation split or an unlabeled pool is an index selection over the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from ..counts import ClassCounts
from ..errors import LongtailError


@dataclass(frozen=True)
class ImageSet:
    """``images``: (N, C, H, W) uint8; ``labels``: (N,) int64 in 0..num_classes-1.

    ``mean``/``std`` are the per-channel normalisation constants (in 0..1 units) used by the
    batch transforms; ``source_index`` maps each row back to the original data set's order.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    name: str = "images"
    source_index: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise LongtailError(
                f"{self.name}: images must be a (N, C, H, W) uint8 tensor, got {tuple(self.images.shape)} "
                f"{self.images.dtype}"
            )
        labels = self.labels.long()
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if labels.shape != (self.images.shape[0],):
            raise LongtailError(
                f"{self.name}: {self.images.shape[0]} images but {labels.numel()} labels",
                "every image needs exactly one label",
            )
        if labels.numel():
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= len(self.class_names):
                bad = lo if lo < 0 else hi
                raise LongtailError(
                    f"{self.name}: label {bad} is out of range for {len(self.class_names)} classes",
                    "labels must be 0..num_classes-1; check the labels or the list of class names",
                )
        if self.source_index is None:
            object.__setattr__(self, "source_index", torch.arange(labels.numel()))

    def __len__(self) -> int:
        return self.labels.numel()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def class_counts(self) -> ClassCounts:
        return ClassCounts.from_labels(self.labels, self.num_classes)

    def subset(self, index: torch.Tensor | Sequence[int], name: str | None = None) -> "ImageSet":
        """Rows ``index`` (an index tensor or a boolean mask) as a new set over the same classes."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        index = index.long().to(self.labels.device)
        return replace(
            self,
            images=self.images[index],
            labels=self.labels[index],
            source_index=self.source_index.to(index.device)[index],  # type: ignore[union-attr]
            name=name or self.name,
        )

    def with_labels(self, labels: torch.Tensor, name: str | None = None) -> "ImageSet":
        """The same images with other labels (e.g. pseudo-labels)."""
        return replace(self, labels=labels.to(self.labels.device), name=name or self.name)

    def to(self, device: torch.device | str) -> "ImageSet":
        return replace(
            self,
            images=self.images.to(device),
            labels=self.labels.to(device),
            source_index=self.source_index.to(device),  # type: ignore[union-attr]
        )


def concat(sets: Sequence[ImageSet], name: str | None = None) -> ImageSet:
    """Stack image sets that share classes and image shape."""
    if not sets:
        raise LongtailError("nothing to concatenate")
    first = sets[0]
    for s in sets[1:]:
        if s.class_names != first.class_names or s.image_shape != first.image_shape:
            raise LongtailError(f"cannot merge {s.name!r} into {first.name!r}: different classes or image shape")
    return replace(
        first,
        images=torch.cat([s.images for s in sets]),
        labels=torch.cat([s.labels for s in sets]),
        source_index=torch.cat([s.source_index for s in sets]),  # type: ignore[misc]
        name=name or first.name,
    )
