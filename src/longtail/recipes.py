"""Named recipes: one ``RunConfig`` per published table row.

Each recipe is the reference setting (REFERENCE.md) written as data; the command line can
override any field (``--epochs``, ``--imbalance-ratio`` or ``--set section.field=value``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import DataConfig, LossConfig, ModelConfig, RunConfig, TrainConfig
from .errors import LongtailError


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    config: RunConfig
    published: str = ""  # the number it reproduces, with its mark from REFERENCE.md


def _cifar(dataset: str, **kw) -> RunConfig:
    return RunConfig(data=DataConfig(dataset=dataset, imbalance_ratio=100.0), **kw)


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
    published = {"cifar10": "70.36 [R]", "cifar100": "38.32 [R]"}
    for ds, label in (("cifar10", "CIFAR-10-LT"), ("cifar100", "CIFAR-100-LT")):
        out.append(Recipe(
            f"{ds}-lt-ce",
            f"{label} rho=100, ResNet-32, cross-entropy, the reference 200-epoch recipe",
            _cifar(ds),
            f"rho=100: {published[ds]}",
        ))
    return [replace(r, config=replace(r.config, recipe=r.name)) for r in out]


RECIPES: dict[str, Recipe] = {r.name: r for r in _recipes()}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        import difflib

        close = difflib.get_close_matches(name, RECIPES, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise LongtailError(f"unknown recipe {name!r}", f"{hint}`longtail recipes` lists them")
    return RECIPES[name]


__all__ = ["LossConfig", "RECIPES", "Recipe", "get_recipe"]
