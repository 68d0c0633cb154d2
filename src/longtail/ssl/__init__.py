"""Self-supervised pre-training on the long-tailed training images, through the one training loop.

Yang & Xu (NeurIPS 2020) pre-train the backbone with a pretext task on the long-tailed training
images themselves, then train normally from it (SSP); Liu et al. (ICLR 2022) show that
self-supervised features are more robust to imbalance than supervised ones, and more so with
re-weighted sharpness-aware minimisation (rwSAM). Every method here is a task object for
``longtail.loop.fit`` (no new training loop):

=================  ===========================================================================
rotation           4-way rotation prediction (Gidaris et al. 2018), :class:`RotationTask`
moco               MoCo v2 (He et al. 2020; Chen et al. 2020), :class:`MoCo` + :class:`MoCoTask`
simsiam            SimSiam (Chen & He 2021), :class:`SimSiam` + :class:`SimSiamTask`
simsiam-rwsam      SimSiam trained with :class:`SAM` whose ascent pass is re-weighted
moco-rwsam         MoCo v2 with rwSAM (the paper's ImageNet variant)
=================  ===========================================================================

By hand, what :func:`pretrain_run` composes::

    backbone = make_model("resnet32", 1).backbone
    model, task = SimSiam(backbone), SimSiamTask(train, batch_size=512, augment=TwoViewAugment())
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4), rho=0.5, adaptive=True)
    opt.add_phase_hook(task.set_phase)         # rwSAM: the task weights the ascent pass
    fit(model, task, opt, epochs=800, lr_at=..., seed=0, device=device)

Then :func:`load_pretrained_backbone` puts the backbone into a ``Classifier`` (heads ignored,
``module.`` stripped, any mismatch an error), and :func:`representation_report` measures the
frozen features with k-NN and linear probes, per class and shot group.
"""

from ..checkpoints import HEAD_MODULES, load_pretrained_backbone
from ..loop import extract_features
from .augment import TwoViewAugment
from .config import METHODS, SSLConfig, default_config, default_ssl
from .evaluate import (
    knn_probabilities,
    linear_probe,
    representation_report,
    rotation_accuracy,
)
from .losses import info_nce, negative_cosine, rotation_loss, simsiam_loss
from .models import MoCo, SimSiam, rotation_model
from .reweight import (
    ClassFrequencyWeights,
    KDEWeights,
    class_frequency_weights,
    kde_density,
    kde_weights,
)
from .run import build_pretraining, pretrain_run
from .sam import SAM, frozen_bn_statistics
from .tasks import MoCoTask, RotationTask, SimSiamTask, ViewPair, rotate

__all__ = [
    "HEAD_MODULES", "METHODS", "SAM", "ClassFrequencyWeights", "KDEWeights", "MoCo", "MoCoTask", "RotationTask",
    "SSLConfig", "SimSiam", "SimSiamTask", "TwoViewAugment", "ViewPair", "build_pretraining",
    "class_frequency_weights", "default_config", "default_ssl", "extract_features", "frozen_bn_statistics",
    "info_nce", "kde_density", "kde_weights", "knn_probabilities", "linear_probe", "load_pretrained_backbone",
    "negative_cosine", "pretrain_run", "representation_report", "rotate", "rotation_accuracy", "rotation_loss",
    "rotation_model", "simsiam_loss",
]
