"""A device pack of the DARP protocol's images (CIFAR-10), for the ACR and FixMatch DARP recipes on the GPU machine.

    python benchmarks/darp_pack.py --out .device/c10-darp [--root ../shared/data/cifar-10-batches-py]
                                   [--settings consistent reversed] [--n1 1500 --m1 3000 --gamma 100]

The DARP protocol takes, per class, the first images of the class in the official file order: ``n_l`` labeled, then
``n_u`` unlabeled (``longtail.data.pools.darp_split``, ``order="file"``). This writes the indices of the first
``max(n_l + n_u)`` images of each class over the chosen unlabeled settings into one group, ``darp``, and packs them
with the test set (``../shared/tools/device-pack --group darp=FILE.npy``); ``longtail.data.semi.darp_source_from_pack``
splits that group exactly as the full set. The default is the consistent setting (ACR's headline; 11,163 training
images); `--settings consistent reversed` packs both (17,538). The uniform setting (3,000 unlabeled images of every
class, 33,720 in all) does not fit the 64 MiB a device call carries beside the test set.
"""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from longtail.data.pools import darp_counts  # noqa: E402

SETTINGS = {"consistent": (None, False), "uniform": (1.0, False), "reversed": (None, True)}  # gamma_u (None: gamma)


def labels_of(root: Path) -> np.ndarray:
    ys: list[int] = []
    for i in range(1, 6):
        with open(root / f"data_batch_{i}", "rb") as f:
            ys += pickle.load(f, encoding="latin1")["labels"]
    return np.asarray(ys)


def darp_indices(labels: np.ndarray, *, settings: list[str], n1: int = 1500, m1: int = 3000,
                 gamma: float = 100.0) -> np.ndarray:
    """The first ``max over settings of n_l + n_u`` official indices of each class, ascending."""
    classes = int(labels.max()) + 1
    n_l = darp_counts(n1, classes, gamma)
    need = [0] * classes
    for name in settings:
        gamma_u, reverse = SETTINGS[name]
        n_u = darp_counts(m1, classes, gamma if gamma_u is None else gamma_u)
        n_u = n_u[::-1] if reverse else n_u
        need = [max(k, a + b) for k, a, b in zip(need, n_l, n_u)]
    return np.sort(np.concatenate([np.where(labels == c)[0][:need[c]] for c in range(classes)]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the pack's path without extension, e.g. .device/c10-darp")
    p.add_argument("--root", default=str(HERE.parent.parent / "shared" / "data" / "cifar-10-batches-py"))
    p.add_argument("--settings", nargs="+", default=["consistent"], choices=sorted(SETTINGS))
    p.add_argument("--n1", type=int, default=1500)
    p.add_argument("--m1", type=int, default=3000)
    p.add_argument("--gamma", type=float, default=100.0)
    p.add_argument("--device-pack", default=str(HERE.parent.parent / "shared" / "tools" / "device-pack"))
    a = p.parse_args()
    idx = darp_indices(labels_of(Path(a.root)), settings=a.settings, n1=a.n1, m1=a.m1, gamma=a.gamma)
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "darp.npy"
        np.save(npy, idx)
        subprocess.run([sys.executable, a.device_pack, "--root", a.root, "--group", f"darp={npy}", "--out", a.out],
                       check=True)
    print(f"{len(idx)} training images of the DARP protocol ({', '.join(a.settings)}) in group 'darp'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
