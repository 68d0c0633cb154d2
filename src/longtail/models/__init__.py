"""Models as ``Classifier(backbone, head)``: the backbone gives features, the head gives logits."""

from .classifier import Classifier, make_backbone, make_model, MODELS
from .heads import CosineHead, LinearHead, make_head, HEADS
from .resnet_cifar import ResNetCifar, resnet32

__all__ = ["Classifier", "CosineHead", "LinearHead", "HEADS", "MODELS", "ResNetCifar", "make_backbone", "make_head", "make_model", "resnet32"]
