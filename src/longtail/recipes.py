"""Named recipes: one ``RunConfig`` per published table row.

Each recipe is the reference setting (REFERENCE.md) written as data; the command line can
override any field (``--epochs``, ``--imbalance-ratio`` or ``--set section.field=value``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from .config import (
    AugmentConfig,
    DataConfig,
    GLMCConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SemiConfig,
    TrainConfig,
)
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


def _with(cfg: RunConfig, *, loss: dict | None = None, **sections: dict) -> RunConfig:
    """``cfg`` with a new loss (its own parameters only) and the fields of other sections replaced."""
    out = cfg if loss is None else replace(cfg, loss=LossConfig(**loss))
    return replace(out, **{sec: replace(getattr(cfg, sec), **changes) for sec, changes in sections.items()})


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
            {"mfw": {"strength": 0.5}}, "", "", None),
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
    out += _wb_recipes()
    out += _glmc_recipes()
    out += _vs_adrw_tla_recipes()
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
#: epochs of the 5-minute fast recipes (FastNet-SM: 20-25 s an epoch on 2 quiet CPU cores; 13 epochs took 260-269 s)
FAST_5MIN_EPOCHS = 13
#: epochs of the 10-minute fast recipes (FastNet-M, 34 epochs: 529-587 s of training on the 2-core AVX-512 AMD EPYC
#: host of 2026-12-01, 15-17 s an epoch; on the host of 2026-11-30, 31 s an epoch, they would take about 18 minutes)
FAST_10MIN_EPOCHS = 34
#: the 10-minute recipes' test-time augmentation: airbench94's level 2 (flip + one-pixel translations; evaluation
#: only, no training time; CIFAR-10-LT seeds 0-2: 82.30 +- 0.32 against flip's 81.96 +- 0.27; benchmarks/NOTES.md)
FAST_10MIN_TTA = "flip-translate"


def _fast_recipes() -> list[Recipe]:
    """Minutes on a laptop: FastNet (longtail.models.fastnet, airbench's techniques) with the logit-adjusted loss
    or CE; batch 256 with Nesterov SGD at airbench's per-example rate for a mean loss (lr 0.375 = 1.5 x 256 / 1024,
    momentum 0.85, weight decay 1.33e-3; on CIFAR-10-LT, seeds 0-2: batch 1024 at lr 1.5 76.62 %, batch 512 at 0.75
    80.02 %, batch 256 80.54 %, at the same time per epoch on a 2-core CPU; benchmarks/RESULTS.md), a one-cycle rate
    set every step (peak at 23 % of the run), crop 2 + flip, flip test-time augmentation.
    Any remedy is one ``--set`` away (``--set loss.name=ldam``, ``train.weighting=...``)."""
    out = []
    for ds, label in (("cifar10", "CIFAR-10-LT"), ("cifar100", "CIFAR-100-LT"), ("svhn", "SVHN-LT")):
        cfg = RunConfig(data=DataConfig(dataset=ds, imbalance_ratio=100.0),
                        model=ModelConfig(arch="fastnet-m", tta="flip"),
                        loss=LossConfig(name="logit-adjust"),
                        train=TrainConfig(epochs=FAST_EPOCHS, batch_size=256, lr=0.375, momentum=0.85, nesterov=True,
                                          weight_decay=1.33e-3, schedule="onecycle", warmup_epochs=46.0,
                                          crop_padding=2, checkpoint_every=4))
        base = f"{label} rho=100, FastNet-M (0.50M), {FAST_EPOCHS} epochs, minutes on a CPU"
        out.append(Recipe(f"{ds}-lt-fast-la", f"{base}: logit-adjusted loss, tau 1", cfg))
        out.append(Recipe(f"{ds}-lt-fast-ce", f"{base}: cross-entropy", _with(cfg, loss={"name": "ce"})))
        # issue 15's 5-minute budget: the same training on FastNet-SM (24/96/128, 0.37M; 20-25 s an epoch against
        # FastNet-M's 31 s on 2 CPU cores), 13 epochs
        out.append(Recipe(f"{ds}-lt-fast-la-5min", f"{label} rho=100, FastNet-SM (0.37M), {FAST_5MIN_EPOCHS} epochs, "
                          "about 5 minutes on a 2-core CPU: logit-adjusted loss, tau 1",
                          _with(cfg, model={"arch": "fastnet-sm"}, train={"epochs": FAST_5MIN_EPOCHS})))
        # issue 15's 10-minute budget: FastNet-M for as many epochs as 10 minutes hold on the faster of the two 2-core
        # hosts measured (34 x 15-17 s): the recipe is a number of epochs, so its time is the host's; evaluated with
        # airbench's flip + translate test-time augmentation (six forward passes a test image, no training time)
        out.append(Recipe(f"{ds}-lt-fast-la-10min", f"{label} rho=100, FastNet-M (0.50M), {FAST_10MIN_EPOCHS} epochs, "
                          "about 9-10 minutes on a 2-core AVX-512 CPU: logit-adjusted loss, tau 1, flip + translate "
                          "test-time augmentation",
                          _with(cfg, model={"tta": FAST_10MIN_TTA}, train={"epochs": FAST_10MIN_EPOCHS})))
    # your own small images: the same network and training (cfg's model, loss, train) on a folder decoded once
    # into memory at 32 px (the tensor paths: crop + flip on the device, FastNet's whitening from the training
    # images), each image whole (short side to 32, centre crop: 32x32 images kept exactly, as CIFAR's);
    # ImageNet's normalisation constants, as every folder recipe
    folder = replace(cfg, data=DataConfig(dataset="folder", root="my_images", image_size=32, in_memory=True,
                                          decode_view="whole"))
    base = ("your small images (e.g. 32 px; --set data.image_size=N for others): --data-root DIR with "
            "DIR/train/<class>/* and DIR/test/<class>/*, decoded once into memory at 32 px, each image whole "
            "(3 KB an image); "
            f"FastNet-M, {FAST_EPOCHS} epochs, minutes on a CPU")
    out.append(Recipe("folder-fast-la", f"{base}: logit-adjusted loss, tau 1", folder))
    out.append(Recipe("folder-fast-ce", f"{base}: cross-entropy", _with(folder, loss={"name": "ce"})))
    return out


def _wb_recipes() -> list[Recipe]:
    """Weight balancing (Alshammari et al., CVPR 2022; longtail.weight_balancing): stage 1 as their CIFAR-100-LT demo
    (ShadeAlsha/LTR-weight-balancing demo1_first-stage-training: CE, SGD momentum 0.9, lr 0.01, cosine to 0 over
    320 epochs, batch 64, the grid-searched weight decay 5e-3) on our ResNet-32 (theirs: a ResNet-34), then
    ``longtail decouple --method wb`` (their demo 2: the classifier, class-balanced loss, wd 0.1, MaxNorm 0.1)."""
    train = TrainConfig(epochs=320, batch_size=64, lr=0.01, weight_decay=5e-3, schedule="cosine", warmup_epochs=0)
    out = []
    for ds, label, published in (("cifar10", "CIFAR-10-LT", ""),
                                 ("cifar100", "CIFAR-100-LT", "rho=100: 53.35 [P] with their ResNet-34 and the "
                                  "epoch best on the test set (46.08 after stage 1); none for ResNet-32")):
        cfg = RunConfig(data=DataConfig(dataset=ds, imbalance_ratio=100.0), train=train)
        out.append(Recipe(f"{ds}-lt-wb", f"{label} rho=100, ResNet-32, 320 epochs: CE with weight decay 5e-3 (lr "
                          "0.01 cosine, batch 64), then weight balancing's second stage: the classifier trained "
                          "10 epochs with the class-balanced loss, wd 0.1 and MaxNorm (Alshammari et al. 2022)",
                          cfg, published, decouple="wb"))
    return out


def _glmc_recipes() -> list[Recipe]:
    """GLMC (Du et al., CVPR 2023; longtail.glmc) with their README's CIFAR commands for rho=100 (ynu-yangpeng/GLMC
    2c0261c, written after their sampling fix): SGD momentum 0.9, lr 0.01 cosine to 0 over 200 epochs (stepped
    per epoch), batch 64, weight decay 5e-3, --resample_weighting 0.0, --label_weighting 1.2, --contrast_weight 1
    (CIFAR-10) / 4 (CIFAR-100), their normalisation constants; on the standard ResNet-32 (0.46M), where theirs
    has base width 64 (7.4M: --set model.arch=resnet32-w4). Their numbers are the best epoch on the test set."""
    train = TrainConfig(epochs=200, batch_size=64, lr=0.01, momentum=0.9, weight_decay=5e-3, schedule="cosine",
                        warmup_epochs=0, task="glmc")
    glmc = GLMCConfig(resample_weighting=0.0, label_weighting=1.2)
    wide = "their ResNet-32 of base width 64 (7.4M parameters; resnet32-w4), best epoch on the test set"
    out = []
    for ds, label, contrast, normalization, before, fixed, maxnorm in (
            ("cifar10", "CIFAR-10-LT", 1.0, "cifar10-data", "87.75", "88.50", "89.58"),
            ("cifar100", "CIFAR-100-LT", 4.0, None, "55.88", "57.97", "58.41")):
        cfg = RunConfig(data=DataConfig(dataset=ds, imbalance_ratio=100.0, normalization=normalization),
                        train=train, glmc=replace(glmc, contrast_weight=contrast))
        out.append(Recipe(f"{ds}-lt-glmc", f"{label} rho=100, ResNet-32, 200 epochs: GLMC, global mixup and local "
                          "CutMix with re-sampled partners, their consistency, a re-balanced second head weighted in "
                          f"cumulatively (consistency weight {contrast:g}; batch 64, lr 0.01 cosine, wd 5e-3; "
                          "Du et al. 2023)", cfg,
                          f"rho=100: {before} [R] as published (before their sampling fix), {fixed} [R] after it, "
                          f"{maxnorm} [R] after it with MaxNorm; {wide}"))
    return out


def _vs_adrw_tla_recipes() -> list[Recipe]:
    """VS + ADRW + TLA (Wang et al., NeurIPS 2023; wang22ti/DDC bcae46e, ``bash_script.sh`` and
    ``cifar_train_sam.py``), their "400 epochs with tuned wd, SAM, and RandAug" rows at rho=100. Their number
    comes from two commands: a plain VS run (``--train_rule None``) and an ``ADRW-T`` run that resumes its epoch-320
    checkpoint (model, SGD momentum and the optimizer's hyperparameters) for epochs 321-400. As one run: ResNet-32,
    batch 128, SGD momentum 0.9, lr 0.1 (warm-up, x0.01 after epoch 320, x0.0001 after 360), SAM with both passes
    updating BatchNorm's statistics and rho of the VS run (0.1 / 0.2) until epoch 320, then the ADRW-T command's
    (0.2 / 0.4); VS (gamma 0.05, tau 1) until epoch 320, then TLA (its multiplicative part dropped, tau of the
    ADRW-T command) with ADRW weights (n_c / N)^-tro; weight decay 2e-4 throughout (the resumed optimizer state
    keeps the VS run's; see docs/PROTOCOLS.md); crop + flip, AutoAugment's CIFAR-10 policy and DeVries & Taylor's
    black 16-pixel Cutout (their ``--randaug 1``). What still differs: the warm-up reaches lr 0.1 at epoch 5
    (theirs goes on to 0.2 at epoch 10), one run instead of two commands, and the draws (torch generators)."""
    out = []
    for ds, label, rho, rho_late, power, late_tau, published in (
            ("cifar10", "CIFAR-10-LT", 0.1, 0.2, 0.15, 1.0, "86.42 [R] (± 0.10)"),
            ("cifar100", "CIFAR-100-LT", 0.2, 0.4, 0.25, 0.75, "53.05 [R] (± 0.12)")):
        cfg = RunConfig(data=DataConfig(dataset=ds, imbalance_ratio=100.0),
                        loss=LossConfig("vs-tla", {"gamma": 0.05, "tau": 1.0, "late_tau": late_tau}),
                        train=TrainConfig(epochs=400, batch_size=128, lr=0.1, momentum=0.9, weight_decay=2e-4,
                                          schedule="step", warmup_epochs=2.5, milestones=(160.0, 180.0),
                                          weighting="inverse-power", weighting_power=power, drw_start=160.0),
                        optim=OptimConfig(name="sam", sam_rho=rho, sam_rho_late=rho_late, sam_rho_late_start=160.0,
                                          sam_bn_stats="both"),
                        augment=AugmentConfig(autoaugment="cifar10", cutout=0.5, cutout_policy="devries"))
        out.append(Recipe(f"{ds}-lt-vs-adrw-tla", f"{label} rho=100, ResNet-32, 400 epochs: VS loss (gamma 0.05, "
                          f"tau 1) with SAM (rho {rho:g}, {rho_late:g} from epoch 321), AutoAugment (CIFAR-10 "
                          f"policy) + Cutout, wd 2e-4; from epoch 321 truncated logit adjustment (tau {late_tau:g}) "
                          f"with ADRW weights (n_c / N)^-{power:g} (Wang et al. 2023)",
                          cfg, f"rho=100: {published}, 400 epochs with their AutoAugment + Cutout and SAM schedule"))
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
    # Liu et al. (ICLR 2022; Liuhong99/Imbalanced-SSL, README commands for cifar/main.py and main_sam_weight.py):
    # --arch resnet18 (their CIFAR ResNet18: resnet18-cifar), --epochs 1600, --batch_size 512, --learning_rate 0.06
    # (cosine), --weight_decay 5e-4, --momentum 0.9; rwSAM: adaptive, rho 0.5 (main_sam_weight.py defaults). Their
    # evaluation, main_lincls.py: a linear probe on the full balanced CIFAR-10 training set, 100 epochs, batch 256,
    # lr 30, momentum 0.9, wd 0, x0.1 at epochs 60 and 80, raw features, each epoch on freshly augmented images
    # (RandomResizedCrop(32, scale=(0.8, 1), BICUBIC) + flip, the frozen model in eval mode; commit 9783c43, lines
    # 260-267, 350), scored on test images resized to int(32 * 8 / 7) = 36 (BICUBIC) and centre-cropped to 32 (268-273).
    liu_text = ("ResNet-18 (Liu et al.'s CIFAR ResNet18), 1,600 epochs, batch 512, lr 0.06 cosine; report: k-NN and "
                "linear probe (lr 30, 100 epochs, steps at 60 / 80) trained on the full balanced CIFAR-10 training set")
    for method, what, published in (
            ("simsiam", "SimSiam pre-training", ""),
            ("simsiam-rwsam", "SimSiam with re-weighted SAM (adaptive, rho 0.5, label-free KDE weights)",
             "linear-probe error 14.4 [P] (ResNet-18, balanced probe data)")):
        r32 = default_config(method, "cifar10")
        liu = replace(r32, model=replace(r32.model, arch="resnet18-cifar"), train=replace(r32.train, epochs=1600),
                      ssl=replace(r32.ssl, probe_data="balanced", probe_epochs=100, probe_batch_size=256, probe_lr=30.0,
                                  probe_schedule="step", probe_standardize=False, probe_augment=True,
                                  probe_interpolation="bicubic", probe_test_resize=36,
                                  # main_sam_weight.py runs both SAM passes in train mode: both update BatchNorm
                                  sam_bn_stats="both"))
        out.append(Recipe(f"cifar10-lt-{method}", f"CIFAR-10-LT rho=100: {what}, Liu et al. 2022's protocol: "
                          f"{liu_text} (`longtail pretrain`)", liu, published, pretrain=method))
        out.append(Recipe(f"cifar10-lt-{method}-r32", f"CIFAR-10-LT rho=100: {what} of ResNet-32 (the reference "
                          "recipes' backbone, for --init-from), 800 epochs, batch 512, cosine; probes on the "
                          "long-tailed features (`longtail pretrain`)", r32, pretrain=method))
    out.append(Recipe("cifar10-lt-moco", "CIFAR-10-LT rho=100: MoCo pre-training with MoCo's CIFAR-10 demo settings "
                      "(its ResNet-18, 200 epochs, batch 512, lr 0.06 cosine, wd 5e-4, K 4096, m 0.99, T 0.1, linear "
                      "128-d head, crop scale 0.08..1, 8 BatchNorm splits; `longtail pretrain`)",
                      default_config("moco", "cifar10"), pretrain="moco"))
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
    # Issue 14's goal (>= 87 / >= 55 on the standard ResNet-32, last epoch, 3 seeds): a candidate made of the two
    # pieces with evidence behind them, not yet run at its schedule. The strongest published 0.46M-parameter recipe
    # (VS + ADRW + TLA with SAM and AutoAugment, 400 epochs: 86.42 / 53.05 [R]) started from rotation SSP (Yang & Xu
    # 2020: +0.8 to +3.1 points on CE, CB and LDAM-DRW in their table; +1.05 for LA on the fast CPU table).
    for ds, goal in (("cifar10", "87"), ("cifar100", "55")):
        b = by_name[f"{ds}-lt-vs-adrw-tla"]
        cfg = _with(b.config, train={"init_from": f"runs/{ds}-lt-rotation-ssp"})
        out.append(Recipe(f"{ds}-lt-best", f"candidate for issue 14's goal (>= {goal} % with ResNet-32), not yet run "
                          f"at its schedule: {ds}-lt-vs-adrw-tla initialised from runs/{ds}-lt-rotation-ssp "
                          "(--init-from to change): " + b.description, cfg))
    return out


#: USB's imbalanced CIFAR-10 runs (microsoft/Semi-supervised-learning, config/classic_cv_imb/fixmatch/
#: fixmatch_cifar10_lb1500_100_ulb3000_100_0.yaml and .../supervised/supervised_cifar10_lb1500_100_ulb3000_100_0.yaml)
#: train 2^18 = 262,144 iterations of 64 labeled images. Our epoch is one pass over the 3,720 labeled images of the
#: DARP protocol in ceil(3720 / 64) = 59 batches (FixMatchTask.steps_per_epoch), so 2^18 iterations are
#: 262,144 / 59 = 4,443.1 epochs: 4,443 (262,137 steps).
USB_ITERATIONS = 2 ** 18
USB_EPOCHS = 4443


def _semi_recipes() -> list[Recipe]:
    """Unlabeled data (Yang & Xu 2020; the DARP/ABC/USB protocol). Pipelines: scripts/semi_pseudo.sh."""
    # CIFAR-10 alone cannot hold the reference's 5x pool next to a rho=50 subset with n_max=5000 (the
    # head class uses all its images); n_max=750 is the largest that fits a rho_U=100 pool of 5x.
    seed_style = DataConfig(dataset="cifar10", imbalance_ratio=50.0, n_max=750)
    # DARP's and ABC's loaders normalise with CIFAR-10's own pixel statistics (bbuing9/DARP dataset/all_cifar10.py)
    darp = DataConfig(dataset="cifar10", protocol="darp", normalization="cifar10-data")
    # USB's protocol: its split shuffles each class before cutting (data.darp_order=shuffled), keeps labeled and
    # unlabeled apart (include_lb_to_ulb: False) and normalises CIFAR-10 with ImageNet's statistics (semilearn/
    # datasets/cv_datasets/cifar.py); WRN-28-2; SGD lr 0.03, momentum 0.9, Nesterov, wd 5e-4; FixMatch's cosine
    # lr cos(7 pi k / 16 K) set every step; batch 64 (+ uratio 2 x 64 unlabeled); an EMA of the weights (0.999)
    # is what is evaluated; the strong view is RandAugment(3 ops, a magnitude drawn per op) + Cutout (<= half).
    usb_train = TrainConfig(epochs=USB_EPOCHS, batch_size=64, lr=0.03, momentum=0.9, nesterov=True, weight_decay=5e-4,
                            schedule="fixmatch-cosine", warmup_epochs=0.0, checkpoint_every=50)
    usb = RunConfig(data=replace(darp, darp_order="shuffled", normalization="imagenet"),
                    model=ModelConfig(arch="wrn-28-2"), train=usb_train,
                    optim=OptimConfig(ema=0.999, decay_bn_bias=False),
                    augment=AugmentConfig(crop_padding_mode="reflect"))  # RandomCrop(padding_mode="reflect")
    usb_fixmatch = replace(usb, semi=SemiConfig(method="fixmatch", mu=2, full_batches=True, threshold=0.95,
                                                lambda_u=1.0),
                           augment=AugmentConfig(randaugment=3, randaugment_magnitude=None, cutout=0.5, policy="usb",
                                                 crop_padding_mode="reflect"))
    usb_text = (f"; USB's protocol: WRN-28-2, 2^18 steps ({USB_EPOCHS} epochs of 59 batches of 64), lr 0.03 "
                "Nesterov, wd 5e-4, cosine 7/16, EMA 0.999, USB's shuffled split and ImageNet normalisation")
    fixmatch_text = ", mu 2, threshold 0.95, strong view RandAugment(3) + Cutout" + usb_text
    short = "; the short variant: ResNet-32, 200 epochs of batch 128 (about 6,000 steps), the step schedule"
    # ACR's protocol (Gank0078/ACR 9a8f421, train.py and its README commands; kekmodel/FixMatch-pytorch's base):
    # the first images of each class in file order, the labeled images also in the pool (marked -2 there),
    # CIFAR-10's own statistics, WRN-28-2 with a second head, 500 epochs of 500 steps of 64 labeled + mu 1 x 64
    # unlabeled, SGD lr 0.03 Nesterov, wd 5e-4 off BatchNorm and biases, cos(7 pi k / 16 K) per step, EMA 0.999,
    # strong views RandAugmentMC(2, 10) + Cutout 16 px, threshold 0.95
    acr = RunConfig(data=replace(darp, darp_include_labeled=True, normalization="cifar10-data"),
                    model=ModelConfig(arch="wrn-28-2-kekmodel"),
                    train=replace(usb_train, epochs=500, checkpoint_every=10),
                    optim=OptimConfig(ema=0.999, decay_bn_bias=False),
                    augment=AugmentConfig(randaugment=2, randaugment_magnitude=None, cutout=0.5, policy="fixmatch",
                                          crop_padding_mode="reflect"),
                    semi=SemiConfig(method="acr", mu=1, threshold=0.95, acr_steps_per_epoch=500))
    acr_text = ("; ACR's protocol: WRN-28-2 with a balanced second head (evaluated), 500 epochs of 500 steps of 64 "
                "labeled + 64 unlabeled images, lr 0.03 Nesterov, wd 5e-4, cosine 7/16, EMA 0.999, RandAugment(2) + "
                "Cutout, file-order split with the labeled images in the pool, CIFAR-10's statistics")
    short_fm = SemiConfig(method="fixmatch")
    rows = [
        ("cifar10-semi-base", "labeled CIFAR-10-LT rho=50 (n_max 750, 2,096 images), CE: the base model that "
         "pseudo-labels the pool; ResNet-32, 200 epochs", RunConfig(data=seed_style),
         "CE rho=50 error 29.6 [R] (n_max 5000)"),
        ("cifar10-semi-pseudo", "the base's labeled set + its pseudo-labeled pool (--set data.pseudo_labels=DIR), "
         "CE, batch 256; ResNet-32, 200 epochs", RunConfig(data=seed_style, train=TrainConfig(batch_size=256)),
         "error 16.79..19.94 by rho_U [R] (TinyImages pool)"),
        ("cifar10-semi-darp-supervised", "DARP protocol (N1=1500, gamma_l=100), labeled data only, CE" + usb_text,
         usb, "63.83 [R] (USB, WRN-28-2)"),
        ("cifar10-semi-darp-supervised-short", "DARP protocol, labeled data only, CE" + short, RunConfig(data=darp),
         ""),
        # a pseudo-label run must cut the split as the labeling run did: USB's for the USB supervised run
        ("cifar10-semi-darp-pseudo", "DARP protocol labeled + pseudo-labels of its unlabeled part "
         "(--set data.pseudo_labels=DIR from `pseudo-label RUN --pool darp` of cifar10-semi-darp-supervised), CE, "
         "batch 256; ResNet-32, 200 epochs; USB's shuffled split and ImageNet normalisation",
         RunConfig(data=usb.data, train=TrainConfig(batch_size=256)), ""),
        ("cifar10-semi-darp-pseudo-short", "DARP protocol labeled + pseudo-labels of its unlabeled part "
         "(--set data.pseudo_labels=DIR from `pseudo-label RUN --pool darp` of cifar10-semi-darp-supervised-short), "
         "CE, batch 256; ResNet-32, 200 epochs; DARP's file-order split",
         RunConfig(data=darp, train=TrainConfig(batch_size=256)), ""),
        ("cifar10-semi-darp-fixmatch", "DARP protocol, FixMatch" + fixmatch_text, usb_fixmatch,
         "76.69 [R] (USB, WRN-28-2)"),
        ("cifar10-semi-darp-fixmatch-da", "DARP protocol, FixMatch with distribution alignment" + fixmatch_text,
         replace(usb_fixmatch, semi=replace(usb_fixmatch.semi, alignment="da")), ""),
        ("cifar10-semi-darp-fixmatch-la", "DARP protocol, FixMatch with logit-adjusted pseudo-labels" + fixmatch_text,
         replace(usb_fixmatch, semi=replace(usb_fixmatch.semi, alignment="la")), ""),
        ("cifar10-semi-darp-acr", "DARP protocol (N1=1500, M1=3000, gamma 100 both), ACR (Wei & Gan 2023): "
         "FixMatch with adaptively logit-adjusted pseudo-labels and a balanced head" + acr_text, acr,
         "84.1 [P] (WRN-28-2)"),
        ("cifar10-semi-darp-acr-uniform", "DARP protocol with a uniform unlabeled part (M1=3000 per class), ACR"
         + acr_text, replace(acr, data=replace(acr.data, darp_gamma_u=1.0)), "93.5 [P] (WRN-28-2)"),
        ("cifar10-semi-darp-acr-reversed", "DARP protocol with the unlabeled profile reversed (the head class "
         "rarest), ACR" + acr_text, replace(acr, data=replace(acr.data, darp_reverse=True)), "89.5 [P] (WRN-28-2)"),
        ("cifar10-semi-darp-fixmatch-short", "DARP protocol, FixMatch (threshold 0.95, mu 7, batch 128, no EMA, "
         "a simplified strong view)" + short, RunConfig(data=darp, semi=short_fm), ""),
        ("cifar10-semi-darp-fixmatch-da-short", "DARP protocol, FixMatch with distribution alignment" + short,
         RunConfig(data=darp, semi=replace(short_fm, alignment="da")), ""),
        ("cifar10-semi-darp-fixmatch-la-short", "DARP protocol, FixMatch with logit-adjusted pseudo-labels" + short,
         RunConfig(data=darp, semi=replace(short_fm, alignment="la")), ""),
    ]
    return [Recipe(name, desc, cfg, pub) for name, desc, cfg, pub in rows]


RECIPES: dict[str, Recipe] = {r.name: r for r in _recipes()}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise LongtailError(f"unknown recipe {name!r}", f"{hint}`longtail recipes` lists them")
    return RECIPES[name]


__all__ = ["LossConfig", "RECIPES", "Recipe", "get_recipe"]
