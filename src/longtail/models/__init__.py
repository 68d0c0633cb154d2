"""Models as ``Classifier(backbone, head)``: the backbone gives features, the head gives logits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .acr import ACRClassifier
from .classifier import MODELS, Classifier, make_backbone, make_model
from .fastnet import FASTNET_WIDTHS, FastNet, FlipTranslateTTA, FlipTTA, fastnet_backbone, init_whitening, tta_model
from .glmc import GLMCClassifier
from .heads import HEADS, CosineHead, LinearHead, make_head
from .resnet18_cifar import CIFAR_RESNET18
from .resnet_cifar import ResNetCifar, resnet32
from .wideresnet import KEKMODEL_WRN_CONFIGS, WRN_CONFIGS, WideResNet, wide_resnet_backbone

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["ACRClassifier", "Classifier", "CosineHead", "FastNet", "FlipTTA", "FlipTranslateTTA", "GLMCClassifier",
           "LinearHead", "HEADS", "MODELS", "ResNetCifar", "WideResNet", "build_model", "init_from_training_images",
           "init_whitening", "make_backbone", "make_head", "make_model", "resnet32", "tta_model"]

# FastNet (airbench-style, small images) by width set: fastnet-s 16/64/64, fastnet-sm 24/96/128,
# fastnet-m 32/128/128, fastnet-l and fastnet 64/256/256 (longtail.models.fastnet)
MODELS.update({name: fastnet_backbone(name) for name in FASTNET_WIDTHS})
# Wide ResNets as FixMatch/USB define them: wrn-28-2 (1.47M), wrn-28-8 (longtail.models.wideresnet); the
# -kekmodel forms (kekmodel/FixMatch-pytorch, ACR's base) differ in the stem's bias and the last BatchNorm's eps
MODELS.update({name: wide_resnet_backbone(name) for name in (*WRN_CONFIGS, *KEKMODEL_WRN_CONFIGS)})
# CIFAR ResNet-18 (3x3 stem, no max-pool): resnet18-cifar (Liu et al. 2022), resnet18-cifar-tv (MoCo's CIFAR demo)
MODELS.update(CIFAR_RESNET18)
# GLMC's CIFAR "ResNet-32" (ynu-yangpeng/GLMC ResNet_modify, nf=64): widths 64/128/256, 7.4M parameters
MODELS["resnet32-w4"] = lambda c: ResNetCifar(5, in_channels=c, widths=(64, 128, 256))


def init_from_training_images(backbone: Any, train: Any, device: torch.device, *,
                              weights_from: str | None = None) -> None:
    """Set what a backbone takes from the training images before training (FastNet's frozen patch whitening:
    ``backbone.init_from_data``), from ``train`` (an ``ImageSet``: ``images``, ``mean``, ``std``); nothing for a
    backbone without such a layer. Draws no random numbers.

    Such a backbone with training data not held in memory (image files decoded per batch, a ``FileImageSet``)
    stops with a :class:`LongtailError` whose fix is ``--set data.in_memory=true``, unless ``weights_from`` names
    the weights that will replace the layer before training (``model.pretrained`` / ``train.init_from``)."""
    init_from_data = getattr(backbone, "init_from_data", None)
    if init_from_data is None:
        return
    images = getattr(train, "images", None)
    if isinstance(images, torch.Tensor):
        init_from_data(images.to(device), mean=train.mean, std=train.std)
    elif not weights_from:
        from ..errors import LongtailError

        name = getattr(train, "name", "the training set")
        raise LongtailError(
            f"{type(backbone).__name__} sets its frozen first layer (patch whitening) from the training images, but "
            f"{name} is image files decoded batch by batch, not held in memory: the layer would keep its default "
            "(identity) weights",
            "decode the images once into memory with --set data.in_memory=true (N x 3 x S x S bytes at "
            "S = data.image_size; the folder-fast-* recipes do), or use another model (--set model.arch=...)")


def build_model(cfg: RunConfig, num_classes: int, in_channels: int) -> Classifier:
    """The model a run's ``model`` section describes, for ``num_classes`` classes (with GLMC's second head and
    projector when ``train.task=glmc``, :mod:`longtail.models.glmc`; ACR's second head when ``semi.method=acr``,
    :mod:`longtail.models.acr`)."""
    model = make_model(cfg.model.arch, num_classes, head=cfg.model.head, in_channels=in_channels)
    if cfg.train.task == "glmc":
        return GLMCClassifier.from_classifier(model, num_classes, head=cfg.model.head, proj_dim=cfg.glmc.proj_dim)
    if cfg.semi.method == "acr":  # ACR: a second (standard) head; the balanced head is the one evaluated
        return ACRClassifier.from_classifier(model, num_classes, head=cfg.model.head)
    return model
