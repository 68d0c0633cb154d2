"""scikit-learn's handwritten digits (1,797 8x8 images, shipped with the package): the quickstart set.

A balanced test set of ``test_per_class`` images per class is held out with a fixed seed; the
rest is the balanced training pool from which a long-tailed subset is drawn.
"""

from __future__ import annotations

import numpy as np
import torch

from .imageset import ImageSet

#: every class has at least 174 images; 25 go to the test set, so 149 remain for training
TEST_PER_CLASS = 25
N_MAX = 140


def load_digits_sets(*, test_per_class: int = TEST_PER_CLASS, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(train pool, balanced test set); images are (N, 1, 8, 8) uint8 scaled from 0..16 to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    rng = np.random.RandomState(seed)
    test = np.concatenate([rng.permutation(np.where(y == c)[0])[:test_per_class] for c in range(10)])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    names = tuple(str(c) for c in range(10))
    mean, std = (float(x.mean() / 255.0),), (float(x.std() / 255.0),)
    full = ImageSet(torch.from_numpy(x), torch.from_numpy(y), names, mean=mean, std=std, name="digits")
    train = full.subset(torch.from_numpy(np.where(~is_test)[0]), name="digits-train")
    return train, full.subset(torch.from_numpy(np.sort(test)), name="digits-test")
