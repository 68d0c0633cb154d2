"""Unlabeled pools: the images semi-supervised training may use without their labels.

Four sources, each an index selection with an explicit seed, a fixed order, or a sorted file list:

* ``unused`` (Yang & Xu, "Rethinking the value of labels for improving class-imbalanced
  learning", NeurIPS 2020): a pool ``factor`` times the labeled size with its own imbalance
  ``rho_U``, per-class sizes ``u_i = int((U // C) * (1/rho_U)^(i/(C-1)))`` rescaled by
  ``U / sum(u)`` (then truncated again), exactly as the reference code does. The paper drew it
  from 80M TinyImages (no longer distributed); here it comes from the images of the balanced
  source set that the labeled subset (and a validation split) did not use. When the source has
  too few images left, :func:`largest_pool` gives the largest pool with the same profile.
* ``rest`` (:func:`rest_pool`): every image of the source that the labeled subset and the
  validation split did not use, with whatever class profile that leaves: the largest pool a
  source holds. For CIFAR-10-LT rho=100 with n_max=5000 it is 37,594 images (less a validation
  split), none of the head class, 4,950 of the rarest: ``unused`` has no room there, since its
  profile needs head-class images and the labeled subset took them all.
* ``darp`` (DARP, Kim et al. NeurIPS 2020; ABC, Lee et al. NeurIPS 2021): labeled and unlabeled
  parts both cut from the training set, ``N1`` labeled head images with ``gamma_l`` and ``M1``
  unlabeled with ``gamma_u`` (optionally reversed), disjoint; per class, in the data set's file
  order, the first ``n_l`` images are labeled and the next ``n_u`` unlabeled, with no shuffle
  (the references' ``train_split``). A seeded per-class shuffle (USB's way of drawing the same
  counts) is :func:`darp_split`'s ``order="shuffled"``.
* ``folder``: a user's own PNG/JPEG images, centre-cropped and resized to the data set's size.

How true labels stay hidden: an :class:`UnlabeledSet` has no ``labels``; a pool cut from a
labeled set keeps them in ``hidden_labels``, which only :func:`longtail.semi.pseudo.pseudo_label_report`
reads (to report pseudo-label quality). Labels enter training only through
:meth:`UnlabeledSet.with_labels`, which takes the labels to train on (pseudo-labels) explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..counts import ClassCounts
from ..data.imageset import ImageSet
from ..errors import LongtailError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: how :func:`darp_split` orders each class before cutting: the references' file order, or a seeded shuffle
DARP_ORDERS = ("file", "shuffled")


@dataclass(frozen=True)
class UnlabeledSet:
    """``images``: (N, C, H, W) uint8 with the normalisation and classes of the labeled data.

    ``hidden_labels`` (N,) int64: the true labels when the pool was cut from a labeled set (None
    for a folder); never used for training. ``source_index`` (N,): row of each image in its
    source (the balanced set's order, or the position in a folder's sorted file list).
    ``files``: a folder pool's file paths (relative to the folder), one per row.
    """

    images: Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    name: str = "unlabeled"
    hidden_labels: Tensor | None = field(default=None, repr=False)
    source_index: Tensor | None = field(default=None, repr=False)
    files: tuple[str, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise LongtailError(f"{self.name}: images must be a (N, C, H, W) uint8 tensor, got "
                                f"{tuple(self.images.shape)} {self.images.dtype}")
        object.__setattr__(self, "class_names", tuple(self.class_names))
        n = self.images.shape[0]
        if self.hidden_labels is not None:
            object.__setattr__(self, "hidden_labels", self.hidden_labels.long())
            if self.hidden_labels.shape != (n,):
                raise LongtailError(f"{self.name}: {n} images but {self.hidden_labels.numel()} hidden labels")
        if self.source_index is None:
            object.__setattr__(self, "source_index", torch.arange(n, device=self.images.device))
        elif self.source_index.shape != (n,):
            raise LongtailError(f"{self.name}: {n} images but {self.source_index.numel()} source indices")
        if self.files is not None and len(self.files) != n:
            raise LongtailError(f"{self.name}: {n} images but {len(self.files)} file names")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def hidden_counts(self) -> ClassCounts | None:
        """Per-class sizes by the hidden true labels (for reports), None for a folder."""
        if self.hidden_labels is None:
            return None
        return ClassCounts.from_labels(self.hidden_labels, self.num_classes)

    def subset(self, index: Tensor | Sequence[int], name: str | None = None) -> "UnlabeledSet":
        """Rows ``index`` (indices or a boolean mask) as a new pool."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        index = index.long().to(self.images.device)
        files = None if self.files is None else tuple(self.files[i] for i in index.tolist())
        return replace(
            self, images=self.images[index], name=name or self.name, files=files,
            hidden_labels=(None if self.hidden_labels is None
                           else self.hidden_labels[index.to(self.hidden_labels.device)]),
            # source_index: None only before __post_init__ fills it
            source_index=self.source_index[index.to(self.source_index.device)],  # type: ignore[index, union-attr]
        )

    def to(self, device: torch.device | str) -> "UnlabeledSet":
        hidden = None if self.hidden_labels is None else self.hidden_labels.to(device)
        return replace(self, images=self.images.to(device), hidden_labels=hidden,
                       source_index=self.source_index.to(device))  # type: ignore[union-attr]

    def with_labels(self, labels: Tensor, name: str | None = None) -> ImageSet:
        """These images as an :class:`ImageSet` with ``labels`` (N,) to train on (pseudo-labels)."""
        return ImageSet(self.images, labels.to(self.images.device), self.class_names, mean=self.mean, std=self.std,
                        name=name or self.name, source_index=self.source_index)


def hide_labels(data: ImageSet, name: str | None = None) -> UnlabeledSet:
    """An image set as an unlabeled pool: its labels become ``hidden_labels``."""
    return UnlabeledSet(data.images, data.class_names, mean=data.mean, std=data.std, name=name or data.name,
                        hidden_labels=data.labels, source_index=data.source_index)


# sizes ---------------------------------------------------------------------------------------


def pool_size(labeled_total: int, factor: float) -> int:
    """``U = factor * labeled_total``, rounded half up: the reference uses 5x the labeled size.

    >>> pool_size(13996, 5)
    69980
    """
    if factor <= 0:
        raise LongtailError(f"the unlabeled size factor must be > 0, got {factor}", "the reference uses factor=5")
    return int(labeled_total * factor + 0.5)


def unlabeled_counts(total: int, num_classes: int, rho_u: float) -> list[int]:
    """Per-class pool sizes of the reference (Yang & Xu 2020), ``rho_u = u_max / u_min``.

    ``u_i = int((U // C) * (1/rho_u)^(i/(C-1)))``, then each ``u_i <- int(u_i * U / sum(u))``;
    the truncations leave the sum a few images under ``U``.

    >>> unlabeled_counts(69980, 10, 100)
    [28208, 16909, 10133, 6074, 3639, 2180, 1306, 781, 467, 278]
    """
    if rho_u < 1:
        raise LongtailError(f"rho_u must be >= 1 (u_max / u_min), got {rho_u}", "use e.g. rho_u=100; 1 is balanced")
    if num_classes < 1 or total < 0:
        raise LongtailError(f"need num_classes >= 1 and a size >= 0, got {num_classes} and {total}")
    first = total // num_classes
    steps = max(num_classes - 1, 1)
    raw = [int(first * (1.0 / rho_u) ** (i / float(steps))) for i in range(num_classes)]
    if sum(raw) == 0:
        return [0] * num_classes
    factor = total / sum(raw)
    return [int(n * factor) for n in raw]


def largest_pool(total: int, num_classes: int, rho_u: float, available: Sequence[int]) -> int:
    """The largest ``U' <= total`` whose :func:`unlabeled_counts` fit in ``available`` (0 if none).

    ``available[c]``: images of class ``c`` the source can still give. Found by bisection (the
    truncations make the counts only nearly monotone in ``U'``, so it may be a few images short
    of the true largest).
    """
    def fits(u: int) -> bool:
        return all(n <= a for n, a in zip(unlabeled_counts(u, num_classes, rho_u), available))

    if fits(total):
        return total
    lo, hi = 0, total  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def darp_counts(n_max: int, num_classes: int, gamma: float) -> list[int]:
    """The DARP/ABC reference ``make_imb_data``: ``int(n_max * mu^i)`` with ``mu = (1/gamma)^(1/(C-1))``,
    the last class exactly ``int(n_max / gamma)``.

    >>> darp_counts(1500, 10, 100)
    [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    """
    if gamma < 1:
        raise LongtailError(f"gamma must be >= 1 (n_max / n_min), got {gamma}", "the protocol uses gamma=100")
    if num_classes == 1:
        return [int(n_max)]
    mu = np.power(1.0 / gamma, 1.0 / (num_classes - 1))
    return [int(n_max / gamma) if i == num_classes - 1 else int(n_max * np.power(mu, i)) for i in range(num_classes)]


# pools cut from a labeled source ---------------------------------------------------------------


def available_counts(source: ImageSet, used: Tensor) -> list[int]:
    """Per-class number of ``source`` images whose ``source_index`` is not in ``used``."""
    free = ~torch.isin(source.source_index.cpu(), used.cpu().long())  # type: ignore[union-attr]
    return torch.bincount(source.labels.cpu()[free], minlength=source.num_classes).tolist()


def make_pool(source: ImageSet, used: Tensor, counts: Sequence[int], *, seed: int = 0,
              name: str | None = None) -> UnlabeledSet:
    """An unlabeled pool of ``counts[c]`` images of class ``c`` among the ``source`` images not in ``used``.

    ``used``: ``source_index`` values already taken (the labeled subset, a validation split).
    Per class, the free rows (in source order) are shuffled by one ``RandomState(seed)`` and the
    first ``counts[c]`` kept. The labels go to ``hidden_labels``.
    """
    if len(counts) != source.num_classes:
        raise LongtailError(f"{len(counts)} pool counts for {source.num_classes} classes")
    free = ~torch.isin(source.source_index.cpu(), used.cpu().long())  # type: ignore[union-attr]
    y = source.labels.cpu().numpy()
    free_np = free.numpy()
    rng = np.random.RandomState(seed)
    chosen = []
    for c, n_c in enumerate(counts):
        idx = np.where((y == c) & free_np)[0]
        if n_c > len(idx):
            raise LongtailError(
                f"the unlabeled pool asks for {n_c} images of class {source.class_names[c]!r} but the source has "
                f"only {len(idx)} that the labeled data did not use",
                "ask for a smaller pool (factor), or let longtail shrink it (pool kind 'unused' does), or lower "
                "data.n_max so the labeled subset leaves images of every class",
            )
        rng.shuffle(idx)
        chosen.append(idx[:n_c])
    rows = torch.from_numpy(np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64))
    return hide_labels(source.subset(rows), name=name or f"{source.name}-unlabeled")


def unused_pool(source: ImageSet, used: Tensor, *, labeled_total: int, rho_u: float, factor: float = 5.0,
                seed: int = 0, log: Callable[[str], None] = print) -> tuple[UnlabeledSet, dict]:
    """The reference pool (``factor`` x the labeled size, imbalance ``rho_u``) from the unused source images.

    Returns ``(pool, info)``; ``info`` holds the requested and actual size and counts. When the
    source is too small the pool shrinks to the largest with the same profile (said through
    ``log`` and in ``info["shrunk"]``); when not even that is possible, a ``LongtailError``.
    """
    want_total = pool_size(labeled_total, factor)
    want = unlabeled_counts(want_total, source.num_classes, rho_u)
    avail = available_counts(source, used)
    profile_total = largest_pool(want_total, source.num_classes, rho_u, avail)
    counts = unlabeled_counts(profile_total, source.num_classes, rho_u)
    if sum(counts) == 0 or any(w > 0 and n == 0 for w, n in zip(want, counts)):
        short = ", ".join(f"{source.class_names[c]!r} ({a} of {w})"
                          for c, (w, a) in enumerate(zip(want, avail)) if a < w)
        raise LongtailError(
            f"the source has no room for an unlabeled pool with rho_u={rho_u:g}: too few images the labeled data "
            f"did not use (left of wanted) in class(es) {short}",
            "lower data.n_max (the reference labeled subset of CIFAR uses every image of its head class), "
            "use the DARP protocol (--pool darp with data.protocol=darp), "
            "take every image left whatever its profile (--pool rest, or data.unlabeled_pool=rest), "
            "or bring a folder of images (--pool folder:PATH)",
        )
    shrunk = counts != want
    if shrunk:
        log(f"unlabeled pool: the source leaves too few images for U={want_total} ({factor:g} x {labeled_total}); "
            f"using the largest pool with the same profile (rho_u={rho_u:g}): U={profile_total} gives {sum(counts)} "
            f"images, counts {counts}")
    pool = make_pool(source, used, counts, seed=seed, name=f"{source.name}-unlabeled-rho{rho_u:g}")
    info = {"requested_size": want_total, "requested_counts": want, "size": len(pool), "counts": counts,
            "shrunk": shrunk, "profile_size": profile_total}
    return pool, info


def rest_pool(source: ImageSet, used: Tensor, *, name: str | None = None) -> tuple[UnlabeledSet, dict]:
    """Every ``source`` image whose ``source_index`` is not in ``used``, as a pool: the largest one it holds.

    ``used``: ``source_index`` values already taken (the labeled subset, a validation split). The
    rows are the free ones in source order, so there is nothing to draw and no seed; the class
    profile is whatever the labeled subset left (a class it used up has none). Returns
    ``(pool, info)``; ``info`` holds the ``size`` and per-class ``counts`` (by the hidden labels).

    >>> src = ImageSet(torch.zeros(6, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 0, 1, 0, 1]), ("a", "b"))
    >>> pool, info = rest_pool(src, torch.tensor([0, 2, 3]))
    >>> pool.source_index.tolist(), info
    ([1, 4, 5], {'size': 3, 'counts': [1, 2]})
    """
    free = ~torch.isin(source.source_index.cpu(), used.cpu().long())  # type: ignore[union-attr]
    counts = torch.bincount(source.labels.cpu()[free], minlength=source.num_classes).tolist()
    pool = hide_labels(source.subset(free.nonzero().squeeze(1)), name=name or f"{source.name}-rest")
    return pool, {"size": len(pool), "counts": counts}


def darp_split(source: ImageSet, *, n1: int = 1500, m1: int = 3000, gamma_l: float = 100.0,
               gamma_u: float = 100.0, reverse: bool = False, order: str = "file", seed: int = 0,
               include_labeled: bool = False) -> tuple[ImageSet, UnlabeledSet]:
    """The DARP/ABC protocol: ``(labeled, unlabeled)`` from one balanced training set.

    Labeled class ``c`` gets ``darp_counts(n1, C, gamma_l)[c]`` images, unlabeled
    ``darp_counts(m1, C, gamma_u)[c]`` (reversed: the head class is the rarest).

    ``order="file"`` (the default) takes the references' images exactly: for each class ``c``,
    ``idx = np.where(labels == c)[0]`` in the data set's order, labeled ``idx[:n_l]``, unlabeled
    ``idx[n_l:n_l + n_u]`` (``train_split`` in bbuing9/DARP ``dataset/all_cifar10.py`` and
    LeeHyuck/ABC ``ABCcode0920/dataset/fix_cifar10.py``; neither shuffles: their
    ``np.random.seed(args.manualSeed)`` does not reach the split). ``seed`` is then unused.
    ``order="shuffled"``: each class's indices are first shuffled by one ``RandomState(seed)``
    shared across classes in order (USB's ``sample_labeled_unlabeled_data`` draws the same counts
    after a per-class ``np.random.shuffle``; its global numpy stream is not reproduced here).

    ``include_labeled``: the unlabeled part also holds the labeled images, ``idx[:n_l + n_u]``,
    as DARP's FixMatch loader does (``train_split(..., fix=True)``) and USB's ``split_ssl_data`` by default
    (``include_lb_to_ulb=True``, though USB's imbalanced FixMatch config behind its published numbers sets it
    to False); ABC keeps the parts disjoint. Rows come in class order,
    within a class in the order above.
    """
    if n1 < 1 or m1 < 0:
        raise LongtailError(f"DARP protocol needs n1 >= 1 and m1 >= 0, got n1={n1}, m1={m1}",
                            "the protocol uses data.darp_n1=1500, data.darp_m1=3000")
    if order not in DARP_ORDERS:
        raise LongtailError(f"unknown DARP split order {order!r}", f"use one of: {', '.join(DARP_ORDERS)}")
    C = source.num_classes
    n_l = darp_counts(n1, C, gamma_l)
    n_u = darp_counts(m1, C, gamma_u)
    if reverse:
        n_u = n_u[::-1]
    y = source.labels.cpu().numpy()
    rng = np.random.RandomState(seed) if order == "shuffled" else None
    lab, unl = [], []
    for c in range(C):
        idx = np.where(y == c)[0]
        if n_l[c] + n_u[c] > len(idx):
            raise LongtailError(
                f"DARP protocol: class {source.class_names[c]!r} has {len(idx)} images, fewer than the "
                f"{n_l[c]} labeled + {n_u[c]} unlabeled it asks for",
                "lower data.darp_n1 or data.darp_m1",
            )
        if rng is not None:
            rng.shuffle(idx)
        lab.append(idx[: n_l[c]])
        unl.append(idx[: n_l[c] + n_u[c]] if include_labeled else idx[n_l[c]: n_l[c] + n_u[c]])
    rev = "-rev" if reverse else ""
    tag = ("" if order == "file" else f"-{order}{seed}") + ("-incl" if include_labeled else "")
    labeled = source.subset(torch.from_numpy(np.concatenate(lab)),
                            name=f"{source.name}-darp-labeled-N{n1}-g{gamma_l:g}{tag}")
    unlabeled = hide_labels(source.subset(torch.from_numpy(np.concatenate(unl))),
                            name=f"{source.name}-darp-unlabeled-M{m1}-g{gamma_u:g}{rev}{tag}")
    return labeled, unlabeled


# a folder of the user's images ------------------------------------------------------------------


def list_images(path: str | Path) -> list[Path]:
    """PNG/JPEG files under ``path`` (recursively), sorted by relative path: the folder's row order."""
    root = Path(path)
    if not root.is_dir():
        raise LongtailError(f"unlabeled image folder {root} does not exist (or is not a folder)",
                            "pass an existing folder of .png/.jpg images, e.g. --pool folder:/data/unlabeled")
    files = sorted((p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise LongtailError(f"unlabeled image folder {root} holds no .png/.jpg/.jpeg images",
                            "put the unlabeled images (PNG or JPEG, any size) into the folder or its subfolders")
    return files


def load_image_folder(path: str | Path, *, size: int | tuple[int, int], channels: int, class_names: Sequence[str],
                      mean: tuple[float, ...], std: tuple[float, ...], name: str | None = None) -> UnlabeledSet:
    """A folder of PNG/JPEG images as a pool: RGB (or greyscale for ``channels=1``), centre-cropped
    to the target aspect and resized (bicubic) to ``size`` (H, W) so they match the labeled data.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    root = Path(path)
    files = list_images(root)
    h, w = (size, size) if isinstance(size, int) else size
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise LongtailError(f"images with {channels} channels are not supported for folders", "use 1 or 3 channels")
    out = torch.empty(len(files), channels, h, w, dtype=torch.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                fitted = ImageOps.fit(im.convert(mode), (w, h), method=Image.Resampling.BICUBIC)
                arr = np.asarray(fitted, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise LongtailError(f"cannot read image {f}: {e}",
                                "remove or replace the file; the folder must hold only readable PNG/JPEG images") from e
        out[i] = torch.from_numpy(arr.reshape(h, w, channels).copy()).permute(2, 0, 1)
    rel = tuple(f.relative_to(root).as_posix() for f in files)
    return UnlabeledSet(out, tuple(class_names), mean=tuple(mean), std=tuple(std), name=name or f"folder:{root.name}",
                        files=rel)
