"""From a ``DataConfig`` to semi-supervised splits: the DARP protocol, and labeled + pseudo-labeled data.

:func:`load_splits` is how every run gets its data: :func:`build_semi_splits` first, which returns
``None`` for plain long-tailed data, then the registry's labeled splits.

* ``data.protocol=darp``: the labeled part of the DARP protocol is the training set; its
  unlabeled part (labels hidden) rides along in ``SemiSplits.unlabeled`` for consistency
  training (FixMatch).
* ``data.unlabeled_pool=SPEC`` (a pool spec, e.g. ``rest``: :func:`build_pool`): that pool rides
  along in ``SemiSplits.unlabeled`` for consistency training (in the DARP part's place under
  ``data.protocol=darp``).
* ``data.pseudo_labels=DIR``: the training set is the labeled set followed by the pool images
  whose pseudo-label confidence is at least ``max(threshold at labeling, data.pseudo_threshold)``,
  with their pseudo-labels (never their true labels). ``SemiSplits.is_pseudo`` marks those rows.
  The pool is rebuilt from the saved spec and ``source_index``, so the images are exactly those
  that were labeled; a pool that overlaps the labeled set or the validation split is refused.

``SemiSplits`` subclasses the registry's frozen ``Splits`` (so every consumer of ``Splits``
works unchanged) and adds ``is_pseudo``, ``unlabeled`` and ``info``; ``to(device)`` keeps them.
Class counts (``train.class_counts()``) are those of the labels actually trained on: labeled
plus kept pseudo-labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, cast

import torch
from torch import Tensor

from ..config import DataConfig
from ..errors import LongtailError
from .imageset import ImageSet, concat
from .pools import UnlabeledSet, darp_split, hide_labels, load_image_folder, rest_pool, unused_pool
from .pseudo_labels import (
    POOL_KINDS,
    SavedPseudoLabels,
    load_pseudo_labels,
    parse_pool_spec,
    pseudo_label_report,
)
from .registry import Splits, check_in_memory, load_balanced, load_labeled_splits
from .splits import validation_info, validation_split

PROTOCOLS = ("lt", "darp")


@dataclass(frozen=True)
class SemiSplits(Splits):
    """``Splits`` plus what semi-supervised training needs.

    ``is_pseudo``: (len(train),) bool, True for the rows of ``train`` that carry pseudo-labels
    (None when there are none). ``unlabeled``: a pool with hidden labels for consistency
    training (None when none). ``info``: the pool spec and the quality of the kept pseudo-labels.
    """

    is_pseudo: Tensor | None = None
    unlabeled: UnlabeledSet | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "SemiSplits":
        return SemiSplits(
            self.train.to(device), self.test.to(device), self.val.to(device) if self.val else None,
            val_info=self.val_info, decoded=self.decoded,
            is_pseudo=None if self.is_pseudo is None else self.is_pseudo.to(device),
            unlabeled=None if self.unlabeled is None else self.unlabeled.to(device), info=self.info,
        )


def darp_order(cfg: DataConfig) -> str:
    """How the DARP split orders each class: ``data.darp_order`` when the config has it, else the
    references' file order (:func:`longtail.data.pools.darp_split`)."""
    return getattr(cfg, "darp_order", None) or "file"


def darp_splits(cfg: DataConfig) -> tuple[Splits, UnlabeledSet]:
    """The DARP protocol's labeled splits (+ a validation split from the images neither part uses) and pool.

    The pool holds the labeled images too when the config says ``data.darp_include_labeled`` (DARP's
    FixMatch loader, USB); a pool for pseudo-labels (:func:`build_pool`) never does.
    """
    source, test = darp_source_from_pack(cfg) if cfg.pack else load_balanced(cfg)
    labeled, unlabeled = darp_split(source, n1=cfg.darp_n1, m1=cfg.darp_m1, gamma_l=cfg.darp_gamma_l,
                                    gamma_u=cfg.darp_gamma_u, reverse=cfg.darp_reverse, order=darp_order(cfg),
                                    seed=cfg.subset_seed,
                                    include_labeled=bool(getattr(cfg, "darp_include_labeled", False)))
    val, val_info = None, None
    if cfg.val_per_class > 0:
        taken = torch.cat([labeled.source_index, unlabeled.source_index]).cpu()  # type: ignore[list-item]
        rest = source.subset(~torch.isin(source.source_index.cpu(), taken))  # type: ignore[union-attr]
        whole = labeled
        labeled, val = validation_split(labeled, per_class=cfg.val_per_class, seed=cfg.subset_seed, pool=rest)
        val_info = validation_info(whole, labeled, val)
        # a pool that holds the labeled images must not hold the ones that went to validation
        unlabeled = unlabeled.subset(~torch.isin(unlabeled.source_index.cpu(),  # type: ignore[union-attr]
                                                 val.source_index.cpu()))  # type: ignore[union-attr]
    labeled.class_counts().require_nonempty(labeled.class_names)
    return Splits(labeled, test, val, val_info=val_info), unlabeled


#: the device pack group that holds the DARP protocol's images (benchmarks/darp_pack.py)
DARP_PACK_GROUP = "darp"


def darp_source_from_pack(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """A device pack's ``darp`` group as the DARP split's source, in file order, and the test set.

    The group holds, for each class, its first training images in the official file order (as many as the
    protocol's settings take: ``benchmarks/darp_pack.py``), so the file-order split of this partial source is the
    split of the full set, image for image (``source_index`` keeps the official indices). A class with too few of
    them is refused by the split itself; the shuffled order (USB's) and a validation split need the whole set."""
    from .normalization import normalization_override, with_normalization
    from .pack import load_pack

    if cfg.dataset != "cifar10" or cfg.val_per_class or darp_order(cfg) != "file":
        raise LongtailError("a device pack holds the DARP protocol of CIFAR-10 in file order, without a validation "
                            "split", "use data.dataset=cifar10, data.darp_order=file and no --val-per-class with a "
                            "pack (or the full data set: unset data.pack, pass --data-root)")
    groups, test = load_pack(cfg.pack)  # type: ignore[arg-type]
    if DARP_PACK_GROUP not in groups:
        raise LongtailError(f"pack {cfg.pack} has no {DARP_PACK_GROUP!r} group (groups: {', '.join(groups)})",
                            "make one with `python benchmarks/darp_pack.py --out .device/c10-darp`")
    part = groups[DARP_PACK_GROUP]
    source = part.subset(torch.argsort(part.source_index), name="cifar10-train")  # type: ignore[arg-type]
    stats = normalization_override(cfg)
    return with_normalization(source, stats), with_normalization(test, stats)


def labeled_splits(cfg: DataConfig) -> Splits:
    """The labeled (train, test, val) of a config, without any pseudo-labels."""
    if cfg.protocol == "darp":
        return darp_splits(cfg)[0]
    return load_labeled_splits(replace(cfg, pseudo_labels=None, unlabeled_pool=None))


def rebuild_pool(saved: SavedPseudoLabels, cfg: DataConfig) -> UnlabeledSet:
    """The pool of a pseudo-label folder, rows in the order they were labeled."""
    spec = saved.pool_spec
    rows = saved.labels.source_index
    if spec["kind"] == "folder":
        _, test = load_balanced(cfg)
        pool = load_image_folder(spec["path"], size=test.image_shape[1:], channels=test.image_shape[0],
                                 class_names=test.class_names, mean=test.mean, std=test.std)
        if saved.files is not None and pool.files != saved.files:
            raise LongtailError(f"the images in {spec['path']} changed since they were pseudo-labeled",
                                "pseudo-label the folder again "
                                "(longtail pseudo-label RUN --pool folder:PATH --out DIR)")
        return pool.subset(rows)
    labeled_on = spec.get("data", {}).get("dataset")
    if labeled_on is not None and labeled_on != cfg.dataset:
        raise LongtailError(f"the pseudo-labels were made for {labeled_on!r}, this run trains on {cfg.dataset!r}",
                            "use pseudo-labels made by a run on the same data set")
    source, _ = load_balanced(cfg)
    # source_index -> row of the source (the source's own source_index need not be 0..N-1)
    where = torch.full((int(source.source_index.max()) + 1,), -1, dtype=torch.long)  # type: ignore[union-attr]
    where[source.source_index.cpu()] = torch.arange(len(source))  # type: ignore[union-attr]
    if rows.numel() and (int(rows.max()) >= where.numel() or bool((where[rows] < 0).any())):
        raise LongtailError(f"the pseudo-labels refer to images that {cfg.dataset!r} does not have",
                            "pseudo-label again with this data set")
    return hide_labels(source.subset(where[rows]), name=f"{source.name}-pseudo-pool")


def _check_disjoint(pool_rows: Tensor, part: ImageSet | None, what: str) -> None:
    if part is None or pool_rows.numel() == 0:
        return
    overlap = int(torch.isin(pool_rows.cpu(), part.source_index.cpu()).sum())  # type: ignore[union-attr]
    if overlap:
        raise LongtailError(
            f"{overlap} pseudo-labeled images are also in the {what}: the labeled data differs from the one the "
            "pool was built around",
            "pseudo-label again with a run on the same data settings (data.imbalance_ratio, n_max, subset_seed, "
            "val_per_class, protocol), or train with those settings",
        )


def build_semi_splits(cfg: DataConfig, *, log: Callable[[str], None] = print) -> Splits | None:
    """Semi-supervised splits of ``cfg``, or ``None`` when it asks for plain long-tailed data."""
    if cfg.protocol not in PROTOCOLS:
        raise LongtailError(f"unknown data protocol {cfg.protocol!r}", f"use one of: {', '.join(PROTOCOLS)}")
    pool_text = getattr(cfg, "unlabeled_pool", None)  # a pool for consistency training, when the config has one
    if cfg.protocol == "lt" and cfg.pseudo_labels is None and not pool_text:
        return None
    info: dict[str, Any] = {"protocol": cfg.protocol}
    unlabeled = None
    if cfg.protocol == "darp":
        base, unlabeled = darp_splits(cfg)
        info["unlabeled_counts"] = list(unlabeled.hidden_counts().counts)  # type: ignore[union-attr]
        info["darp_order"] = darp_order(cfg)
        info["darp_include_labeled"] = bool(getattr(cfg, "darp_include_labeled", False))
    else:
        base = labeled_splits(cfg)
    if pool_text:
        unlabeled, spec = build_pool(parse_pool_spec(pool_text), replace(cfg, pseudo_labels=None), log=log)
        info["unlabeled_pool"] = {k: v for k, v in spec.items() if k != "data"}
    info["labeled_counts"] = list(base.train.class_counts().counts)
    if cfg.pseudo_labels is None:
        return SemiSplits(base.train, base.test, base.val, val_info=base.val_info, unlabeled=unlabeled, info=info)

    saved = load_pseudo_labels(cfg.pseudo_labels)
    if cfg.pack and saved.pool_spec["kind"] != "folder":
        raise LongtailError("pseudo-labels of a pool cut from the training source need the data set, not a device pack",
                            "unset data.pack and point --data-root at the data set")
    if saved.class_names != base.train.class_names:
        raise LongtailError(f"the pseudo-labels in {cfg.pseudo_labels} are over other classes than {cfg.dataset!r}",
                            "use pseudo-labels made by a run on the same data set")
    if not 0.0 <= cfg.pseudo_threshold <= 1.0:
        raise LongtailError(f"data.pseudo_threshold must lie in [0, 1], got {cfg.pseudo_threshold}",
                            "0 keeps every pseudo-label (the reference)")
    pool = rebuild_pool(saved, cfg)
    if saved.pool_spec["kind"] != "folder":
        _check_disjoint(pool.source_index, base.train, "labeled training set")  # type: ignore[arg-type]
        _check_disjoint(pool.source_index, base.val, "validation split")  # type: ignore[arg-type]
    pl = saved.labels.rethreshold(max(saved.labels.threshold, cfg.pseudo_threshold))
    kept = pl.kept.to(pool.device)  # type: ignore[union-attr]
    pseudo = pool.subset(kept).with_labels(pl.labels[pl.kept], name=f"{pool.name}-pseudo-labeled")
    if len(pseudo) == 0:
        log(f"warning: threshold {pl.threshold:g} keeps none of the {len(pl)} pseudo-labels; "
            "training on labeled data only")
    labeled = cast(ImageSet, base.train)  # in memory: image-file data refuse pseudo-labels (load_file_splits)
    train = concat([labeled, pseudo], name=f"{base.train.name}+pseudo")
    is_pseudo = torch.cat([torch.zeros(len(base.train), dtype=torch.bool), torch.ones(len(pseudo), dtype=torch.bool)])
    report = pseudo_label_report(pl, pool)
    info.update(pseudo_labels=str(cfg.pseudo_labels), pool={k: v for k, v in saved.pool_spec.items() if k != "data"},
                pseudo_threshold=pl.threshold, pseudo_kept=report["kept"], pseudo_accuracy=report["accuracy"],
                pseudo_kept_counts=report["kept_counts"], train_counts=list(train.class_counts().counts))
    return SemiSplits(train, base.test, base.val, val_info=base.val_info, is_pseudo=is_pseudo.to(train.device),
                      unlabeled=unlabeled, info=info)


def build_pool(spec: dict[str, Any], data: DataConfig, *, log: Callable[[str], None] = print
               ) -> tuple[UnlabeledSet, dict[str, Any]]:
    """The pool a spec describes for a run's data settings; returns ``(pool, resolved spec)``.

    The resolved spec adds the defaults, the sizes, and the data settings it was built for
    (``spec["data"]``); together with the pool's ``source_index`` it rebuilds the same pool.
    ``unused`` and ``rest`` are cut from the source images that the run's labeled training set and
    validation split did not use (``rest`` takes all of them, in source order).
    """

    kind = spec.get("kind")
    if kind not in POOL_KINDS:
        raise LongtailError(f"unknown unlabeled pool kind {kind!r}", f"use one of: {', '.join(POOL_KINDS)}")
    if data.pack and kind != "folder":
        raise LongtailError("a pool cut from the training source needs the data set itself, not a device pack",
                            "run with data.pack unset (and --data-root), or use --pool folder:PATH")
    resolved: dict[str, Any] = {**spec, "data": asdict(data)}
    source, test = load_balanced(data)
    if kind in ("unused", "rest"):
        labeled = labeled_splits(data)
        used = torch.cat([labeled.train.source_index.cpu()]  # type: ignore[union-attr]
                         + ([labeled.val.source_index.cpu()] if labeled.val is not None else []))  # type: ignore[union-attr]
    if kind == "rest":
        pool, info = rest_pool(source, used, name=f"{source.name}-rest")
        resolved.update(labeled_size=len(labeled.train), **info)
        return pool, resolved
    if kind == "unused":
        rho_u = float(spec.get("rho_u", data.imbalance_ratio))
        factor = float(spec.get("factor", 5.0))
        seed = int(spec.get("seed", 0))
        pool, info = unused_pool(source, used, labeled_total=len(labeled.train), rho_u=rho_u, factor=factor,
                                 seed=seed, log=log)
        resolved.update(rho_u=rho_u, factor=factor, seed=seed, labeled_size=len(labeled.train), **info)
        return pool, resolved
    if kind == "darp":
        if data.protocol != "darp":
            raise LongtailError("--pool darp is the unlabeled part of the DARP protocol, but this run was trained on "
                                f"data.protocol={data.protocol!r}",
                                "pseudo-label a run trained with data.protocol=darp, or use --pool unused:... "
                                "or --pool rest")
        _, pool = darp_split(source, n1=data.darp_n1, m1=data.darp_m1, gamma_l=data.darp_gamma_l,
                             gamma_u=data.darp_gamma_u, reverse=data.darp_reverse, order=darp_order(data),
                             seed=data.subset_seed)  # disjoint from the labeled part, always
        counts = pool.hidden_counts()
        resolved.update(size=len(pool), counts=list(counts.counts) if counts else None)
        return pool, resolved
    pool = load_image_folder(spec["path"], size=test.image_shape[1:], channels=test.image_shape[0],
                             class_names=test.class_names, mean=test.mean, std=test.std)
    resolved.update(path=str(Path(spec["path"]).resolve()), size=len(pool))
    return pool, resolved


def load_splits(cfg: DataConfig, *, log: Callable[[str], None] = print) -> Splits:
    """The train / test (/ validation) sets of a run: semi-supervised splits (the DARP protocol, labeled +
    pseudo-labeled data, an unlabeled pool) when ``cfg`` asks for them, else the labeled splits
    (:func:`longtail.data.registry.load_labeled_splits`)."""
    check_in_memory(cfg)  # before a semi-supervised protocol loads CIFAR
    semi = build_semi_splits(cfg, log=log)
    return semi if semi is not None else load_labeled_splits(cfg)
