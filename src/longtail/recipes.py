"""Named recipes: one ``RunConfig`` per published table row.

Each recipe is the reference setting (REFERENCE.md) written as data; the command line can
override any field (``--epochs``, ``--imbalance-ratio`` or ``--set section.field=value``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from .config import DataConfig, LossConfig, ModelConfig, RunConfig, TrainConfig
from .errors import LongtailError
from .ssl.config import default_config


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    config: RunConfig
    published: str = ""  # the number it reproduces, with its mark from REFERENCE.md
    decouple: str | None = None  # two-stage recipes: the decoupling step run on the trained model
    decouple_epochs: int | None = None  # its training epochs (None: the source's, longtail.decouple.SECOND_STAGES)
    pretrain: str | None = None  # self-supervised pre-training recipes: the method (`longtail pretrain`)
    needs_pretrained: bool = False  # starts from a weights file the user gives (--set model.pretrained=FILE)


def _with(cfg: RunConfig, *, loss: dict | None = None, train: dict | None = None, model: dict | None = None,
          data: dict | None = None) -> RunConfig:
    return replace(
        cfg,
        loss=cfg.loss if loss is None else LossConfig(**loss),  # a new loss: its own parameters only
        train=replace(cfg.train, **(train or {})),
        model=replace(cfg.model, **(model or {})),
        data=replace(cfg.data, **(data or {})),
    )


#: Supervised remedies as changes to the reference CE recipe, with published CIFAR-10-LT / CIFAR-100-LT
#: numbers at rho=100 (REFERENCE.md). CDT's gamma is not given there; Ye et al. tune it in [0, 0.4].
_DRW = {"weighting": "class-balanced", "drw_start": 160.0}
SUPERVISED: dict[str, tuple[str, dict, str, str, str | None]] = {
    # name: (description, changes, C10 published, C100 published, decoupling step)
    "ce": ("cross-entropy", {}, "70.36 [R]", "38.32 [R]", None),
    "focal": ("focal loss, gamma 1 (Lin et al. 2017)", {"loss": {"name": "focal"}}, "70.38 [P]", "38.41 [P]", None),
    "cb-focal": ("focal loss with class-balanced weights, beta 0.9999 (Cui et al. 2019)",
                 {"loss": {"name": "focal"}, "train": {"weighting": "class-balanced"}}, "74.57 [L]", "39.60 [L]", None),
    "ce-drw": ("cross-entropy with deferred class-balanced re-weighting from epoch 160 (Cao et al. 2019)",
               {"train": _DRW}, "", "", None),
    "ldam-drw": ("LDAM loss (max margin 0.5, scale 30, cosine head) with DRW (Cao et al. 2019)",
                 {"loss": {"name": "ldam"}, "model": {"head": "cosine"}, "train": _DRW},
                 "77.03 [L]", "42.04 [L]", None),
    "balanced-softmax": ("balanced softmax (Ren et al. 2020)", {"loss": {"name": "balanced-softmax"}},
                         "77.54 [L]", "42.99 [L]", None),
    "logit-adjust": ("logit-adjusted loss, tau 1 (Menon et al. 2021)", {"loss": {"name": "logit-adjust"}},
                     "77.67 [P]", "43.89 [L]", None),
    "cdt": ("class-dependent temperatures, gamma 0.2 (Ye et al. 2020)",
            {"loss": {"name": "cdt", "params": {"gamma": 0.2}}}, "77.10 [L]", "39.59 [L]", None),
    "crt": ("CE, then classifier re-training with class-balanced sampling (Kang et al. 2020)",
            {"data": {"val_per_class": 20}}, "74.99 [L]", "40.26 [L]", "crt"),
    "tau-norm": ("CE, then tau-normalised classifier, tau chosen on a validation split (Kang et al. 2020)",
                 {"data": {"val_per_class": 20}}, "72.70 [L]", "40.96 [L]", "tau-norm"),
    "lws": ("CE, then learnable weight scaling (Kang et al. 2020)", {"data": {"val_per_class": 20}},
            "72.63 [L]", "40.16 [L]", "lws"),
    "posthoc-la": ("CE, then post-hoc logit adjustment, tau on a validation split (Menon et al. 2021)",
                   {"data": {"val_per_class": 20}}, "", "", "logit-adjust"),
    "mfw": ("CE with major feature weakening, strength 0.5 (Ye et al. 2021; our reading of the paper)",
            {"train": {"mfw_strength": 0.5}}, "", "", None),
}


def _recipes() -> list[Recipe]:
    quick = RunConfig(
        data=DataConfig(dataset="digits", imbalance_ratio=100.0),
        model=ModelConfig(arch="resnet8"),
        train=TrainConfig(epochs=30, batch_size=64, lr=0.05, weight_decay=5e-4, crop_padding=1, flip=False,
                          checkpoint_every=10, device="cpu"),
    )
    out = [
        Recipe("quickstart", "scikit-learn digits, long-tailed rho=100 (140..1 per class), ResNet-8, CE, "
               "30 epochs on the CPU; no download", quick),
    ]
    for ds, label, pub_index in (("cifar10", "CIFAR-10-LT", 2), ("cifar100", "CIFAR-100-LT", 3)):
        base = RunConfig(data=DataConfig(dataset=ds, imbalance_ratio=100.0))
        for method, spec in SUPERVISED.items():
            description, changes, published, decouple = spec[0], spec[1], spec[pub_index], spec[4]
            out.append(Recipe(
                f"{ds}-lt-{method}",
                f"{label} rho=100, ResNet-32, 200 epochs: {description}",
                _with(base, **changes),
                f"rho=100: {published}" if published else "",
                decouple,
            ))
    # flips as the seed's train.py does for every data set (digits are not mirror-symmetric: an ablation's
    # `--set train.flip=false` is one setting away)
    svhn = RunConfig(data=DataConfig(dataset="svhn", imbalance_ratio=100.0))
    out.append(Recipe("svhn-lt-ce", "SVHN-LT rho=100 (n_max 1000, 2,478 images; classes 1..9, 0), ResNet-32, "
                      "200 epochs, CE (flips, as the seed)", svhn,
                      "CE 80.02 at rho=50 [P] (Yang & Xu's slides)"))
    out.append(Recipe("svhn-lt-ldam-drw", "SVHN-LT rho=100, ResNet-32, 200 epochs, LDAM-DRW",
                      _with(svhn, **SUPERVISED["ldam-drw"][1])))
    out += _fast_recipes()
    out += _large_image_recipes()
    out += _semi_recipes()
    out += _ssl_recipes(out)
    return [replace(r, config=replace(r.config, recipe=r.name)) for r in out]


#: epochs of the fast recipes (issue 15: minutes of training on 2 CPU cores; see benchmarks/RESULTS.md)
FAST_EPOCHS = 16


def _fast_recipes() -> list[Recipe]:
    """Minutes on a laptop: FastNet (longtail.models.fastnet, airbench's techniques) with the logit-adjusted loss
    or CE; batch 512 with Nesterov SGD at airbench's per-example rate for a mean loss (lr 0.75 = 1.5 x 512 / 1024,
    momentum 0.85, weight decay 1.33e-3; batch 1024 at lr 1.5 gave 77.40 against 80.01 for seed 0, RESULTS.md),
    a one-cycle rate set every step (peak at 23 % of the run), crop 2 + flip, flip test-time augmentation.
    Any remedy is one ``--set`` away (``--set loss.name=ldam``, ``train.weighting=...``)."""
    out = []
    for ds, label in (("cifar10", "CIFAR-10-LT"), ("cifar100", "CIFAR-100-LT"), ("svhn", "SVHN-LT")):
        cfg = RunConfig(data=DataConfig(dataset=ds, imbalance_ratio=100.0),
                        model=ModelConfig(arch="fastnet-m", tta="flip"),
                        loss=LossConfig(name="logit-adjust"),
                        train=TrainConfig(epochs=FAST_EPOCHS, batch_size=512, lr=0.75, momentum=0.85, nesterov=True,
                                          weight_decay=1.33e-3, schedule="onecycle", warmup_epochs=46.0,
                                          crop_padding=2, checkpoint_every=4))
        base = f"{label} rho=100, FastNet-M (0.50M), {FAST_EPOCHS} epochs, minutes on a CPU"
        out.append(Recipe(f"{ds}-lt-fast-la", f"{base}: logit-adjusted loss, tau 1", cfg))
        out.append(Recipe(f"{ds}-lt-fast-ce", f"{base}: cross-entropy", _with(cfg, loss={"name": "ce"})))
    return out


def _large_image_recipes() -> list[Recipe]:
    """ImageNet-LT and iNaturalist 2018 from their split files (REFERENCE.md): ResNet-50, 90 epochs, cosine,
    lr 0.2; then cRT with class-balanced sampling on the frozen backbone (10 epochs, 30 on iNat)."""
    out = []
    for ds, label, batch, wd, crt_epochs, pub in (("imagenet-lt", "ImageNet-LT", 128, 5e-4, 10, "38.4 [P]"),
                                                    ("inat2018", "iNaturalist 2018", 100, 1e-4, 30, "60.7 [P]")):
        cfg = RunConfig(data=DataConfig(dataset=ds, root="data/" + ds),
                        model=ModelConfig(arch="resnet50"),
                        train=TrainConfig(epochs=90, batch_size=batch, lr=0.2, weight_decay=wd, schedule="cosine",
                                          warmup_epochs=0, checkpoint_every=1))
        base = f"{label}, ResNet-50 from scratch, 90 epochs, batch {batch}, lr 0.2 cosine, wd {wd:g}"
        out.append(Recipe(f"{ds}-ce", f"{base}: cross-entropy", cfg, f"CE {pub} (Yang & Xu's slides)"))
        out.append(Recipe(f"{ds}-crt", f"{base}: CE, then cRT ({crt_epochs} epochs, class-balanced sampling)",
                          cfg, decouple="crt", decouple_epochs=crt_epochs))
    own = RunConfig(data=DataConfig(dataset="folder", root="my_images"), model=ModelConfig(arch="resnet18"),
                    train=TrainConfig(epochs=30, batch_size=64, lr=0.1, weight_decay=5e-4, schedule="cosine",
                                      warmup_epochs=1, checkpoint_every=1))
    out.append(Recipe("folder-ce", "your images: --data-root DIR with DIR/train/<class>/* and DIR/test/<class>/*; "
                      "ResNet-18 from scratch, 224 px, 30 epochs, cosine, CE (any --set loss.name=... applies)", own))
    out.append(Recipe("folder-balanced-softmax", "your images as folder-ce, with the balanced-softmax loss",
                      _with(own, loss={"name": "balanced-softmax"})))
    # From pre-trained weights (LIFT, Shi et al. ICML 2024: a pre-trained backbone tuned lightly with the logit-
    # adjusted loss beats long-tailed training from scratch). Our own settings, not a reproduction of LIFT.
    tuned = _with(own, model={"arch": "resnet50"}, loss={"name": "logit-adjust"},
                  train={"epochs": 10, "warmup_epochs": 0, "lr": 0.1, "weight_decay": 5e-4})
    need = "; --set model.pretrained=FILE: torchvision's ResNet-50 ImageNet weights, downloaded by you"
    out.append(Recipe("folder-finetune-linear", "your images, 224 px: a pre-trained ResNet-50 frozen (BatchNorm "
                      "included), a linear head trained 10 epochs with the logit-adjusted loss" + need,
                      _with(tuned, train={"freeze_backbone": True}), needs_pretrained=True))
    out.append(Recipe("folder-finetune-full", "your images, 224 px: a pre-trained ResNet-50 fine-tuned whole for "
                      "10 epochs (lr 0.01, cosine) with the logit-adjusted loss" + need,
                      _with(tuned, train={"lr": 0.01}), needs_pretrained=True))
    return out


def _ssl_recipes(supervised: list[Recipe]) -> list[Recipe]:
    """Self-supervised pre-training (Yang & Xu 2020; Liu et al. 2022) and fine-tuning after it."""

    out = []
    for ds in ("cifar10", "cifar100"):
        label = {"cifar10": "CIFAR-10-LT", "cifar100": "CIFAR-100-LT"}[ds]
        out.append(Recipe(f"{ds}-lt-rotation-ssp", f"{label} rho=100: rotation-prediction pre-training "
                          "of ResNet-32 with the reference 200-epoch recipe (`longtail pretrain`)",
                          default_config("rotation", ds), pretrain="rotation"))
    out.append(Recipe("cifar10-lt-simsiam", "CIFAR-10-LT rho=100: SimSiam pre-training, ResNet-32, 800 epochs, "
                      "batch 512, cosine (`longtail pretrain`)", default_config("simsiam", "cifar10"),
                      pretrain="simsiam"))
    out.append(Recipe("cifar10-lt-simsiam-rwsam", "CIFAR-10-LT rho=100: SimSiam with re-weighted SAM (adaptive, "
                      "rho 0.5, label-free KDE weights; Liu et al. 2022)", default_config("simsiam-rwsam", "cifar10"),
                      "linear-probe error 14.4 [P] (ResNet-18, balanced probe data)", pretrain="simsiam-rwsam"))
    out.append(Recipe("imagenet-lt-moco", "ImageNet-LT: MoCo v2 pre-training, ResNet-50, 200 epochs, lr 0.015, "
                      "K 65536, m 0.999, T 0.2, blur; images decoded once to 224 px (about 17 GB of memory "
                      "per process); torchrun shuffles keys across GPUs", default_config("moco", "imagenet-lt"),
                      "then CE(Uniform) error 54.4, cRT 48.7 [R]", pretrain="moco"))
    by_name = {r.name: r for r in supervised}
    # The seed's "CE(Balanced) + SSP" (README of YyzHarry/imbalanced-semi-self: error 23.47 / 56.94) is
    # train.py --train_rule Resample, the only re-sampling its CIFAR code has: utils.ImbalancedDatasetSampler,
    # each image drawn with its class's effective-number weight (1 - beta) / (1 - beta^n_c), beta 0.9999, so
    # the classes are drawn in proportion n_c (1 - beta) / (1 - beta^n_c): 1.27 : 1 from head to tail on
    # CIFAR-10-LT rho=100, far from uniform. Our reading: "Balanced" names that sampler (the README gives no
    # command line for the row); its dataset/ClassAwareSampler.py is used by no CIFAR script.
    finetune: tuple[tuple[str, str, dict[str, str], str, str, str], ...] = (
        # (suffix, base recipe suffix, train changes, what they are, published C10, published C100)
        ("ce-rotation-ssp", "ce", {}, "", "73.50 [R]", "40.40 [R]"),
        ("ce-cb-rotation-ssp", "ce", {"sampler": "effective-number"},
         ", the seed's CE(Balanced): effective-number sampling, beta 0.9999", "76.53 [R]", "43.06 [R]"),
        ("ldam-drw-rotation-ssp", "ldam-drw", {}, "", "77.83 [L]", "43.43 [L]"),
    )
    for ds in ("cifar10", "cifar100"):
        for suffix, base, changes, sampling, p10, p100 in finetune:
            b = by_name[f"{ds}-lt-{base}"]
            cfg = _with(b.config, train={**changes, "init_from": f"runs/{ds}-lt-rotation-ssp"})
            out.append(Recipe(f"{ds}-lt-{suffix}", f"{b.description}{sampling}, initialised from "
                              f"runs/{ds}-lt-rotation-ssp (--init-from to change)", cfg,
                              f"rho=100: {p10 if ds == 'cifar10' else p100}"))
    return out


def _semi_recipes() -> list[Recipe]:
    """Unlabeled data (Yang & Xu 2020; the DARP/ABC/USB protocol). Pipelines: scripts/semi_pseudo.sh."""
    # CIFAR-10 alone cannot hold the reference's 5x pool next to a rho=50 subset with n_max=5000 (the
    # head class uses all its images); n_max=750 is the largest that fits a rho_U=100 pool of 5x.
    seed_style = DataConfig(dataset="cifar10", imbalance_ratio=50.0, n_max=750)
    darp = DataConfig(dataset="cifar10", protocol="darp")
    rows = [
        ("cifar10-semi-base", "labeled CIFAR-10-LT rho=50 (n_max 750, 2,096 images), CE: the base model that "
         "pseudo-labels the pool", RunConfig(data=seed_style), "CE rho=50 error 29.6 [R] (n_max 5000)"),
        ("cifar10-semi-pseudo", "the base's labeled set + its pseudo-labeled pool (--set data.pseudo_labels=DIR), "
         "CE, batch 256", RunConfig(data=seed_style, train=TrainConfig(batch_size=256)),
         "error 16.79..19.94 by rho_U [R] (TinyImages pool)"),
        ("cifar10-semi-darp-supervised", "DARP protocol (N1=1500, gamma_l=100), labeled data only, CE",
         RunConfig(data=darp), "63.83 [R] (USB, WRN-28-2)"),
        ("cifar10-semi-darp-pseudo", "DARP protocol labeled + pseudo-labels of its unlabeled part "
         "(--set data.pseudo_labels=DIR from `pseudo-label RUN --pool darp`), CE, batch 256",
         RunConfig(data=darp, train=TrainConfig(batch_size=256)), ""),
        ("cifar10-semi-darp-fixmatch", "DARP protocol, FixMatch (threshold 0.95, mu 7)",
         RunConfig(data=darp, train=TrainConfig(semi="fixmatch")), "76.69 [R] (USB, WRN-28-2)"),
        ("cifar10-semi-darp-fixmatch-da", "DARP protocol, FixMatch with distribution alignment",
         RunConfig(data=darp, train=TrainConfig(semi="fixmatch", fixmatch_alignment="da")), ""),
        ("cifar10-semi-darp-fixmatch-la", "DARP protocol, FixMatch with logit-adjusted pseudo-labels",
         RunConfig(data=darp, train=TrainConfig(semi="fixmatch", fixmatch_alignment="la")), ""),
    ]
    return [Recipe(name, f"{desc}; ResNet-32, 200 epochs", cfg, pub) for name, desc, cfg, pub in rows]


RECIPES: dict[str, Recipe] = {r.name: r for r in _recipes()}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise LongtailError(f"unknown recipe {name!r}", f"{hint}`longtail recipes` lists them")
    return RECIPES[name]


__all__ = ["LossConfig", "RECIPES", "Recipe", "get_recipe"]
