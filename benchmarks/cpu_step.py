"""Time one training step of ResNet-32 (batch 128, 32x32) on the CPU in each numeric mode, and the
batched augmentation of a whole CIFAR-10-LT epoch; append the figures to benchmarks/RESULTS.md.

    python benchmarks/cpu_step.py [--steps 10] [--threads N] [--arch resnet32] [--batch 128 ...]

``--arch fastnet-m --batch 128 256 512 --no-bf16`` is how the fast recipes' batch was chosen for the CPU.

Modes: float32 (contiguous), float32 channels-last, bf16 autocast, bf16 autocast channels-last.
The training loop uses bf16 and channels-last only on CUDA; this script is how that choice for the
CPU was made. Run it on a quiet machine: timings are wall-clock.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from longtail.data.augment import Augment  # noqa: E402
from longtail.models import make_model  # noqa: E402
from run_recipe import append_section, machine  # noqa: E402


def step_ms(channels_last: bool, bf16: bool, steps: int, compile_model: bool = False, fused: bool = False,
            arch: str = "resnet32", batch: int = 128) -> float:
    torch.manual_seed(0)
    model = make_model(arch, 10)
    x = torch.randn(batch, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.1, momentum=0.9, weight_decay=2e-4,
                          **({"fused": True} if fused else {}))
    if compile_model:  # compiled by the first (warm-up) step, whose time is not in the median
        model = torch.compile(model, dynamic=False)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    times = []
    for i in range(steps + 3):  # 3 warm-up steps
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with ctx():
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    times.sort()
    return 1000 * times[len(times) // 2]  # median


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 modes (ten times slower on the CPU)")
    p.add_argument("--fused", action="store_true", help="also time float32 channels-last with fused SGD")
    p.add_argument("--compile", action="store_true", help="also time float32 channels-last under torch.compile")
    p.add_argument("--arch", default="resnet32", help="any registered network (e.g. fastnet-m)")
    p.add_argument("--batch", type=int, nargs="+", default=[128], help="batch sizes to time (default 128)")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    modes = ((False, False), (True, False)) + (() if a.no_bf16 else ((False, True), (True, True)))
    for batch in a.batch:
        steps_per_epoch = -(-12406 // batch)  # CIFAR-10-LT rho=100
        for cl, bf16 in modes:
            ms = step_ms(cl, bf16, a.steps, arch=a.arch, batch=batch)
            mode = ("bf16 autocast" if bf16 else "float32") + (", channels-last" if cl else "")
            rows.append(f"| {batch} | {mode} | {ms:.0f} | {ms * steps_per_epoch / 1000:.1f} |")
            print(rows[-1], flush=True)
        if a.fused:
            ms = step_ms(True, False, a.steps, fused=True, arch=a.arch, batch=batch)
            rows.append(f"| {batch} | float32, channels-last, fused SGD | {ms:.0f} | "
                        f"{ms * steps_per_epoch / 1000:.1f} |")
            print(rows[-1], flush=True)
        if a.compile:
            t0 = time.perf_counter()
            ms = step_ms(True, False, a.steps, compile_model=True, arch=a.arch, batch=batch)
            rows.append(f"| {batch} | float32, channels-last, torch.compile (whole script incl. compile: "
                        f"{time.perf_counter() - t0:.0f} s) | {ms:.0f} | {ms * steps_per_epoch / 1000:.1f} |")
            print(rows[-1], flush=True)
    images = torch.randint(0, 256, (12406, 3, 32, 32), dtype=torch.uint8)
    t0 = time.perf_counter()
    Augment()(images, torch.Generator().manual_seed(0))
    aug_s = time.perf_counter() - t0
    batches = " ".join(str(b) for b in a.batch)
    lines = ["", f"## CPU: one {a.arch} training step, batch {batches} ({dt.date.today()})", "",
             f"Machine: {machine()}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at the "
             f"end. Command: `python benchmarks/cpu_step.py --steps {a.steps} --arch {a.arch} --batch {batches}"
             f"{' --no-bf16' if a.no_bf16 else ''}{' --fused' if a.fused else ''}"
             f"{' --compile' if a.compile else ''}`. Median of {a.steps} steps after 3 warm-up steps; epoch = "
             f"12,406 images (CIFAR-10-LT rho=100), augmentation and evaluation not included.", "",
             "| batch | mode | ms / step | s / epoch |", "|---|---|---|---|", *rows, "",
             f"Batched crop + flip of the whole epoch (12,406 images, uint8, CPU): {aug_s:.2f} s."]
    results = Path(a.results)
    append_section(results, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
