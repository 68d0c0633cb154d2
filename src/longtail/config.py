"""Run configuration as frozen dataclasses: one source of defaults (the reference recipe).

A ``RunConfig`` is fully serialisable (``to_dict``/``from_dict``) and is saved in every run
folder and checkpoint. Overrides use dotted names, ``train.epochs=10`` or ``loss.name=focal``; a loss's
own parameters are ``loss.NAME`` (``loss.gamma=2``), declared once in ``LOSS_PARAMS``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
import re
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterable

from .errors import LongtailError

# Checks -------------------------------------------------------------------------------------------
#
# Every section checks its own fields when it is built (``__post_init__``), so every command and the
# Python API refuse the same bad settings before anything is written or trained. The checks are per
# field: ``apply_overrides`` changes one field at a time, and each intermediate config must pass.
# Name lists mirror the registries of the modules that use them (this module imports none of them,
# to stay at the bottom of the import graph); tests/test_config_checks.py keeps them in step.

PROFILES = ("exp", "step")  # longtail.counts.PROFILES
PROTOCOLS = ("lt", "darp")  # longtail.data.semi.PROTOCOLS
BAD_IMAGE_POLICIES = ("stop", "skip")  # longtail.data.files.BAD_IMAGE_POLICIES
DARP_ORDERS = ("file", "shuffled")  # longtail.data.pools.DARP_ORDERS
NORMALIZATIONS = ("cifar-reference", "cifar10-data", "cifar100-data", "half", "svhn-data", "imagenet",
                  "inat2018")  # longtail.data.normalization.NORMALIZATIONS
HEADS = ("linear", "cosine")  # longtail.models.heads.HEADS
SCHEDULES = ("step", "cosine", "onecycle", "fixmatch-cosine")  # longtail.schedule.lr_function
TTA_MODES = ("none", "flip", "flip-translate")  # longtail.models.fastnet.tta_model
SAMPLERS = ("instance", "class-balanced", "class-aware", "sqrt", "effective-number")  # longtail.samplers.SAMPLERS
WEIGHTINGS = ("none", "inverse", "sqrt-inverse", "class-balanced", "inverse-power")  # longtail.weights.SCHEMES
AMP_MODES = ("auto", "bf16", "off")  # longtail.devices.autocast_for
CHANNELS_LAST = ("auto", "on", "off")  # longtail.devices.use_channels_last
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # graphs
ENGINES = ("auto", "eager", "graph")  # longtail.graphs.ENGINES
SEMI_METHODS = ("none", "fixmatch", "acr")  # longtail.experiment._base_task (acr: longtail.semi.acr)
TASKS = ("supervised", "glmc")  # longtail.experiment.build_task (glmc: longtail.glmc)
ALIGNMENTS = ("none", "da", "la")  # longtail.semi.fixmatch.ALIGNMENTS
ROTATIONS = ("balanced", "all")
RW_WEIGHTS = ("kde", "class", "none")
PROBE_INTERPOLATIONS = ("bilinear", "bicubic")  # longtail.ssl.augment.INTERPOLATIONS
MIXES = ("none", "mixup", "cutmix")  # longtail.data.mix.MIXES
AUGMENT_POLICIES = ("fixmatch", "usb")  # longtail.data.randaugment.POLICIES
CUTOUT_POLICIES = (*AUGMENT_POLICIES, "devries")  # longtail.data.randaugment.CUTOUT_POLICIES
AUTOAUGMENT_POLICIES = ("none", "cifar10")  # none, then longtail.data.autoaugment.AUTOAUGMENT_POLICIES
SAM_BN_STATS = ("first", "both")  # which SAM pass updates BatchNorm's running statistics
OPTIMIZERS = ("sgd", "sam", "asam")  # longtail.optim

#: settings that have a command-line option of their own (the rest: ``--set KEY=VALUE``)
_FLAGS = {
    "train.epochs": "--epochs", "train.batch_size": "--batch-size", "train.lr": "--lr",
    "train.device": "--device", "train.init_from": "--init-from", "data.imbalance_ratio": "--imbalance-ratio",
    "data.val_per_class": "--val-per-class", "data.root": "--data-root", "seed": "--seeds",
}

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _setting(key: str, value: Any) -> str:
    """How to give ``key`` the value ``value`` on the command line."""
    flag = _FLAGS.get(key)
    return f"{flag} {_show(value)}" if flag else f"--set {key}={_show(value)}"


def _show(value: Any) -> str:
    """``value`` as ``--set`` writes it (``_coerce`` parses it back)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(_show(v) for v in value)
    if isinstance(value, str):
        return value if value else "''"
    return repr(value)


def _default(obj: Any, name: str) -> Any:
    f = obj.__dataclass_fields__[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _check_types(obj: Any, section: str) -> None:
    """Refuse values of the wrong type (a JSON config can bring ``"epochs": "10"``); normalise a
    milestones list to a tuple and a path object to a string."""
    for name, hint in _hints(type(obj)).items():
        key = f"{section}.{name}" if section else name
        value = getattr(obj, name)
        args = typing.get_args(hint)
        optional = type(None) in args
        if value is None and optional:
            continue
        base = next(a for a in args if a is not type(None)) if optional else hint
        origin = typing.get_origin(base)
        if base is bool:
            ok, kind = isinstance(value, bool), "true or false"
        elif base is int:
            ok, kind = isinstance(value, numbers.Integral) and not isinstance(value, bool), "a whole number"
        elif base is float:
            ok, kind = isinstance(value, numbers.Real) and not isinstance(value, bool), "a number"
        elif base is str:
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                object.__setattr__(obj, name, str(value))
            ok, kind = isinstance(value, str), "a string"
        elif origin is tuple:
            ok = isinstance(value, (tuple, list)) and all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
            kind = "a list of numbers"
            if ok and isinstance(value, list):
                object.__setattr__(obj, name, tuple(value))
        elif origin is dict:  # LossConfig.params: checked against its loss's declared parameters
            continue
        elif isinstance(base, type) and dataclasses.is_dataclass(base):
            ok, kind = isinstance(value, base), f"a {base.__name__}"
        else:  # pragma: no cover - every field type is one of the above
            continue
        if not ok:
            kind += " or none" if optional else ""
            example = _default(obj, name)
            raise LongtailError(
                f"{key} must be {kind}, got {value!r} ({type(value).__name__})",
                f"write {kind}, e.g. {_setting(key, example)}" if not dataclasses.is_dataclass(base)
                else f"pass a {typing.cast(type, base).__name__}, or build the whole config with RunConfig.from_dict",
            )


def _range_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return "finite"


def _in_range(v: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    if not math.isfinite(v):
        return False
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return not (hi is not None and (v >= hi if hi_open else v > hi))


def _number(obj: Any, section: str, name: str, lo: float | None = None, hi: float | None = None, *,
            lo_open: bool = False, hi_open: bool = False, fix: str | None = None) -> None:
    """``obj.name`` is None (where allowed: types are checked first), or finite and in range."""
    value = getattr(obj, name)
    if value is None:
        return
    key = f"{section}.{name}" if section else name
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if not _in_range(v, lo, hi, lo_open, hi_open):
            rng = _range_text(lo, hi, lo_open, hi_open)
            need = "a finite number" + ("" if rng == "finite" else f" {rng}")
            what = "every value of " + key if isinstance(value, tuple) else key
            got = f"got {_show(value)}" if isinstance(value, tuple) else f"got {v!r}"
            example = _default(obj, name)
            hint = f"use a value {rng}" if rng != "finite" else "use a finite number"
            if example is None:  # an optional setting: none is its default
                fix = fix or f"{hint}, or none (the default), e.g. {_setting(key, None)}"
            raise LongtailError(f"{what} must be {need}, {got}",
                                fix or f"{hint}, e.g. {_setting(key, example)} (the default)")


def _choice(obj: Any, section: str, name: str, choices: tuple[str, ...], fix: str | None = None) -> None:
    value = getattr(obj, name)
    if value not in choices:
        key = f"{section}.{name}"
        raise LongtailError(f"unknown {key} {value!r}",
                            fix or f"use one of: {', '.join(choices)} (e.g. {_setting(key, choices[0])})")


# Losses and their parameters ----------------------------------------------------------------------
#
# The one place a loss's parameters are declared: ``loss.params`` holds exactly those of ``loss.name``
# (defaults filled in), ``--set loss.NAME=VALUE`` sets one of them, and ``longtail.losses.make_loss``
# builds the loss with them. A loss is added as a ``longtail.losses.Loss`` subclass with a ``name``
# plus its entry here (tests/test_loss_config.py checks that the two agree).


@dataclass(frozen=True)
class Param:
    """A method's numeric parameter: its default (None: it must be given) and the range it must lie in."""

    name: str
    default: float | None
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    about: str = ""  # what it does, with its source
    example: float | None = None  # a value to suggest when there is no default

    def check(self, key: str, value: Any) -> float:
        """``value`` as a float, or a LongtailError naming ``key``, the range and a value to use."""
        suggest = self.default if self.default is not None else self.example
        rng = _range_text(self.lo, self.hi, self.lo_open, self.hi_open)
        e_g = f", e.g. --set {key}={_show(suggest)}" + (" (the default)" if suggest == self.default else "")
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise LongtailError(f"{key} must be a number, got {value!r} ({type(value).__name__})",
                                f"write a number{e_g}")
        if not _in_range(float(value), self.lo, self.hi, self.lo_open, self.hi_open):
            need = "a finite number" + ("" if rng == "finite" else f" {rng}")
            raise LongtailError(f"{key} must be {need}, got {value!r}",
                                (f"use a value {rng}" if rng != "finite" else "use a finite number") + e_g)
        return float(value)


#: Every loss (``longtail.losses``) and its parameters, in the order ``--show-config`` lists them.
LOSS_PARAMS: dict[str, tuple[Param, ...]] = {
    "ce": (),
    "focal": (Param("gamma", 1.0, lo=0, about="focusing exponent of (1 - p_t)^gamma, 0 is cross-entropy; "
                    "Lin et al. 2017, the LDAM-DRW code uses 1"),),
    "ldam": (Param("max_margin", 0.5, lo=0, about="margin of the rarest class, 0 is no margin (Cao et al. 2019)"),
             Param("scale", 30.0, lo=0, lo_open=True, about="logit scale s, for the cosine head (Cao et al. 2019)")),
    "balanced-softmax": (),
    "logit-adjust": (Param("tau", 1.0, about="weight of the log prior, 0 is cross-entropy (Menon et al. 2021)"),),
    "cdt": (Param("gamma", None, lo=0, example=0.2, about="temperature exponent a_c = (n_max / n_c)^gamma; "
                  "Ye et al. tune it on validation data, in [0, 0.4] on CIFAR-10"),),
    "vs": (Param("gamma", 0.3, lo=0, about="multiplicative exponent: logits divided by (n_max / n_c)^gamma, 0 is "
                 "logit adjustment (Kini et al. 2021; VSLoss's default 0.3, Wang et al. 2023 use 0.05)"),
           Param("tau", 1.0, about="weight of the additive log prior tau * log pi, 0 is CDT (Kini et al. 2021)")),
    "vs-tla": (Param("gamma", 0.3, lo=0, about="VS's multiplicative exponent until the deferred re-weighting "
                     "starts (Wang et al. 2023, wang22ti/DDC; 0.05 in their runs)"),
               Param("tau", 1.0, about="VS's additive weight of the log prior until the deferred re-weighting "
                     "starts"),
               Param("late_tau", 1.0, about="weight of the log prior once truncated, CE(z + late_tau * log pi), "
                     "from the deferred re-weighting's start (their resumed runs: 1.0 CIFAR-10, 0.75 CIFAR-100)")),
}
LOSSES = tuple(LOSS_PARAMS)


def loss_param_names(name: str) -> tuple[str, ...]:
    """The parameters of the loss ``name`` (``()`` for an unknown name)."""
    return tuple(p.name for p in LOSS_PARAMS.get(name, ()))


def _unknown_loss_param(loss: str, key: str) -> LongtailError:
    """``key`` (``loss.X``) is not a parameter of ``loss``: name its parameters, or the losses that have X."""
    param = key.partition(".")[2]
    own = [f"loss.{p}" for p in loss_param_names(loss)]
    owners = [n for n in LOSS_PARAMS if param in loss_param_names(n)]
    close = _suggestions(key, own)
    mean = f"did you mean {' or '.join(close)}? " if close else ""
    listing = f"its parameters are {', '.join(own)}" if own else "it has no parameters"
    elsewhere = (f"; {param} belongs to the {' and '.join(owners)} loss{'es' if len(owners) > 1 else ''}: "
                 f"choose one with --set loss.name={owners[0]}" if owners else "")
    return LongtailError(f"the {loss!r} loss has no parameter {param!r} ({key})", f"{mean}{listing}{elsewhere}")


def _loss_params(name: str, given: Any) -> dict[str, float]:
    """``given`` checked against ``LOSS_PARAMS[name]``, with the defaults filled in, in declared order."""
    if not isinstance(given, dict) or not all(isinstance(k, str) for k in given):
        raise LongtailError(f"loss.params must be a table of parameter names and numbers, got {given!r}",
                            "write e.g. {\"gamma\": 1.0} in a JSON config, or --set loss.gamma=1.0")
    for k in given:
        if k not in loss_param_names(name):
            raise _unknown_loss_param(name, f"loss.{k}")
    out = {}
    for p in LOSS_PARAMS[name]:
        value = given.get(p.name, p.default)
        if value is None:
            raise LongtailError(f"the {name!r} loss needs loss.{p.name}: {p.about}",
                                f"give it, e.g. --set loss.{p.name}={_show(p.example)}")
        out[p.name] = p.check(f"loss.{p.name}", value)
    return out



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
    darp_order: str = "file"  # file: the first images of each class in file order (DARP, ABC) | shuffled (USB)
    darp_include_labeled: bool = False  # the unlabeled part also holds the labeled images (DARP's FixMatch)
    pseudo_labels: str | None = None  # folder written by `longtail pseudo-label`: train on labeled + pseudo-labeled
    pseudo_threshold: float = 0.0  # keep pseudo-labels with confidence >= this (0: all, the reference)
    # FixMatch under protocol=lt: a pool spec (unused:rho_u=..,factor=.. | rest | folder:PATH)
    unlabeled_pool: str | None = None
    # image-file data sets (dataset imagenet-lt | inat2018 | folder | csv; longtail.data.files), used as given
    train_split: str | None = None  # split file (.txt/.json/.csv) or folder, relative to root; None: the data set's own
    val_split: str | None = None  # None: no validation split (val_per_class > 0 holds one out of train instead)
    test_split: str | None = None  # None: ImageNet_LT_test.txt | val2018.json | test | test.csv
    image_size: int = 224  # side of the square crops the model sees
    num_workers: int | None = None  # DataLoader workers per process; None: min(8, CPUs / processes on the node)
    on_bad_image: str = "stop"  # unreadable image: stop (error) | skip (leave it out, count it in the report)
    # image files decoded once into memory as uint8 tensors at image_size (a resize + centre crop, decode_view),
    # so the tensor paths apply (batched crop/flip on the device, FastNet's whitening init, stacked seeds):
    # N x 3 x image_size^2 bytes per split. Image-file data sets only (longtail.data.registry.decode_in_memory)
    in_memory: bool = False
    # the square in_memory decodes (in_memory only; files decoded per batch keep the eval view): eval (short side
    # resized to image_size x 256/224, centre crop: the references' test view) | whole (short side resized to
    # image_size, not resampled when it is that already, centre crop: a 32x32 image kept exactly; folder-fast-*)
    decode_view: str = "eval"
    # None: each data set's recipe source's constants (longtail.data.normalization); or one of NORMALIZATIONS
    normalization: str | None = None

    def __post_init__(self) -> None:
        _check_types(self, "data")
        _number(self, "data", "imbalance_ratio", 1, fix="use rho = n_max / n_min >= 1, e.g. --imbalance-ratio 100 "
                "(1 keeps the balanced set; longtail uses n_max/n_min, not the inverse imb_factor)")
        _choice(self, "data", "profile", PROFILES)
        _number(self, "data", "n_max", 1, fix="use a count >= 1, or none for the data set's reference n_max")
        _number(self, "data", "subset_seed", 0)
        _number(self, "data", "val_per_class", 0)
        if self.protocol not in PROTOCOLS:  # worded as longtail.data.semi words it
            raise LongtailError(f"unknown data protocol {self.protocol!r} (data.protocol)",
                                f"use one of: {', '.join(PROTOCOLS)} (e.g. --set data.protocol=lt)")
        _number(self, "data", "darp_n1", 1)
        _number(self, "data", "darp_m1", 0)
        _number(self, "data", "darp_gamma_l", 1)
        _number(self, "data", "darp_gamma_u", 1)
        _number(self, "data", "pseudo_threshold", 0, 1)
        _number(self, "data", "image_size", 1)
        _number(self, "data", "num_workers", 0, fix="use 0 (load in the main process) or more, or none for the default")
        _choice(self, "data", "on_bad_image", BAD_IMAGE_POLICIES)
        _choice(self, "data", "decode_view", ("eval", "whole"))  # longtail.data.loader.EVAL_VIEWS
        _choice(self, "data", "darp_order", DARP_ORDERS)
        if self.normalization is not None:
            _choice(self, "data", "normalization", NORMALIZATIONS)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet32"
    head: str = "linear"  # linear | cosine
    # test-time augmentation when evaluating: none | flip (the mean of the image and its mirror) | flip-translate
    # (airbench94's level 2: half the flip mean of the image, half the mean of the flip means of the image shifted
    # by one pixel up-left and down-right, reflect-padded; longtail.models.fastnet.FlipTranslateTTA)
    tta: str = "none"
    # a local weights file (torchvision/timm state dict, or a longtail checkpoint) for the backbone: loaded with
    # weights_only=True, every backbone tensor matched or a clear error; nothing is downloaded
    pretrained: str | None = None

    def __post_init__(self) -> None:
        _check_types(self, "model")  # arch: checked against longtail.models' registry when the model is built
        _choice(self, "model", "head", HEADS)
        _choice(self, "model", "tta", TTA_MODES)
        if self.pretrained is not None and not str(self.pretrained).strip():
            raise LongtailError("model.pretrained is empty", "give a weights file, or none")


@dataclass(frozen=True)
class LossConfig:
    """The loss and its own parameters: ``params`` holds exactly those ``LOSS_PARAMS[name]`` declares
    (the defaults filled in), so a config shows only what its loss uses, e.g.
    ``LossConfig("focal", {"gamma": 2.0})``. ``--set loss.gamma=2`` sets a parameter of the current
    loss; ``--set loss.name=...`` to another loss starts from that loss's defaults."""

    name: str = "ce"  # ce | focal | ldam | balanced-softmax | logit-adjust | cdt | vs | vs-tla
    params: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_types(self, "loss")
        _choice(self, "loss", "name", LOSSES)
        object.__setattr__(self, "params", _loss_params(self.name, self.params))


@dataclass(frozen=True)
class TrainConfig:
    """The reference optimisation recipe (Cao et al. 2019) for ResNet-32 on CIFAR."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False  # Nesterov momentum (the fast recipes; the graph engine falls back to eager steps)
    weight_decay: float = 2e-4
    schedule: str = "step"  # step (reference) | cosine | onecycle (set every step: the fast recipes)
    warmup_epochs: float = 5.0  # in 200-epoch units for the step and onecycle schedules, real epochs for cosine
    milestones: tuple[float, ...] = (160.0, 180.0)  # in 200-epoch units
    sampler: str = "instance"  # instance | class-balanced (= class-aware) | sqrt | effective-number (beta 0.9999)
    weighting: str = "none"  # none | inverse | sqrt-inverse | class-balanced | inverse-power
    drw_start: float | None = None  # DRW: weighting starts at this epoch (200-epoch units), plain before
    cb_beta: float = 0.9999  # beta of the class-balanced weighting and of the effective-number sampler
    # exponent of the inverse-power weighting, w_c ∝ (n_c / N)^-power (1: inverse; with drw_start it is ADRW,
    # Wang et al. 2023, their --tro: 0.15 on CIFAR-10-LT, 0.25 on CIFAR-100-LT)
    weighting_power: float = 1.0
    crop_padding: int = 4
    flip: bool = True
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16 on CUDA, float32 on CPU) | bf16 | off
    channels_last: str = "auto"  # model memory format: auto (= on: 10 % faster per CPU epoch, measured) | on | off
    # off | default | max-autotune-no-cudagraphs | ... (torch.compile of the model, longtail.graphs)
    compile: str = "off"
    # how a step runs (longtail.graphs): eager | graph (one CUDA graph per step, replayed) | auto (graph on one GPU
    # when the training allows it: SGD or SAM around it, a supervised or GLMC task; eager elsewhere and on the CPU).
    # auto since two H200 sessions showed the replayed graph equal to eager steps up to float rounding and 2.6x
    # faster, with the reference accuracies (benchmarks/RESULTS.md, 2026-11-29 and 2026-11-30)
    engine: str = "auto"
    checkpoint_every: int = 10  # epochs
    eval_every: int = 0  # evaluate on the validation split every N epochs (0: only at the end)
    tensorboard: bool = False  # TensorBoard event files in RUN/tensorboard (pip install -e '.[tensorboard]')
    init_from: str | None = None  # a pre-training run folder or checkpoint whose backbone initialises the model
    freeze_backbone: bool = False  # train the head only; the backbone (BatchNorm included) stays as it was
    # what a step trains: supervised (the loss, sampler and weighting above) | glmc (GLMC, Du et al. CVPR 2023,
    # longtail.glmc: a second, re-balanced head, global mixup and local CutMix views, their consistency; its
    # own settings are the glmc section)
    task: str = "supervised"

    def __post_init__(self) -> None:
        _check_types(self, "train")
        _number(self, "train", "epochs", 1, 100_000)  # a bound: per-epoch schedules are built as lists
        _number(self, "train", "batch_size", 1)
        _number(self, "train", "lr", 0, lo_open=True)
        _number(self, "train", "momentum", 0, 1, hi_open=True)
        _number(self, "train", "weight_decay", 0)
        _choice(self, "train", "schedule", SCHEDULES)
        _number(self, "train", "warmup_epochs", 0)
        _number(self, "train", "milestones", 0)
        _choice(self, "train", "sampler", SAMPLERS)
        _choice(self, "train", "weighting", WEIGHTINGS)
        # past 200 (the end of any run, in these units) the weighting never starts: longtail.weights warns; not
        # refused here, where a finished run's config.json is read back too
        _number(self, "train", "drw_start", 0, fix="use an epoch >= 0 (200-epoch units; the reference uses 160), "
                "or none for no deferral")
        _number(self, "train", "cb_beta", 0, 1, hi_open=True)
        _number(self, "train", "weighting_power", 0, fix="use an exponent >= 0 (0 is uniform, 1 inverse frequency), "
                "e.g. --set train.weighting_power=0.15 (ADRW on CIFAR-10-LT)")
        _number(self, "train", "crop_padding", 0)
        if self.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", self.device):
            raise LongtailError(f"unknown train.device {self.device!r}",
                                "use auto, cpu, cuda or cuda:N (e.g. --device cpu)")
        _choice(self, "train", "amp", AMP_MODES)
        _choice(self, "train", "channels_last", CHANNELS_LAST)
        _choice(self, "train", "compile", COMPILE_MODES)
        _choice(self, "train", "engine", ENGINES)
        _number(self, "train", "checkpoint_every", 1)
        _number(self, "train", "eval_every", 0)
        _choice(self, "train", "task", TASKS)


@dataclass(frozen=True)
class SemiConfig:
    """Semi-supervised training: consistency training on an unlabeled pool (``method``), and how a run on
    pseudo-labels (``data.pseudo_labels``) weighs and mixes them. Off by default."""

    # none | fixmatch (consistency training on the unlabeled pool, longtail.semi.fixmatch) | acr (ACR, Wei & Gan
    # CVPR 2023, longtail.semi.acr: FixMatch with a second, balanced head and adaptively logit-adjusted pseudo-labels)
    method: str = "none"
    threshold: float = 0.95  # FixMatch and ACR: keep a pseudo-label when its confidence is at least this
    lambda_u: float = 1.0  # FixMatch: weight of the unlabeled loss
    mu: int = 7  # FixMatch and ACR: unlabeled images per labeled image in a batch
    full_batches: bool = False  # every labeled batch full (USB), not a partial last batch per epoch
    alignment: str = "none"  # none | da (distribution alignment) | la (logit adjustment of the pseudo-labels)
    la_tau: float = 1.0  # strength of the pseudo-labels' logit adjustment (alignment=la)
    pseudo_weight: float = 1.0  # loss weight of pseudo-labeled examples (data.pseudo_labels)
    labeled_fraction: float | None = None  # fixed share of labeled examples per batch (None: merge, the reference)
    # ACR's own settings (semi.method=acr), the defaults of Gank0078/ACR's README commands
    acr_tau1: float = 2.0  # first adjustment of the standard head's pseudo-labels, and the adaptive tau's maximum
    acr_tau12: float = 2.0  # fixed adjustment of the balanced head's targets (taken from the standard head)
    acr_tau2: float = 2.0  # adjustment of the balanced head's logit-adjusted cross-entropy
    acr_tau_min: float = 0.0  # the adaptive tau's minimum
    acr_ema_u: float = 0.99  # momentum of the estimated class distribution of the unlabeled data
    acr_est_epoch: int = 5  # the estimate runs in the epochs after this one (0-based)
    acr_steps_per_epoch: int = 500  # an ACR epoch's steps (their --eval-step); 0: the labeled set's whole batches
    acr_temperature: float = 1.0  # of the pseudo-labels' softmax
    acr_tally: str = "assign"  # assign: their indexed assignment (one row per class) | count: a count (the paper)

    def __post_init__(self) -> None:
        _check_types(self, "semi")
        _choice(self, "semi", "method", SEMI_METHODS)
        _number(self, "semi", "threshold", 0, 1)
        _number(self, "semi", "lambda_u", 0)
        _number(self, "semi", "mu", 1)
        _choice(self, "semi", "alignment", ALIGNMENTS)
        _number(self, "semi", "la_tau")
        _number(self, "semi", "pseudo_weight", 0)
        _number(self, "semi", "labeled_fraction", 0, 1, lo_open=True,
                fix="use a share in (0, 1], e.g. --set semi.labeled_fraction=0.5, or none to merge (the reference)")
        _number(self, "semi", "acr_ema_u", 0, 1)
        _number(self, "semi", "acr_est_epoch", -1)
        _number(self, "semi", "acr_steps_per_epoch", 0)
        _number(self, "semi", "acr_temperature", 0, lo_open=True)
        _choice(self, "semi", "acr_tally", ("assign", "count"))


@dataclass(frozen=True)
class GLMCConfig:
    """GLMC's own settings (``train.task=glmc``, :mod:`longtail.glmc`); the defaults from its README's
    CIFAR-100-LT rho=100 command."""

    resample_weighting: float = 0.0  # q: mixing partners drawn with weight n_c^-q per image (0: uniformly)
    label_weighting: float = 1.2  # the re-balanced head's soft labels weighted by n_c^-this (mean 1 per class)
    contrast_weight: float = 4.0  # weight of the consistency (SimSiam) loss between the two mixed views
    mix_alpha: float = 1.0  # lam ~ Beta(alpha, alpha); their GLMC_mixed uses 1 (their --beta is never read)
    proj_dim: int = 128  # width of the projector and predictor (their hidden_dim on CIFAR)

    def __post_init__(self) -> None:
        _check_types(self, "glmc")
        _number(self, "glmc", "resample_weighting")
        _number(self, "glmc", "label_weighting")
        _number(self, "glmc", "contrast_weight", 0)
        _number(self, "glmc", "mix_alpha", 0, lo_open=True)
        _number(self, "glmc", "proj_dim", 1)


@dataclass(frozen=True)
class MFWConfig:
    """Major feature weakening (Ye et al. 2021, :mod:`longtail.mfw`); off while ``strength`` is 0."""

    strength: float = 0.0  # > 0: the head class's examples are weakened with this probability (the rarest: never)
    lam_min: float = 0.5  # weakened features keep a share lam ~ U(lam_min, 1) of themselves

    def __post_init__(self) -> None:
        _check_types(self, "mfw")
        _number(self, "mfw", "strength", 0)
        _number(self, "mfw", "lam_min", 0, 1)


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentations beyond the base random crop and flip (``train.crop_padding``, ``train.flip``), drawn in
    batches on the data's device like them; every one is off by default (the reference recipes use none)."""

    randaugment: int = 0  # RandAugment: ops applied to each image (0: off; FixMatch/USB and the 2023 recipes: 2)
    randaugment_magnitude: int | None = None  # M of 10 (Cubuk et al. 2020); None: a magnitude drawn per op (FixMatch)
    cutout: float = 0.0  # side of a square cut out of each image, as a share of the side (0: off; FixMatch 0.5)
    # whose RandAugment and Cutout: fixmatch (kekmodel/FixMatch-pytorch RandAugmentMC: ops with probability 1/2,
    # magnitudes 1..9, a grey 127 square) | usb (microsoft/Semi-supervised-learning: every op, its parameter drawn
    # from its range, no magnitude; a square of U(0, cutout) of the side); longtail.data.randaugment
    policy: str = "fixmatch"
    # AutoAugment (Cubuk et al. 2019) after crop and flip, before RandAugment: none | cifar10 (its 25 CIFAR-10
    # sub-policies as DeepVoltaire/AutoAugment's CIFAR10Policy, which wang22ti/DDC copies); longtail.data.autoaugment
    autoaugment: str = "none"
    # whose Cutout: none (that of augment.policy) | fixmatch | usb | devries (DeVries & Taylor's own, as DDC copies
    # it: a square of 2 * (int(cutout * side) // 2) pixels about a uniform pixel, clipped, black before normalising)
    cutout_policy: str | None = None
    crop_padding_mode: str = "zeros"  # the crop's border (train.crop_padding): zeros (references) | reflect (USB)
    # how train.flip mirrors: random (each image with probability 1/2 every epoch; the references) | alternating
    # (airbench's: a fixed half of the images, chosen by the seed, mirrored in even epochs and the other half in odd
    # ones, so every image is seen both ways in any two epochs; longtail.data.augment.alternating_flip)
    flip_mode: str = "random"
    mix: str = "none"  # none | mixup (Zhang et al. 2018) | cutmix (Yun et al. 2019): pairs of images and their labels
    # progressive resizing (fast.ai's DAWNBench entries, FFCV's ImageNet recipes): the first low_res_share of the
    # epochs train on images scaled down to low_res x low_res pixels (0: off), the rest and the test at full size
    low_res: int = 0
    low_res_share: float = 0.5
    mix_alpha: float = 1.0  # the mixing share is drawn from Beta(alpha, alpha)
    mix_prob: float = 1.0  # share of batches that are mixed

    def __post_init__(self) -> None:
        _check_types(self, "augment")
        _number(self, "augment", "randaugment", 0, fix="use a number of ops >= 0, e.g. --set augment.randaugment=2")
        _number(self, "augment", "randaugment_magnitude", 0, 10,
                fix="use a magnitude from 0 to 10, or none to draw one per op")
        _number(self, "augment", "cutout", 0, 1)
        _choice(self, "augment", "policy", AUGMENT_POLICIES)
        _choice(self, "augment", "autoaugment", AUTOAUGMENT_POLICIES)
        if self.cutout_policy is not None:
            _choice(self, "augment", "cutout_policy", CUTOUT_POLICIES,
                    fix=f"use one of: {', '.join(CUTOUT_POLICIES)}, or none for augment.policy's "
                        "(e.g. --set augment.cutout_policy=devries)")
        _choice(self, "augment", "crop_padding_mode", ("zeros", "reflect"))
        _choice(self, "augment", "flip_mode", ("random", "alternating"))
        _choice(self, "augment", "mix", MIXES)
        _number(self, "augment", "mix_alpha", 0, lo_open=True)
        _number(self, "augment", "mix_prob", 0, 1)
        _number(self, "augment", "low_res", 0, fix="use a side in pixels, e.g. --set augment.low_res=24, or 0 for off")
        if self.low_res and self.low_res < 8:
            raise LongtailError(f"augment.low_res={self.low_res} is too small to train on",
                                "use e.g. 24 for 32-pixel images, or 0 for off")
        _number(self, "augment", "low_res_share", 0, 1)


@dataclass(frozen=True)
class OptimConfig:
    """How a step updates the weights beyond SGD's own settings (``train.lr``, ``momentum``, ``nesterov``,
    ``weight_decay``): sharpness-aware steps, MaxNorm, an averaged copy of the weights. Every one is off by default."""

    name: str = "sgd"  # sgd | sam (sharpness-aware, Foret et al. 2021) | asam (adaptive SAM, Kwon et al. 2021)
    sam_rho: float | None = None  # neighbourhood radius; None: 0.05 for sam, 2.0 for asam (their papers' defaults)
    # a second radius from epoch sam_rho_late_start on (wang22ti/DDC's --rho r0 r1, adjust_rho); none: sam_rho
    # throughout
    sam_rho_late: float | None = None
    # the epoch (0-based) sam_rho_late starts in, in 200-epoch units scaled to the run as train.milestones and
    # train.drw_start (DDC: 160, epoch 320 of 400, where its deferred re-weighting and lr decay also start)
    sam_rho_late_start: float = 160.0
    # which SAM pass updates BatchNorm's running statistics: first (the ascent pass only: Foret et al.'s code,
    # davda54/sam's disable_running_stats) | both (both passes in train mode: wang22ti/DDC, Liu et al.'s rwSAM)
    sam_bn_stats: str = "first"
    # MaxNorm (Alshammari et al. 2022): after every step the classifier's per-class weight norms are projected
    # down to min + t * (max - min) of their norms when training starts; t here (their demo: 0.1), none: off
    maxnorm: float | None = None
    ema: float = 0.0  # > 0: evaluate an exponential moving average of the weights with this decay (USB: 0.999)
    # weight decay on biases and BatchNorm's scales and shifts too (the CIFAR-LT references); false: on the
    # weights of convolutions and linear layers only (USB's bn_wd_skip)
    decay_bn_bias: bool = True
    # airbench94's techniques (longtail.optim; measured on long-tailed data in issue 15), each off by default:
    # > 0: Lookahead weight averaging with this decay per step (airbench: 0.95): from epoch lookahead_start (0-based)
    # on, every lookahead_every steps w <- ema <- lerp(ema, w, 1 - d^every (k / K)^3) at step k of K, and at the end
    # of every epoch w <- ema; the weights are then the averaged ones (what is evaluated and checkpointed)
    lookahead: float = 0.0
    lookahead_start: int = 3  # the epoch (0-based) the averaging starts in (airbench: 3)
    lookahead_every: int = 5  # steps between two averaging updates (airbench: 5)
    # the learning rate of BatchNorm's biases (shifts) times this, their weight decay divided by it, so the decay
    # per step stays that of the other parameters (airbench: 64); 1: off
    bn_bias_lr_mult: float = 1.0
    # FastNet's patch-whitening bias trains in the first N epochs only, frozen from epoch N (airbench: 3); none:
    # it trains throughout
    whiten_bias_epochs: int | None = None

    def __post_init__(self) -> None:
        _check_types(self, "optim")
        _choice(self, "optim", "name", OPTIMIZERS)
        _number(self, "optim", "sam_rho", 0, lo_open=True, fix="use a radius > 0, e.g. 0.05 (sam) or 2 (asam)")
        _number(self, "optim", "sam_rho_late", 0, lo_open=True,
                fix="use a radius > 0, e.g. --set optim.sam_rho_late=0.2, or none to keep optim.sam_rho throughout")
        _number(self, "optim", "sam_rho_late_start", 0,
                fix="use an epoch >= 0 in 200-epoch units, e.g. --set optim.sam_rho_late_start=160 (DDC)")
        _choice(self, "optim", "sam_bn_stats", SAM_BN_STATS)
        _number(self, "optim", "maxnorm", 0, 1, fix="use a share from 0 to 1, e.g. 0.1, or none for no MaxNorm")
        _number(self, "optim", "ema", 0, 1, hi_open=True, fix="use a decay in [0, 1), e.g. 0.999; 0 is off")
        _number(self, "optim", "lookahead", 0, 1, hi_open=True,
                fix="use a decay per step in [0, 1), e.g. --set optim.lookahead=0.95 (airbench); 0 is off")
        _number(self, "optim", "lookahead_start", 0, fix="use an epoch >= 0 (0-based), e.g. 3 (airbench)")
        _number(self, "optim", "lookahead_every", 1, fix="use a number of steps >= 1, e.g. 5 (airbench)")
        _number(self, "optim", "bn_bias_lr_mult", 0, lo_open=True,
                fix="use a factor > 0, e.g. --set optim.bn_bias_lr_mult=64 (airbench); 1 is off")
        _number(self, "optim", "whiten_bias_epochs", 0,
                fix="use a number of epochs >= 0, e.g. 3 (airbench; 0 freezes the bias from the start), or none "
                    "to train it throughout (the default)")


@dataclass(frozen=True)
class SSLConfig:
    """Hyperparameters of the pretext tasks, heads, rwSAM and the representation evaluation."""

    # rotation prediction (Gidaris et al. 2018; Yang & Xu 2020)
    # balanced: one rotation per image, a quarter of the batch each (Yang & Xu) | all: 4x batch
    rotations: str = "balanced"
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
    moco_hidden: int = 512  # MLP head d -> hidden -> dim; 2048 with ResNet-50; 0: a linear head d -> dim (MoCo v1)
    moco_queue: int = 4096  # K
    moco_momentum: float = 0.99  # m
    moco_temperature: float = 0.2  # T
    # BatchNorm groups of the whole batch emulating MoCo's shuffled BN (one process: SplitBatchNorm + key shuffle,
    # as MoCo's CIFAR demo; torchrun: bn_splits // world per process; 1: plain BN)
    moco_bn_splits: int = 8
    # SimSiam (Chen & He 2021)
    simsiam_dim: int = 2048
    simsiam_pred_hidden: int = 512
    simsiam_proj_layers: int = 2  # 2 on CIFAR, 3 on ImageNet
    simsiam_sync_bn: bool = True  # under torchrun on GPUs: SyncBatchNorm, as the paper (no effect in one process)
    # SAM / rwSAM (Foret et al. 2021; Kwon et al. 2021; Liu et al. 2022)
    sam_rho: float = 0.5  # Liu et al.'s default with adaptive SAM
    sam_adaptive: bool = True
    # which SAM pass updates BatchNorm's running statistics: first (the ascent pass only: Foret et al.'s code,
    # davda54/sam) | both (Liu et al.'s rwSAM code, main_sam_weight.py, calls the model in train mode twice)
    sam_bn_stats: str = "first"
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
    # longtailed: probes and k-NN learn from the long-tailed training features | balanced: from n_max images of
    # every class of the same source (CIFAR-10: the full 50,000), as Liu et al.'s main_lincls.py
    probe_data: str = "longtailed"
    probe_schedule: str = "cosine"  # cosine, per step | step: x0.1 at 60 % and 80 % of the epochs (main_lincls.py)
    probe_standardize: bool = True  # standardise features with the probe set's mean / std (Liu et al.: no)
    # the probes train on features of freshly augmented images every epoch (resized crop 0.8-1 + flip, backbone in
    # eval mode), as Liu et al.'s main_lincls.py; false: on the un-augmented features, computed once
    probe_augment: bool = False
    # the resampling of that crop: bilinear (one grid_sample) | bicubic (PIL's kernel on a whole-pixel box, as
    # torchvision's RandomResizedCrop(interpolation=BICUBIC) on PIL images in main_lincls.py)
    probe_interpolation: str = "bilinear"
    # 0: the k-NN and the probes score the test images as they are | N: resized (PIL's bicubic) so the shorter side
    # is N, then centre-cropped back to their size (main_lincls.py: Resize(36, BICUBIC), CenterCrop(32))
    probe_test_resize: int = 0

    def __post_init__(self) -> None:
        _check_types(self, "ssl")
        _choice(self, "ssl", "probe_data", ("longtailed", "balanced"))
        _choice(self, "ssl", "probe_schedule", ("cosine", "step"))
        _choice(self, "ssl", "probe_interpolation", PROBE_INTERPOLATIONS)
        _number(self, "ssl", "probe_test_resize", 0,
                fix="use 0 (the test images as they are) or a side >= the image size, e.g. 36 for 32 px images")
        _choice(self, "ssl", "rotations", ROTATIONS, fix="use balanced or all")
        _number(self, "ssl", "crop_min_scale", 0, 1, lo_open=True)
        for name in ("jitter_prob", "grayscale_prob", "blur_prob"):
            _number(self, "ssl", name, 0, 1)
        for name in ("brightness", "contrast", "saturation"):
            _number(self, "ssl", name, 0)
        _number(self, "ssl", "hue", 0, 0.5)
        _number(self, "ssl", "moco_hidden", 0, fix="use a width >= 1 for an MLP head, or 0 for a linear head")
        for name in ("moco_dim", "moco_queue", "moco_bn_splits", "simsiam_dim",
                     "simsiam_pred_hidden", "simsiam_proj_layers", "rw_every", "knn_k", "probe_epochs",
                     "probe_batch_size"):
            _number(self, "ssl", name, 1)
        _number(self, "ssl", "moco_momentum", 0, 1)
        _number(self, "ssl", "moco_temperature", 0, lo_open=True)
        _number(self, "ssl", "sam_rho", 0)
        _choice(self, "ssl", "rw_weights", RW_WEIGHTS, fix="use kde (label-free), class or none")
        _choice(self, "ssl", "sam_bn_stats", ("first", "both"))
        _number(self, "ssl", "rw_power")
        _number(self, "ssl", "rw_max_weight", 0, lo_open=True)
        _number(self, "ssl", "kde_bandwidth", 0, lo_open=True,
                fix="use a bandwidth > 0, or none for the median pairwise distance")
        _number(self, "ssl", "knn_temperature", 0, lo_open=True)
        _number(self, "ssl", "probe_lr", 0, lo_open=True)


@dataclass(frozen=True)
class RunConfig:
    recipe: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)  # self-supervised pre-training (longtail.ssl)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)  # semi-supervised training (longtail.semi)
    glmc: GLMCConfig = field(default_factory=GLMCConfig)  # GLMC's settings (train.task=glmc)
    mfw: MFWConfig = field(default_factory=MFWConfig)  # major feature weakening
    seed: int = 0

    def __post_init__(self) -> None:
        _check_types(self, "")
        _number(self, "", "seed", 0, fix="use a seed >= 0, e.g. --seeds 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        d = migrate_sections(d)
        try:
            return cls(
                recipe=d.get("recipe", "custom"),
                data=DataConfig(**d.get("data", {})),
                model=ModelConfig(**d.get("model", {})),
                loss=LossConfig(**migrate_loss_section(d.get("loss", {}))),
                train=_fix_tuples(TrainConfig(**d.get("train", {}))),
                ssl=SSLConfig(**d.get("ssl", {})),
                augment=AugmentConfig(**d.get("augment", {})),
                optim=OptimConfig(**d.get("optim", {})),
                semi=SemiConfig(**d.get("semi", {})),
                glmc=GLMCConfig(**d.get("glmc", {})),
                mfw=MFWConfig(**d.get("mfw", {})),
                seed=int(d.get("seed", 0)),
            )
        except TypeError as e:
            raise LongtailError(f"this configuration does not fit this version of longtail: {e}",
                                "re-create the run with this version") from e


#: version 0.1 kept every loss's parameters as flat LossConfig fields: field -> (its loss, parameter, 0.1 default)
_V01_LOSS_FIELDS = {"focal_gamma": ("focal", "gamma", 1.0), "ldam_max_margin": ("ldam", "max_margin", 0.5),
                    "ldam_scale": ("ldam", "scale", 30.0), "tau": ("logit-adjust", "tau", 1.0),
                    "cdt_gamma": ("cdt", "gamma", 0.0)}


def migrate_loss_section(d: dict[str, Any]) -> dict[str, Any]:
    """A ``loss`` section as version 0.1 wrote it (``focal_gamma``, ``ldam_max_margin``, ``ldam_scale``,
    ``tau``, ``cdt_gamma`` side by side) as this version writes it: ``name`` and the ``params`` of that
    loss only, with 0.1's defaults where a field is missing. A current section comes back unchanged.

    >>> migrate_loss_section({"name": "focal", "focal_gamma": 2.0, "ldam_scale": 30.0, "tau": 1.0})
    {'name': 'focal', 'params': {'gamma': 2.0}}
    """
    if not isinstance(d, dict) or "params" in d or not any(k in d for k in _V01_LOSS_FIELDS):
        return d
    name = d.get("name", "ce")
    params = {param: d.get(old, default) for old, (loss, param, default) in _V01_LOSS_FIELDS.items() if loss == name}
    return {**{k: v for k, v in d.items() if k not in _V01_LOSS_FIELDS}, "params": params}


#: settings that versions up to 0.2 kept flat in ``train``, and where they live now
MOVED_SETTINGS = {
    "train.semi": "semi.method", "train.fixmatch_threshold": "semi.threshold",
    "train.fixmatch_lambda_u": "semi.lambda_u", "train.fixmatch_mu": "semi.mu",
    "train.fixmatch_full_batches": "semi.full_batches", "train.fixmatch_alignment": "semi.alignment",
    "train.fixmatch_la_tau": "semi.la_tau", "train.pseudo_weight": "semi.pseudo_weight",
    "train.labeled_fraction": "semi.labeled_fraction", "train.mfw_strength": "mfw.strength",
    "train.mfw_lam_min": "mfw.lam_min",
    **{f"train.glmc_{k}": f"glmc.{k}"
       for k in ("resample_weighting", "label_weighting", "contrast_weight", "mix_alpha", "proj_dim")},
}


def migrate_sections(d: dict[str, Any]) -> dict[str, Any]:
    """A whole configuration dict as an earlier version wrote it (FixMatch's, GLMC's and MFW's settings flat in
    ``train``, see :data:`MOVED_SETTINGS`) as this version writes it: each moved setting in its own section.
    A current dict comes back unchanged (the same object).

    >>> migrate_sections({"train": {"epochs": 5, "fixmatch_mu": 2}})
    {'train': {'epochs': 5}, 'semi': {'mu': 2}}
    """
    train = d.get("train") if isinstance(d, dict) else None
    if not isinstance(train, dict) or not any(f"train.{k}" in MOVED_SETTINGS for k in train):
        return d
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    for name, value in train.items():
        new = MOVED_SETTINGS.get(f"train.{name}")
        if new is None:
            continue
        del out["train"][name]
        sec, _, key = new.partition(".")
        section = out.setdefault(sec, {})
        if isinstance(section, dict):
            section.setdefault(key, value)
    return out


def _fix_tuples(t: TrainConfig) -> TrainConfig:
    return replace(t, milestones=tuple(t.milestones))


SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "train": TrainConfig, "ssl": SSLConfig,
            "augment": AugmentConfig, "optim": OptimConfig, "semi": SemiConfig, "glmc": GLMCConfig, "mfw": MFWConfig}


def override_keys(cfg: RunConfig | None = None) -> list[str]:
    """The dotted settings of ``cfg`` (its loss's parameters as ``loss.NAME``), or, without ``cfg``,
    every setting some config can have (the parameters of every loss)."""
    keys = ["seed"]
    for sec, cls in SECTIONS.items():
        keys += [f"{sec}.{f.name}" for f in fields(cls) if not (sec == "loss" and f.name == "params")]
    params = cfg.loss.params if cfg is not None else dict.fromkeys(p.name for ps in LOSS_PARAMS.values() for p in ps)
    at = keys.index("loss.name") + 1
    return keys[:at] + [f"loss.{p}" for p in params] + keys[at:]


def _coerce(value: str, annotation: Any, key: str) -> Any:
    """Parse a command-line string into the type a config field declares."""
    hint = annotation if not isinstance(annotation, str) else eval(annotation, vars(typing))  # noqa: S307
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional and value.lower() in ("none", "null", ""):
        return None
    base = (next((a for a in args if a is not type(None)), hint)
            if args and typing.get_origin(hint) is not tuple else hint)
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
        kinds = {int: "a whole number, e.g. 10", float: "a number, e.g. 0.1", bool: "true or false"}
        kind = kinds.get(base, "numbers separated by commas, e.g. 160,180")
        raise LongtailError(f"{key}={value!r} is not a valid {getattr(base, '__name__', base)}",
                            f"write {kind}" + (" (or none)" if optional else "")) from None


def _suggestions(key: str, keys: list[str], n: int = 5) -> list[str]:
    """Settings ``key`` may have meant, best first: the same last part (``epochs`` ->
    ``train.epochs``, ``train.gamma`` -> ``loss.gamma``), a slip of the whole key (``train.epoch`` ->
    ``train.epochs``), a last part that ends with it or holds it as a word (``train.gamma`` ->
    ``data.darp_gamma_l``), then close spellings of the whole key or of its last part."""
    key = key.lower()
    last = key.rpartition(".")[2]
    scored = []
    for k in keys:
        tail = k.rpartition(".")[2]
        words = tail.split("_")
        score = max(difflib.SequenceMatcher(None, key, k).ratio(),
                    difflib.SequenceMatcher(None, last, tail).ratio() - 0.01,
                    max(difflib.SequenceMatcher(None, last, w).ratio() for w in words) - 0.1)
        if last == tail:
            score = 2.0
        elif difflib.SequenceMatcher(None, key, k).ratio() >= 0.9:  # a slip of the whole key: train.epoch
            score = 1.8
        elif last and tail.endswith("_" + last):
            score = 1.5
        elif last and last in words:
            score = 1.4
        if score >= 0.75:
            scored.append((score + (0.05 if k.partition(".")[0] == key.partition(".")[0] else 0.0), k))
    scored.sort(key=lambda sk: -sk[0])  # stable: ties keep the config's order
    return [k for _, k in scored[:n]]


# What other libraries call a setting, by its last part, for the "did you mean" of an unknown key: issue 14's own
# ``--set train.optimizer=sam`` is ``optim.name=sam`` here.
SETTING_SYNONYMS = {"optimizer": "optim.name", "opt": "optim.name", "optim": "optim.name", "sam": "optim.name",
                    "rho": "data.imbalance_ratio", "imbalance": "data.imbalance_ratio", "loss": "loss.name",
                    "criterion": "loss.name", "arch": "model.arch", "network": "model.arch", "net": "model.arch",
                    "bs": "train.batch_size", "wd": "train.weight_decay", "lr_schedule": "train.schedule",
                    "scheduler": "train.schedule"}


def _unknown_setting(key: str) -> LongtailError:
    if key in MOVED_SETTINGS:
        return LongtailError(f"{key} has moved: it is now {MOVED_SETTINGS[key]}",
                             f"write {MOVED_SETTINGS[key]} instead (e.g. --set {MOVED_SETTINGS[key]}=VALUE)")
    keys = override_keys()
    sec, dot, _ = key.partition(".")
    close = _suggestions(key, keys)
    synonym = SETTING_SYNONYMS.get(key.lower().rpartition(".")[2])
    if synonym is not None:
        close = [synonym, *(k for k in close if k != synonym)][:5]
    if dot and sec not in SECTIONS:
        problem = (f"unknown setting {key!r}: there is no section {sec!r} "
                   f"(the sections are {', '.join(SECTIONS)}, and the top-level seed)")
    else:
        problem = f"unknown setting {key!r}"
    mean = f"did you mean {' or '.join(close)}? " if close else ""
    return LongtailError(problem, f"{mean}`longtail train RECIPE --show-config` lists every setting with its value")


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return ``cfg`` with dotted-name overrides applied; values may be strings (from the CLI).

    Each override is checked as it is applied (the sections' ``__post_init__``), so a bad value is
    refused with its dotted name before anything is written or trained. The ``loss.*`` overrides are
    applied together, the name first: ``loss.name=cdt`` with ``loss.gamma=0.2`` in any order.
    """
    loss_keys = {k: v for k, v in overrides.items() if k.partition(".")[0] == "loss"}
    for key, value in overrides.items():
        if key == "seed":
            cfg = replace(cfg, seed=_coerce(value, int, key) if isinstance(value, str) else value)
            continue
        sec, _, name = key.partition(".")
        if sec == "loss":  # the loss's name and parameters together, at the first of them
            if loss_keys:
                cfg, loss_keys = replace(cfg, loss=_override_loss(cfg.loss, loss_keys)), {}
            continue
        cls = SECTIONS.get(sec)
        hints = _hints(cls) if cls else {}
        if cls is None or name not in hints:
            raise _unknown_setting(key)
        if isinstance(value, str):
            value = _coerce(value, hints[name], key)
        cfg = replace(cfg, **{sec: replace(getattr(cfg, sec), **{name: value})})
    return cfg


def _override_loss(lc: LossConfig, items: dict[str, Any]) -> LossConfig:
    """``lc`` with ``loss.name`` and ``loss.PARAM`` overrides applied at once: a new name starts from its
    loss's defaults (the parameters of another loss mean nothing to it), then the parameters given."""
    name = items.get("loss.name", lc.name)
    if name not in LOSS_PARAMS:
        raise LongtailError(f"unknown loss.name {name!r}",
                            f"use one of: {', '.join(LOSSES)} (e.g. {_setting('loss.name', LOSSES[0])})")
    params = dict(lc.params) if name == lc.name else {}
    for key, value in items.items():
        if key == "loss.name":
            continue
        param = key.partition(".")[2]
        if param not in loss_param_names(name):
            raise _unknown_loss_param(name, key)
        params[param] = _coerce(value, float, key) if isinstance(value, str) else value
    return LossConfig(name, params)


def _flat(cfg: RunConfig | dict[str, Any]) -> dict[str, Any]:
    """``{"recipe": ..., "seed": ..., "data.dataset": ..., "loss.gamma": ...}`` of a config (or its
    ``to_dict``, as an old run folder's ``config.json`` holds it): the loss's parameters as ``loss.NAME``."""
    d = cfg.to_dict() if isinstance(cfg, RunConfig) else dict(migrate_sections(cfg))
    if isinstance(d.get("loss"), dict):
        loss = migrate_loss_section(d["loss"])
        params = loss.get("params")
        d["loss"] = {**{k: v for k, v in loss.items() if k != "params"}, **(params if isinstance(params, dict) else {})}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update({f"{k}.{name}": x for name, x in v.items()})
        else:
            out[k] = v
    return out


# Settings that change how a run executes, not what it trains (up to float rounding): the device, the step engine,
# compilation, the memory format, TensorBoard, and how often it checkpoints or evaluates on the validation split.
# A run folder started with one value resumes with another (e.g. on a GPU what began on the CPU); every other
# setting must match, or the resume stops and names the difference. The device and train.amp are compared by the
# precision they give together (train.amp=auto is bf16 on CUDA and float32 on the CPU): a resume that would switch
# float32 <-> bf16 is a training difference.
EXECUTION_SETTINGS = frozenset({"train.device", "train.amp", "train.engine", "train.compile", "train.channels_last",
                                "train.tensorboard", "train.checkpoint_every", "train.eval_every"})


def _precision(flat: dict[str, Any]) -> str | None:
    """``bf16`` or ``float32`` as ``train.amp`` and ``train.device`` give it; None where ``device=auto`` leaves it
    to the machine."""
    amp, device = str(flat.get("train.amp", "auto")), str(flat.get("train.device", "auto"))
    if amp in ("bf16", "off"):
        return "bf16" if amp == "bf16" else "float32"
    return None if device == "auto" else ("bf16" if device.startswith("cuda") else "float32")


def training_differences(a: RunConfig | dict[str, Any], b: RunConfig | dict[str, Any],
                         labels: tuple[str, str] = ("run folder", "now")) -> list[str]:
    """:func:`config_differences` without the :data:`EXECUTION_SETTINGS`: what would make ``a``'s run and ``b``'s
    train differently, including a change of arithmetic precision that the device and ``train.amp`` make together."""
    out = [line for line in config_differences(a, b, labels) if line.partition(":")[0] not in EXECUTION_SETTINGS]
    pa, pb = _precision(_flat(a)), _precision(_flat(b))
    if pa is not None and pb is not None and pa != pb:
        out.append(f"precision (train.amp on train.device): {pa} ({labels[0]}) vs {pb} ({labels[1]}); "
                   f"--set train.amp={'off' if pa == 'float32' else 'bf16'} keeps {pa}")
    return out


def config_differences(a: RunConfig | dict[str, Any], b: RunConfig | dict[str, Any],
                       labels: tuple[str, str] = ("run folder", "now")) -> list[str]:
    """One line per dotted setting where ``a`` and ``b`` differ, in config order, e.g.
    ``"train.lr: 0.1 (run folder) vs 0.05 (now)"``; empty when they agree. A dict (an old run
    folder's ``config.json``) may stand for a config; a setting only one side has shows as absent.
    """
    fa, fb = _flat(a), _flat(b)
    absent = object()
    lines = []
    keys = list(dict.fromkeys([*fa, *fb]))
    sections = list(dict.fromkeys(k.partition(".")[0] for k in keys))
    for key in sorted(keys, key=lambda k: sections.index(k.partition(".")[0])):  # a section's keys together
        va, vb = fa.get(key, absent), fb.get(key, absent)
        if isinstance(va, list):
            va = tuple(va)
        if isinstance(vb, list):
            vb = tuple(vb)
        if va == vb and isinstance(va, bool) == isinstance(vb, bool):  # 100 == 100.0, but True != 1
            continue
        sa = "(absent)" if va is absent else _show(va)
        sb = "(absent)" if vb is absent else _show(vb)
        lines.append(f"{key}: {sa} ({labels[0]}) vs {sb} ({labels[1]})")
    return lines


# Configuration files ------------------------------------------------------------------------------------
#
# ``--show-config`` prints a run's whole configuration as TOML; ``longtail train --config FILE`` reads it
# back (TOML, or a run folder's config.json, or the folder itself). Every key of a file goes through
# ``apply_overrides`` as ``--set`` would, so a typo gets the same did-you-mean.


def _toml_value(value: Any) -> str:
    """A TOML literal; None (TOML has no null) is the string "none" that ``--set`` also reads as unset."""
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(float(value)) if isinstance(value, float) and math.isfinite(value) else repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


#: settings that belong to one method, and the test of whether a config uses that method: a setting in a
#: group whose method is off is left out of ``--show-config`` while it keeps its default (see :func:`unused_settings`)
_METHOD_SETTINGS: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("semi.threshold", "semi.mu"), lambda c: c.semi.method != "none"),
    (("semi.lambda_u", "semi.full_batches", "semi.alignment", "semi.la_tau"), lambda c: c.semi.method == "fixmatch"),
    (("semi.acr_",), lambda c: c.semi.method == "acr"),
    (("glmc.",), lambda c: c.train.task == "glmc"),
    (("mfw.lam_min",), lambda c: c.mfw.strength > 0),
    (("semi.pseudo_weight", "semi.labeled_fraction", "data.pseudo_threshold"),
     lambda c: c.data.pseudo_labels is not None),
    (("train.cb_beta",), lambda c: c.train.weighting == "class-balanced" or c.train.sampler == "effective-number"),
    (("train.weighting_power",), lambda c: c.train.weighting == "inverse-power"),
    (("data.darp_",), lambda c: c.data.protocol == "darp"),
    (("augment.randaugment_magnitude",), lambda c: c.augment.randaugment > 0),
    (("augment.policy",), lambda c: c.augment.randaugment > 0 or c.augment.cutout > 0),
    (("augment.cutout_policy",), lambda c: c.augment.cutout > 0),
    (("augment.mix_alpha", "augment.mix_prob"), lambda c: c.augment.mix != "none"),
    (("optim.sam_rho", "optim.sam_bn_stats"), lambda c: c.optim.name != "sgd"),
    (("optim.sam_rho_late_start",), lambda c: c.optim.sam_rho_late is not None),
    (("optim.lookahead_",), lambda c: c.optim.lookahead > 0),
    # FastNet's patch-whitening layer (longtail.models.fastnet.FASTNET_WIDTHS: every name starts with fastnet)
    (("optim.whiten_bias_epochs",), lambda c: c.model.arch.startswith("fastnet")),
)


#: the ``ssl`` settings of each pre-training method (``longtail pretrain METHOD``; longtail.ssl.config.METHODS):
#: its pretext task's, its views', and rwSAM's for the ``*-rwsam`` methods; the representation probes' settings
#: (``knn_*``, ``probe_*``) belong to every method
_VIEWS = ("ssl.crop_min_scale", "ssl.jitter_prob", "ssl.brightness", "ssl.contrast", "ssl.saturation", "ssl.hue",
          "ssl.grayscale_prob", "ssl.blur_prob")
_RWSAM = ("ssl.sam_", "ssl.rw_", "ssl.kde_bandwidth")
_PROBES = ("ssl.knn_", "ssl.probe_")
PRETEXT_SETTINGS: dict[str, tuple[str, ...]] = {
    "rotation": ("ssl.rotations", *_PROBES),
    "moco": ("ssl.moco_", *_VIEWS, *_PROBES),
    "simsiam": ("ssl.simsiam_", *_VIEWS, *_PROBES),
}
PRETEXT_SETTINGS |= {f"{m}-rwsam": (*PRETEXT_SETTINGS[m], *_RWSAM) for m in ("moco", "simsiam")}


def unused_settings(cfg: RunConfig, *, pretrain: bool | str = False, start: RunConfig | None = None) -> list[str]:
    """The dotted settings ``cfg`` does not use and leaves at their defaults: those of a method it does not run
    (FixMatch's with ``semi.method=none``, GLMC's, MFW's, pseudo-labels', the DARP protocol's, RandAugment's,
    mixing's, SAM's, Lookahead's; FastNet's whitening-bias freeze for another architecture) and, unless
    ``pretrain``, the whole ``ssl`` section; with ``pretrain`` a method's name (:data:`PRETEXT_SETTINGS`), the
    ``ssl`` settings of the other methods. Leaving them out of a file changes nothing: :func:`config_from_file`
    fills in the defaults, or ``start``'s values (the recipe the file names): a setting is left out only where
    ``start`` has the default too."""
    flat, default = _flat(cfg), _flat(RunConfig(recipe=cfg.recipe, loss=cfg.loss))
    begin = _flat(start) if start is not None else default
    mine = PRETEXT_SETTINGS.get(pretrain) if isinstance(pretrain, str) else None
    out = []
    for key, value in flat.items():
        if value != default.get(key) or value != begin.get(key):
            continue
        if key.startswith("ssl.") and (not pretrain or (mine is not None and not key.startswith(mine))):
            out.append(key)
        elif any(key.startswith(p) for prefixes, used in _METHOD_SETTINGS for p in prefixes if not used(cfg)):
            out.append(key)
    return out


def config_to_toml(cfg: RunConfig, comments: list[str] | None = None, *, leave_out: Iterable[str] = ()) -> str:
    """``cfg`` as a TOML document that :func:`config_from_file` reads back to the same config; ``comments``
    lead it (e.g. the schedule in the run's own epochs). The loss's parameters sit in ``[loss]`` beside
    its name, as ``--set loss.NAME=VALUE`` gives them. ``leave_out``: dotted settings not written (e.g.
    :func:`unused_settings`, which keep their defaults when the file is read); a section left empty is left out."""
    skip = set(leave_out)
    lines = [f"# {c}" if c else "#" for c in (comments or [])]
    lines += [f"recipe = {_toml_value(cfg.recipe)}", f"seed = {_toml_value(cfg.seed)}"]
    for sec in SECTIONS:
        section = getattr(cfg, sec)
        body = [f"{f.name} = {_toml_value(getattr(section, f.name))}" for f in fields(section)
                if f.name != "params" and f"{sec}.{f.name}" not in skip]
        if not body and sec != "loss":
            continue
        lines += ["", f"[{sec}]", *body]
        if sec == "loss":
            lines += [f"{p} = {_toml_value(v)}" for p, v in cfg.loss.params.items()]
    return "\n".join(lines) + "\n"


def _file_settings(d: dict[str, Any], source: str) -> dict[str, Any]:
    """The dotted settings of a parsed file: top-level ``recipe``/``seed`` and one level of sections."""
    if isinstance(d.get("config"), dict) and "command" in d:  # a run folder's config.json
        d = d["config"]
    flat = _flat(d)
    nested = [k for k, v in flat.items() if isinstance(v, dict)]
    if nested:
        raise LongtailError(f"{source}: [{nested[0]}] is a table, and settings are one level deep",
                            "write each setting under its section, as `longtail train RECIPE --show-config` does")
    return flat


def config_from_file(path: str | os.PathLike[str],
                     recipe_config: Callable[[str], RunConfig | None] | None = None) -> RunConfig:
    """The configuration a file gives: TOML (as ``--show-config`` prints it), a run folder's ``config.json``, or a
    run folder. Keys it leaves out keep the values of the recipe its ``recipe`` names, when ``recipe_config``
    (name -> that recipe's config, or None for a name that is no recipe) knows it, else the defaults; a file that
    ``--show-config`` wrote reads the same either way. Unknown keys are refused as ``--set`` refuses them (with
    did-you-mean); values are checked as any setting is."""
    import json
    import tomllib

    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, "config.json")
    try:
        with open(p, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise LongtailError(f"cannot read the configuration file {p}: {e.strerror or e}",
                            "pass a TOML file (e.g. saved from `longtail train RECIPE --show-config`) or a run "
                            "folder's config.json") from None
    try:
        d = json.loads(raw) if p.endswith(".json") else tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        kind = "JSON" if p.endswith(".json") else "TOML"
        raise LongtailError(f"{p} is not valid {kind}: {e}",
                            "fix the file, or write it afresh with `longtail train RECIPE --show-config > FILE`"
                            ) from None
    if not isinstance(d, dict):
        raise LongtailError(f"{p} holds no table of settings", "see `longtail train RECIPE --show-config`")
    settings = _file_settings(d, p)
    recipe = settings.pop("recipe", "custom")
    if not isinstance(recipe, str):
        raise LongtailError(f"{p}: recipe = {recipe!r} is not a name", 'write e.g. recipe = "my-run"')
    start = recipe_config(recipe) if recipe_config is not None else None
    try:
        return apply_overrides(replace(start, recipe=recipe) if start is not None else RunConfig(recipe=recipe),
                               settings)
    except LongtailError as e:
        raise LongtailError(f"{p}: {e.problem}", e.fix) from None
