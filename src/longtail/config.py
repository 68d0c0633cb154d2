"""Run configuration as frozen dataclasses: one source of defaults (the reference recipe).

A ``RunConfig`` is fully serialisable (``to_dict``/``from_dict``) and is saved in every run
folder and checkpoint. Overrides use dotted names, ``train.epochs=10`` or ``loss.name=focal``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import LongtailError


@dataclass(frozen=True)
class DataConfig:
    """Which data, and which long-tailed subset of it."""

    dataset: str = "cifar10"  # cifar10 | cifar100 | svhn | digits | imagenet-lt | inat2018 | folder | csv
    root: str = "data"
    imbalance_ratio: float = 100.0  # rho = n_max / n_min; 1 keeps the balanced set
    profile: str = "exp"  # exp | step
    n_max: int | None = None  # None: the data set's reference n_max (CIFAR-10 5000, CIFAR-100 500, SVHN 1000)
    subset_seed: int = 0  # the reference draws its subset with numpy seed 0 for every run
    val_per_class: int = 0  # > 0: hold out a balanced validation split of this many per class
    download: bool = True
    pack: str | None = None  # a device pack (../shared/tools/device-pack) instead of the data root: CIFAR-10 only
    # semi-supervised data (longtail.semi): the DARP/ABC/USB protocol, and pseudo-labels to train on
    protocol: str = "lt"  # lt: the long-tailed subset above | darp: labeled N1/gamma_l + unlabeled M1/gamma_u
    darp_n1: int = 1500  # labeled images of the head class (DARP protocol)
    darp_m1: int = 3000  # unlabeled images of the head class (DARP protocol)
    darp_gamma_l: float = 100.0
    darp_gamma_u: float = 100.0
    darp_reverse: bool = False  # unlabeled profile reversed (head class rarest)
    pseudo_labels: str | None = None  # folder written by `longtail pseudo-label`: train on labeled + pseudo-labeled
    pseudo_threshold: float = 0.0  # keep pseudo-labels with confidence >= this (0: all, the reference)
    unlabeled_pool: str | None = None  # FixMatch under protocol=lt: a pool spec (unused:rho_u=..,factor=.. | folder:PATH)
    # image-file data sets (dataset imagenet-lt | inat2018 | folder | csv; longtail.data.files), used as given
    train_split: str | None = None  # split file (.txt/.json/.csv) or folder, relative to root; None: the data set's own
    val_split: str | None = None  # None: no validation split (val_per_class > 0 holds one out of train instead)
    test_split: str | None = None  # None: ImageNet_LT_test.txt | val2018.json | test | test.csv
    image_size: int = 224  # side of the square crops the model sees
    num_workers: int | None = None  # DataLoader workers per process; None: min(8, CPUs / processes on the node)
    on_bad_image: str = "stop"  # unreadable image: stop (error) | skip (leave it out, count it in the report)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet32"
    head: str = "linear"  # linear | cosine


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce"  # ce | focal | ldam | balanced-softmax | logit-adjust | cdt
    focal_gamma: float = 1.0
    ldam_max_margin: float = 0.5
    ldam_scale: float = 30.0
    tau: float = 1.0  # logit-adjusted loss
    cdt_gamma: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """The reference optimisation recipe (Cao et al. 2019) for ResNet-32 on CIFAR."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    schedule: str = "step"  # step (reference) | cosine
    warmup_epochs: float = 5.0  # in 200-epoch units for the step schedule
    milestones: tuple[float, ...] = (160.0, 180.0)  # in 200-epoch units
    sampler: str = "instance"  # instance | class-balanced | sqrt
    weighting: str = "none"  # none | inverse | sqrt-inverse | class-balanced
    drw_start: float | None = None  # DRW: weighting starts at this epoch (200-epoch units), plain before
    cb_beta: float = 0.9999
    crop_padding: int = 4
    flip: bool = True
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16 on CUDA, float32 on CPU) | bf16 | off
    channels_last: str = "auto"  # model memory format: auto (= on: 10 % faster per CPU epoch, measured) | on | off
    compile: str = "off"  # off | default | max-autotune-no-cudagraphs | ... (torch.compile of the model, longtail.graphs)
    engine: str = "auto"  # how a step runs (longtail.graphs): auto (graph on one GPU when possible) | eager | graph
    checkpoint_every: int = 10  # epochs
    eval_every: int = 0  # evaluate on the validation split every N epochs (0: only at the end)
    pseudo_weight: float = 1.0  # loss weight of pseudo-labeled examples (semi-supervised)
    labeled_fraction: float | None = None  # fixed share of labeled examples per batch (None: merge, the reference)
    mfw_strength: float = 0.0  # > 0: major feature weakening (Ye et al. 2021), see longtail.mfw
    mfw_lam_min: float = 0.5
    init_from: str | None = None  # a pre-training run folder or checkpoint whose backbone initialises the model
    semi: str = "none"  # none | fixmatch (consistency training on the unlabeled pool, longtail.semi.fixmatch)
    fixmatch_threshold: float = 0.95
    fixmatch_lambda_u: float = 1.0
    fixmatch_mu: int = 7  # unlabeled images per labeled image in a batch
    fixmatch_alignment: str = "none"  # none | da (distribution alignment) | la (logit adjustment)
    fixmatch_la_tau: float = 1.0  # weakened features keep a share lam ~ U(mfw_lam_min, 1) of themselves


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
    simsiam_sync_bn: bool = True  # under torchrun on GPUs: SyncBatchNorm, as the paper (no effect in one process)
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


@dataclass(frozen=True)
class RunConfig:
    recipe: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)  # self-supervised pre-training (longtail.ssl)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        try:
            return cls(
                recipe=d.get("recipe", "custom"),
                data=DataConfig(**d.get("data", {})),
                model=ModelConfig(**d.get("model", {})),
                loss=LossConfig(**d.get("loss", {})),
                train=_fix_tuples(TrainConfig(**d.get("train", {}))),
                ssl=SSLConfig(**d.get("ssl", {})),
                seed=int(d.get("seed", 0)),
            )
        except TypeError as e:
            raise LongtailError(f"this configuration does not fit this version of longtail: {e}",
                                "re-create the run with this version") from e


def _fix_tuples(t: TrainConfig) -> TrainConfig:
    return replace(t, milestones=tuple(t.milestones))


SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "train": TrainConfig, "ssl": SSLConfig}


def override_keys() -> list[str]:
    keys = ["seed"]
    for sec, cls in SECTIONS.items():
        keys += [f"{sec}.{f.name}" for f in fields(cls)]
    return keys


def _coerce(value: str, annotation: Any, key: str) -> Any:
    """Parse a command-line string into the type a config field declares."""
    hint = annotation if not isinstance(annotation, str) else eval(annotation, vars(typing))  # noqa: S307
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional and value.lower() in ("none", "null", ""):
        return None
    base = next((a for a in args if a is not type(None)), hint) if args and typing.get_origin(hint) is not tuple else hint
    try:
        if typing.get_origin(base) is tuple or base is tuple:
            return tuple(float(v) for v in value.replace(",", " ").split())
        if base is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base is int:
            return int(value)
        if base is float:
            return float(value)
        return value
    except ValueError:
        raise LongtailError(f"{key}={value!r} is not a valid {getattr(base, '__name__', base)}") from None


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return ``cfg`` with dotted-name overrides applied; values may be strings (from the CLI)."""
    for key, value in overrides.items():
        if key == "seed":
            cfg = replace(cfg, seed=int(value))
            continue
        sec, _, name = key.partition(".")
        cls = SECTIONS.get(sec)
        hints = typing.get_type_hints(cls) if cls else {}
        if cls is None or name not in hints:
            raise LongtailError(
                f"unknown setting {key!r}",
                "valid settings: " + ", ".join(override_keys()),
            )
        if isinstance(value, str):
            value = _coerce(value, hints[name], key)
        cfg = replace(cfg, **{sec: replace(getattr(cfg, sec), **{name: value})})
    return cfg
