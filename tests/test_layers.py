"""Imports run one way: cli -> drivers -> loop and tasks -> data, models, losses -> foundation.

Each layer's modules are imported in a fresh interpreter, which must not load a module of any layer
above it; the data modules must not load training code at all. A new module must be placed in a layer
here (the last test fails otherwise), which is where its imports are decided."""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import longtail

SRC = Path(longtail.__file__).resolve().parents[1]

LAYERS = {  # lowest first; a module is matched by its name or by a package prefix ("data.")
    "foundation": ["errors", "config", "storage", "devices", "counts", "schedule", "distributed"],
    "parts": ["data.", "models.", "losses", "weights", "samplers", "metrics", "report", "checkpoints",
              "maxnorm", "weight_balancing"],
    "loop": ["graphs", "tasks", "loop", "optim", "mfw", "glmc", "runs", "compare", "tensorboard"],
    "drivers": ["driver", "experiment", "stacked", "seeds", "decouple", "tune", "recipes", "ssl.", "semi."],
    "commands": ["cli", "__main__"],
}
TRAINING = ["models.", "losses", "weights", "metrics", "checkpoints", "maxnorm", "weight_balancing", "graphs", "tasks",
            "loop", "optim", "mfw", "glmc", "runs",
            "driver", "experiment", "stacked", "seeds", "decouple", "tune", "ssl.", "semi."]


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages([str(SRC / "longtail")]):
        names.append(info.name)
    return sorted(names)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(name == p or (p.endswith(".") and (name + ".").startswith(p)) for p in patterns)


def _layer_of(name: str) -> str | None:
    return next((layer for layer, pats in LAYERS.items() if _matches(name, pats)), None)


def _loaded_after_importing(modules: list[str]) -> list[str]:
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module('longtail.' + m)\n"
            "print(json.dumps(sorted(k[len('longtail.'):] for k in sys.modules if k.startswith('longtail.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("layer", list(LAYERS)[:-1])
def test_a_layer_loads_nothing_above_it(layer):
    order = list(LAYERS)
    above = [p for name in order[order.index(layer) + 1:] for p in LAYERS[name]]
    mine = [m for m in _modules() if _layer_of(m) == layer and m != "__main__"]
    assert mine, layer
    loaded = _loaded_after_importing(mine)
    wrong = [m for m in loaded if _matches(m, above)]
    assert not wrong, f"importing the {layer} layer loads modules of higher layers: {wrong}"


def test_data_loads_no_training_code():
    data = [m for m in _modules() if m.startswith("data.")]
    loaded = _loaded_after_importing(data)
    wrong = [m for m in loaded if _matches(m, TRAINING)]
    assert not wrong, f"importing longtail.data loads training code: {wrong}"


def test_every_module_has_a_layer():
    assert [m for m in _modules() if _layer_of(m) is None] == []
