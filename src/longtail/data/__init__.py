"""Data: image sets as tensors, long-tailed selections, batched augmentation, loaders."""

from .augment import Augment, Batch, eval_batches, iterate_batches, normalize
from .imageset import ImageSet, concat
from .registry import DATASETS, Splits
from .semi import load_splits
from .splits import longtail_indices, validation_split

__all__ = [
    "Augment", "Batch", "DATASETS", "ImageSet", "Splits", "concat", "eval_batches", "iterate_batches",
    "load_splits", "longtail_indices", "normalize", "validation_split",
]
