"""Semi-supervised learning with unlabeled data for long-tailed classification.

* :mod:`.pools`: unlabeled pools (the reference rho_U pool from unused source images, the DARP
  protocol, a folder of images), with true labels hidden.
* :mod:`.pseudo`: pseudo-labels from a trained run, their quality report and files.
* :mod:`.data`: semi-supervised splits for a ``DataConfig`` (the registry's hook).
* :mod:`.task`: training on labeled + pseudo-labeled data (weights, fixed batch make-up).
* :mod:`.fixmatch`: FixMatch consistency training with distribution alignment or logit adjustment.

A typical pipeline (Yang & Xu 2020)::

    longtail train cifar10-semi-base --set data.imbalance_ratio=50 --out runs/base
    longtail pseudo-label runs/base --pool unused:rho_u=100,factor=5 --out runs/pl
    longtail train cifar10-semi-pseudo --set data.pseudo_labels=runs/pl --out runs/semi
"""

from ..data.pools import (
    UnlabeledSet,
    darp_counts,
    darp_split,
    hide_labels,
    largest_pool,
    load_image_folder,
    make_pool,
    pool_size,
    unlabeled_counts,
    unused_pool,
)
from ..data.pseudo_labels import (
    PseudoLabels,
    SavedPseudoLabels,
    load_pseudo_labels,
    parse_pool_spec,
    pseudo_label_report,
    save_pseudo_labels,
)
from ..data.semi import (
    SemiSplits,
    build_pool,
    build_semi_splits,
    darp_splits,
    labeled_splits,
    rebuild_pool,
)
from .fixmatch import FixMatchTask, consistency_loss, pseudo_targets, strong_augment
from .pseudo import pseudo_label, pseudo_label_run
from .task import SemiSupervisedTask, group_weighted_loss

__all__ = [
    "FixMatchTask", "PseudoLabels", "SavedPseudoLabels", "SemiSplits", "SemiSupervisedTask", "UnlabeledSet",
    "build_pool", "build_semi_splits", "consistency_loss", "darp_counts", "darp_split", "darp_splits",
    "group_weighted_loss", "hide_labels", "labeled_splits", "largest_pool", "load_image_folder", "load_pseudo_labels",
    "make_pool", "parse_pool_spec", "pool_size", "pseudo_label", "pseudo_label_report", "pseudo_label_run",
    "pseudo_targets", "rebuild_pool", "save_pseudo_labels", "strong_augment", "unlabeled_counts", "unused_pool",
]
