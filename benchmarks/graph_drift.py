"""How far apart the eager and the CUDA-graph engines train, epoch by epoch (a GPU diagnostic).

The setting of ``tests/test_graphs.py::test_replayed_cuda_graphs_equal_eager_steps`` (ResNet-8, 4 synthetic
classes, batch 16, float32, TF32 off, deterministic cuDNN), without and with DRW's class weights from epoch 3.
For each number of epochs it trains eager, graph and eager again from the same seed and prints the largest
weight difference between the engines, the same between the two eager runs (0 when the GPU is deterministic),
the tensor where the engines differ most for its size, and the epoch losses of both engines.

    python benchmarks/graph_drift.py                      # on a GPU (benchmarks/gpu_session.sh check runs it)
    python benchmarks/graph_drift.py --device cpu --engines eager eager eager --epochs 1   # a dry run here
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from longtail.weights import make_weighting  # noqa: E402

from conftest import replay_check_run, synthetic_set  # noqa: E402  (the test's own data and training)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--engines", nargs=3, default=["eager", "graph", "eager"],
                   help="the three runs compared: A, B (A-B is the engines' drift) and C (A-C is repeatability)")
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    a = p.parse_args(argv)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device(a.device)
    data = synthetic_set([60, 30, 15, 7], size=16).to(dev)
    for drw in (False, True):
        for epochs in a.epochs:
            runs = [replay_check_run(data, e, epochs, make_weighting("class-balanced", data.class_counts(),
                                                                     start_epoch=3) if drw else None, dev)
                    for e in a.engines]  # a fresh weighting per run
            (wa, la), (wb, lb), (wc, _) = runs
            drift = max((wa[k] - wb[k]).abs().max().item() for k in wa)
            repeat = max((wa[k] - wc[k]).abs().max().item() for k in wa)
            worst = max(wa, key=lambda k: ((wa[k] - wb[k]).abs().max() / (wa[k].abs().max() + 1e-12)).item())
            print(f"{'DRW from epoch 3' if drw else 'unweighted'}, {epochs} epochs: max|{a.engines[0]}-{a.engines[1]}| "
                  f"{drift:.2e}, max|{a.engines[0]}-{a.engines[2]}| {repeat:.2e}, most apart: {worst}; losses "
                  f"{' '.join(f'{x:.6f}' for x in la)} vs {' '.join(f'{x:.6f}' for x in lb)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
