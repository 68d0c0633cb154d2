"""Settings of self-supervised pre-training, and the default run of each method.

``SSLConfig`` holds what ``RunConfig`` has no field for (heads, queue, augmentation strengths,
SAM radius, re-weighting, representation evaluation); the optimisation recipe (epochs, batch,
lr, schedule, weight decay, device) stays in ``RunConfig.train`` and the backbone in
``RunConfig.model.arch``. It imports nothing heavy, so ``longtail.config`` may embed it as a
``ssl`` section.

Sizes are scaled to the data set (``default_ssl``): the ImageNet settings of MoCo v2 (K 65536,
m 0.999, T 0.2, MLP 2048-2048-128, blur) are the large-data ones. MoCo on CIFAR-size data sets follows
MoCo's CIFAR-10 demo (facebookresearch/moco ``colab/moco_cifar10_demo.ipynb``):
K 4096, m 0.99, T 0.1, a linear 128-d head, ``RandomResizedCrop(32)``'s default scale (0.08, 1), no blur,
its ResNet-18 (``resnet18-cifar-tv``), 200 epochs. SimSiam on CIFAR-size data keeps the 2-layer projector.

MoCo's shuffled BatchNorm (``moco_bn_splits``, the number of BatchNorm groups of the whole batch):
8 on CIFAR-size data, as MoCo's CIFAR-10 demo (``--bn-splits 8`` for batch 512, 64 rows a group);
4 on the large data sets (batch 128: 32 rows a group, MoCo's per-GPU batch on ImageNet). One process
emulates that many GPUs (``longtail.ssl.models.SplitBatchNorm`` and a key shuffle); under ``torchrun``
each process takes ``moco_bn_splits // world`` of the groups.
"""

from __future__ import annotations

import difflib
from dataclasses import replace

from ..config import DataConfig, ModelConfig, RunConfig, SSLConfig, TrainConfig
from ..errors import LongtailError

#: pre-training methods: ``longtail pretrain METHOD``
METHODS = ("rotation", "moco", "moco-rwsam", "simsiam", "simsiam-rwsam")
#: data sets treated as "large images" (MoCo v2's ImageNet settings)
LARGE_DATASETS = ("imagenet-lt", "inat2018", "imagenet")

#: the ResNet-18 of MoCo's CIFAR-10 demo: torchvision's, 3x3 stride-1 conv1, no max-pool (models.resnet18_cifar)
MOCO_CIFAR_ARCH = "resnet18-cifar-tv"


def check_method(method: str) -> str:
    if method not in METHODS:
        close = difflib.get_close_matches(method, METHODS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise LongtailError(f"unknown pre-training method {method!r}", f"{hint}use one of: {', '.join(METHODS)}")
    return method


def default_ssl(method: str, dataset: str = "cifar10") -> SSLConfig:
    """The pretext settings for ``method`` on ``dataset``, scaled to its size."""
    check_method(method)
    if dataset in LARGE_DATASETS:
        # MoCo v2 on ImageNet (ResNet-50): MLP 2048-2048-128, K 65536, m 0.999, T 0.2, blur;
        # shuffled BN in 4 groups of 32 rows of the batch of 128 (MoCo's per-GPU BatchNorm batch: 256 on 8 GPUs);
        # SimSiam on ImageNet: 3-layer projector, 2048 -> 512 -> 2048 predictor.
        return SSLConfig(moco_hidden=2048, moco_queue=65536, moco_momentum=0.999, moco_bn_splits=4,
                         simsiam_proj_layers=3, rw_weights="kde")
    if method.startswith("moco"):
        # MoCo's CIFAR-10 demo (facebookresearch/moco colab/moco_cifar10_demo.ipynb, commit f736491), "Set arguments":
        # --moco-dim 128, --moco-k 4096, --moco-m 0.99, --moco-t 0.1, --bn-splits 8, --knn-k 200, --knn-t 0.1;
        # "Define base encoder": ModelBase keeps resnet18's fc (512 -> 128) as the head, no MLP (moco_hidden 0);
        # "Define data loaders": transforms.RandomResizedCrop(32), torchvision's default scale (0.08, 1.0).
        return SSLConfig(moco_dim=128, moco_queue=4096, moco_momentum=0.99, moco_temperature=0.1, moco_bn_splits=8,
                         moco_hidden=0, crop_min_scale=0.08, knn_k=200, knn_temperature=0.1)
    return SSLConfig()


def default_config(method: str, dataset: str = "cifar10", *, imbalance_ratio: float = 100.0) -> RunConfig:
    """The pre-training run of ``method`` on the long-tailed ``dataset`` (the recipes' starting point).

    * rotation: the supervised reference recipe unchanged (Yang & Xu 2020 pre-train with it):
      ResNet-32, 200 epochs, batch 128, lr 0.1 with warm-up and steps, crop + flip.
    * simsiam on CIFAR-size data: ResNet-32, 800 epochs, batch 512, lr 0.06 (= 0.03 x 512 / 256), weight
      decay 5e-4, cosine, no warm-up (Liu et al. 2022's optimisation; their ResNet-18 and 1,600 epochs are the
      ``cifar10-lt-simsiam*`` recipes).
    * moco on CIFAR-size data: MoCo's CIFAR-10 demo: its ResNet-18 (``resnet18-cifar-tv``), 200 epochs,
      batch 512, lr 0.06, weight decay 5e-4, cosine, no warm-up.
    * moco on ImageNet-LT / iNaturalist (Yang & Xu 2020): ResNet-50, 200 epochs, batch 128,
      lr 0.015, weight decay 1e-4, cosine.
    """
    check_method(method)
    data = DataConfig(dataset=dataset, imbalance_ratio=imbalance_ratio)
    name = f"{dataset}-lt-{method}" if not dataset.endswith("-lt") else f"{dataset}-{method}"
    if method == "rotation":
        cfg = RunConfig(recipe=name, data=data)
    elif dataset in LARGE_DATASETS:
        train = TrainConfig(epochs=200, batch_size=128, lr=0.015, weight_decay=1e-4, schedule="cosine",
                            warmup_epochs=0.0)
        cfg = RunConfig(recipe=name, data=data, model=ModelConfig(arch="resnet50"), train=train)
    elif method.startswith("moco"):
        # MoCo's CIFAR-10 demo: -a resnet18, args.epochs = 200, args.cos = True, --batch-size 512, --lr 0.06,
        # --wd 5e-4 (SGD momentum 0.9)
        train = TrainConfig(epochs=200, batch_size=512, lr=0.06, weight_decay=5e-4, schedule="cosine",
                            warmup_epochs=0.0, checkpoint_every=20)
        cfg = RunConfig(recipe=name, data=data, model=ModelConfig(arch=MOCO_CIFAR_ARCH), train=train)
    else:
        train = TrainConfig(epochs=800, batch_size=512, lr=0.06, weight_decay=5e-4, schedule="cosine",
                            warmup_epochs=0.0, checkpoint_every=20)
        cfg = RunConfig(recipe=name, data=data, train=train)
    return replace(cfg, ssl=default_ssl(method, dataset))
