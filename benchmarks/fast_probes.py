"""Probes of the fast recipe that are not settings (issue 15's 5-minute budget): change FastNet or the epoch's
sampling for one run, then train as benchmarks/run_recipe.py does (same arguments after the probe's name; rows go
to RESULTS.md with this command).

    python benchmarks/fast_probes.py widths-24-96-96 cifar10-lt-fast-la --data-root ../shared/data --device cpu
    python benchmarks/fast_probes.py pool-first cifar10-lt-fast-la --data-root ../shared/data --device cpu
    python benchmarks/fast_probes.py cap-1000 cifar10-lt-fast-la --data-root ../shared/data --device cpu --epochs 36

* ``widths-A-B-C``: FastNet with stage widths A/B/C (``model.arch`` becomes ``fastnet-probe``).
* ``pool-first``: each FastNet stage max-pools *before* its first convolution (airbench pools after it), so
  every convolution runs at half the resolution: about 0.6x the step (benchmarks/NOTES.md).
* ``cap-N``: each epoch takes at most N images of every class (a fresh random subset each epoch, then shuffled;
  the smaller classes whole), so an epoch is shorter; the loss's class counts become the capped ones (the prior the
  network sees). With ``--epochs`` chosen so the run visits as many images as the recipe.

Measured once each (seed 0) in the fifth session of 2026-11-30; none became a setting (benchmarks/NOTES.md).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import longtail.experiment as experiment  # noqa: E402
import longtail.tasks as tasks  # noqa: E402
from longtail.counts import ClassCounts  # noqa: E402
from longtail.models import MODELS, fastnet  # noqa: E402
from longtail.models.fastnet import FASTNET_WIDTHS  # noqa: E402


class CappedInstance:
    """At most ``cap`` images of each class per epoch, a fresh random subset each epoch, in random order."""

    def __init__(self, labels: torch.Tensor, num_classes: int, cap: int) -> None:
        self.labels, self.num_classes, self.cap = labels.long(), num_classes, cap
        self.num_samples = int(torch.bincount(self.labels, minlength=num_classes).clamp(max=cap).sum())

    def to(self, device: torch.device | str) -> "CappedInstance":
        self.labels = self.labels.to(device)
        return self

    def epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        perm = torch.randperm(len(self.labels), generator=generator, device=generator.device).to(self.labels.device)
        shuffled = self.labels[perm]
        order = torch.argsort(shuffled, stable=True)  # grouped by class, random within each
        ys = shuffled[order]
        n = torch.bincount(ys, minlength=self.num_classes)
        rank = torch.arange(len(ys), device=ys.device) - (torch.cumsum(n, 0) - n)[ys]
        keep = perm[order[rank < self.cap]]
        return keep[torch.randperm(len(keep), generator=generator, device=generator.device).to(keep.device)]


def apply_probe(name: str) -> list[str]:
    """Patch longtail for probe ``name``; returns extra run_recipe arguments."""
    if name.startswith("widths-"):
        FASTNET_WIDTHS["fastnet-probe"] = tuple(int(w) for w in name.split("-")[1:])  # type: ignore[assignment]
        MODELS["fastnet-probe"] = fastnet.fastnet_backbone("fastnet-probe")
        return ["--set", "model.arch=fastnet-probe"]
    if name == "pool-first":
        def forward(self, x):  # noqa: ANN001
            x = F.gelu(self.norm1(self.conv1(fastnet._pool(x))))
            return F.gelu(self.norm2(self.conv2(x)))
        fastnet.ConvStage.forward = forward
        return []
    if name.startswith("cap-"):
        cap = int(name[4:])
        make_sampler, loss_from_config = experiment.make_sampler, experiment.loss_from_config
        experiment.make_sampler = lambda n, labels, c, **kw: (  # type: ignore[assignment]
            CappedInstance(labels, c, cap) if n == "instance" else make_sampler(n, labels, c, **kw))
        tasks.SupervisedTask.steps_per_epoch = property(  # type: ignore[assignment]
            lambda self: -(-self.sampler.num_samples // self.batch_size))
        experiment.loss_from_config = lambda lc, counts: loss_from_config(  # type: ignore[assignment]
            lc, ClassCounts(tuple(min(c, cap) for c in counts.counts)))
        return []
    raise SystemExit(f"unknown probe {name!r}: widths-A-B-C, pool-first or cap-N")


def main() -> int:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    extra = apply_probe(sys.argv[1])
    import run_recipe

    command = "python benchmarks/" + " ".join(shlex.quote(x) for x in ["fast_probes.py"] + sys.argv[1:])
    return run_recipe.main(sys.argv[2:] + extra, command=command)


if __name__ == "__main__":
    sys.exit(main())
