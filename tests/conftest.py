"""Shared fixtures: tiny synthetic image sets and the path to the real CIFAR-10."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from longtail.data.imageset import ImageSet

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_CIFAR10 = SHARED_DATA / "cifar-10-batches-py"


def load_benchmark(name: str):
    """``benchmarks/NAME.py`` imported as the module ``NAME`` (the scripts are not a package)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def synthetic_set(n_per_class, *, size: int = 8, channels: int = 3, seed: int = 0, name: str = "synthetic") -> ImageSet:
    """Images whose mean brightness encodes the class, so a tiny model can learn them."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(n_per_class)])
    base = (labels.float() * (200.0 / max(1, len(n_per_class) - 1)) + 20)[:, None, None, None]
    noise = torch.randn(len(labels), channels, size, size, generator=g) * 15
    images = (base + noise).clamp(0, 255).to(torch.uint8)
    names = tuple(f"class{c}" for c in range(len(n_per_class)))
    return ImageSet(images, labels, names, mean=(0.5,) * channels, std=(0.25,) * channels, name=name)


@pytest.fixture
def tiny_sets():
    return synthetic_set([40, 20, 10, 5]), synthetic_set([10, 10, 10, 10], seed=1, name="test")


def require_real_cifar10():
    if not (REAL_CIFAR10 / "data_batch_1").is_file():
        pytest.skip(f"real CIFAR-10 not found at {REAL_CIFAR10}")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, restored after: tiny models gain nothing from threads, and on the shared
    2-core machine OpenMP threads that wait for each other made whole files several times slower (test_recipes_smoke:
    158 s against 29 s). A file opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sam_around(sgd, model, *, late_epoch: int = 2, members: int = 1):
    """SAM (rho 0.05, 0.1 from ``late_epoch``) around ``sgd`` with BatchNorm's statistics from the first pass: the
    graphed SAM step's checks (tests/test_graphs.py); ``members``: seeds stacked in ``model``."""
    from longtail.optim import SAM, FirstPassStatistics

    sam = SAM(sgd, rho=0.05, rho_late=0.1, rho_late_epoch=late_epoch, members=members)
    sam.add_phase_hook(FirstPassStatistics(model))
    return sam


def replay_check_run(data: ImageSet, engine: str, epochs: int, weighting, device: torch.device, *, sam: bool = False,
                     stacked: int = 0):
    """The replayed-graph check's training (tests/test_graphs.py on a GPU, benchmarks/graph_drift.py): ResNet-8 from
    seed 0 on ``data``, CE with ``weighting``, batch 16, SGD 0.05 / (1 + epoch) (with ``sam``: inside
    :func:`sam_around`), float32; ``stacked``: that many seeds (0, 1, ...) as one stacked network (a weighting
    object per seed: ``weighting`` is then a function of no arguments that makes one). Returns the weights (float
    copies) and the epoch losses."""
    from longtail.loop import fit, make_sgd
    from longtail.losses import make_loss
    from longtail.models import make_model
    from longtail.stacked import StackedTask, stack
    from longtail.tasks import SupervisedTask

    counts = data.class_counts()
    if stacked:
        members = []
        for s in range(stacked):
            torch.manual_seed(s)
            members.append(make_model("resnet8", len(counts.counts)).to(device))
        model = stack(members)
        task = StackedTask([SupervisedTask(data, make_loss("ce", counts).to(device), batch_size=16,
                                           weighting=weighting()) for _ in range(stacked)], list(range(stacked)))
    else:
        torch.manual_seed(0)
        model = make_model("resnet8", len(counts.counts)).to(device)
        task = SupervisedTask(data, make_loss("ce", counts).to(device), batch_size=16, weighting=weighting)
    sgd = make_sgd(model, lr=0.05, momentum=0.9, weight_decay=5e-4)
    if sam:
        sgd = sam_around(sgd, model, members=max(1, stacked))
    recs = fit(model, task, sgd, epochs=epochs, lr_at=lambda e: 0.05 / (1 + e), seed=0, device=device, amp="off",
               engine=engine, progress=False)
    return {k: v.detach().float().clone() for k, v in model.state_dict().items()}, [r.train_loss for r in recs]
