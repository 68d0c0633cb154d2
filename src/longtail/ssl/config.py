"""Settings of self-supervised pre-training, and the default run of each method.

``SSLConfig`` holds what ``RunConfig`` has no field for (heads, queue, augmentation strengths,
SAM radius, re-weighting, representation evaluation); the optimisation recipe (epochs, batch,
lr, schedule, weight decay, device) stays in ``RunConfig.train`` and the backbone in
``RunConfig.model.arch``. It imports nothing heavy, so ``longtail.config`` may embed it as a
``ssl`` section.

Sizes are scaled to the data set (``default_ssl``): the ImageNet settings of MoCo v2 (K 65536,
m 0.999, T 0.2, MLP 2048-2048-128, blur) are the large-data ones; CIFAR-size data sets get K 4096,
m 0.99, T 0.2, no blur, and smaller heads.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ..errors import LongtailError

#: pre-training methods: ``longtail pretrain METHOD``
METHODS = ("rotation", "moco", "moco-rwsam", "simsiam", "simsiam-rwsam")
#: data sets treated as "large images" (MoCo v2's ImageNet settings)
LARGE_DATASETS = ("imagenet-lt", "inat2018", "imagenet")


@dataclass(frozen=True)
class SSLConfig:
    """Hyperparameters of the pretext tasks, heads, rwSAM and the representation evaluation."""

    # rotation prediction (Gidaris et al. 2018; Yang & Xu 2020)
    rotations: str = "balanced"  # balanced: one rotation per image, a quarter of the batch each (Yang & Xu) | all: 4x batch
    # two-view augmentation (MoCo v2 / SimSiam), batched on the device
    crop_min_scale: float = 0.2  # random resized crop keeps 20..100 % of the area
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float | None = None  # None: 0.5 for images of 64 px or more (MoCo v2 on ImageNet), else 0
    # MoCo v2 (He et al. 2020; Chen et al. 2020)
    moco_dim: int = 128
    moco_hidden: int = 512  # MLP head d -> hidden -> dim; 2048 with ResNet-50
    moco_queue: int = 4096  # K
    moco_momentum: float = 0.99  # m
    moco_temperature: float = 0.2  # T
    moco_bn_splits: int = 8  # BatchNorm groups that emulate MoCo's shuffled BN on one device (1: plain BN)
    # SimSiam (Chen & He 2021)
    simsiam_dim: int = 2048
    simsiam_pred_hidden: int = 512
    simsiam_proj_layers: int = 2  # 2 on CIFAR, 3 on ImageNet
    # SAM / rwSAM (Foret et al. 2021; Kwon et al. 2021; Liu et al. 2022)
    sam_rho: float = 0.5  # Liu et al.'s default with adaptive SAM
    sam_adaptive: bool = True
    rw_weights: str = "kde"  # ascent-pass weights: kde (label-free) | class (uses labels) | none
    rw_power: float = 1.0  # weight ∝ density^-power (kde) or n_class^-power (class)
    rw_max_weight: float = 10.0  # weights are clipped to this multiple of their median
    rw_every: int = 1  # recompute the KDE weights every N epochs
    kde_bandwidth: float | None = None  # None: median pairwise distance of the normalised features
    # representation evaluation on frozen features
    knn_k: int = 200
    knn_temperature: float = 0.1
    probe_epochs: int = 100
    probe_lr: float = 0.1
    probe_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.rotations not in ("balanced", "all"):
            raise LongtailError(f"ssl.rotations={self.rotations!r}", "use balanced or all")
        if self.rw_weights not in ("kde", "class", "none"):
            raise LongtailError(f"ssl.rw_weights={self.rw_weights!r}", "use kde (label-free), class or none")
        if not 0.0 < self.crop_min_scale <= 1.0:
            raise LongtailError(f"ssl.crop_min_scale must be in (0, 1], got {self.crop_min_scale}")
        if self.moco_queue < 1 or not 0.0 <= self.moco_momentum <= 1.0 or self.moco_temperature <= 0:
            raise LongtailError("MoCo needs moco_queue >= 1, 0 <= moco_momentum <= 1 and moco_temperature > 0")
        if self.sam_rho < 0:
            raise LongtailError(f"ssl.sam_rho must be >= 0, got {self.sam_rho}")


def check_method(method: str) -> str:
    if method not in METHODS:
        import difflib

        close = difflib.get_close_matches(method, METHODS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise LongtailError(f"unknown pre-training method {method!r}", f"{hint}use one of: {', '.join(METHODS)}")
    return method


def default_ssl(method: str, dataset: str = "cifar10") -> SSLConfig:
    """The pretext settings for ``method`` on ``dataset``, scaled to its size."""
    check_method(method)
    if dataset in LARGE_DATASETS:
        # MoCo v2 on ImageNet (ResNet-50): MLP 2048-2048-128, K 65536, m 0.999, T 0.2, blur;
        # SimSiam on ImageNet: 3-layer projector, 2048 -> 512 -> 2048 predictor.
        return SSLConfig(moco_hidden=2048, moco_queue=65536, moco_momentum=0.999, moco_bn_splits=1,
                         simsiam_proj_layers=3, rw_weights="kde")
    return SSLConfig()


def default_config(method: str, dataset: str = "cifar10", *, imbalance_ratio: float = 100.0) -> RunConfig:
    """The pre-training run of ``method`` on the long-tailed ``dataset`` (the recipes' starting point).

    * rotation: the supervised reference recipe unchanged (Yang & Xu 2020 pre-train with it):
      ResNet-32, 200 epochs, batch 128, lr 0.1 with warm-up and steps, crop + flip.
    * simsiam / moco on CIFAR-size data (Liu et al. 2022's CIFAR runs; the MoCo CIFAR demo):
      800 epochs, batch 512, lr 0.06 (= 0.03 x 512 / 256), weight decay 5e-4, cosine, no warm-up.
    * moco on ImageNet-LT / iNaturalist (Yang & Xu 2020): ResNet-50, 200 epochs, batch 128,
      lr 0.015, weight decay 1e-4, cosine.
    """
    check_method(method)
    data = DataConfig(dataset=dataset, imbalance_ratio=imbalance_ratio)
    name = f"{dataset}-lt-{method}" if not dataset.endswith("-lt") else f"{dataset}-{method}"
    if method == "rotation":
        return RunConfig(recipe=name, data=data)
    if dataset in LARGE_DATASETS:
        train = TrainConfig(epochs=200, batch_size=128, lr=0.015, weight_decay=1e-4, schedule="cosine",
                            warmup_epochs=0.0)
        return RunConfig(recipe=name, data=data, model=ModelConfig(arch="resnet50"), train=train)
    train = TrainConfig(epochs=800, batch_size=512, lr=0.06, weight_decay=5e-4, schedule="cosine", warmup_epochs=0.0,
                        checkpoint_every=20)
    return RunConfig(recipe=name, data=data, train=train)



def apply_ssl_overrides(ssl: SSLConfig, overrides: dict[str, object]) -> SSLConfig:
    """``ssl`` with ``{"ssl.moco_queue": "1024", ...}`` applied (strings are parsed as the field's type).

    Keys without the ``ssl.`` prefix are rejected, so a CLI can split ``--set`` items between
    ``longtail.config.apply_overrides`` and this function.
    """
    import dataclasses
    import typing

    from ..config import _coerce

    hints = typing.get_type_hints(SSLConfig)
    changes = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section != "ssl" or name not in hints:
            raise LongtailError(f"unknown setting {key!r}",
                                "valid pre-training settings: " + ", ".join(f"ssl.{k}" for k in hints))
        changes[name] = _coerce(value, hints[name], key) if isinstance(value, str) else value
    return dataclasses.replace(ssl, **changes)
