"""Throughput of the large-image pipeline (image files -> DataLoader workers -> model) on this machine.

    python benchmarks/large_images_cpu.py [--images 768] [--train-images 128] [--side 224] [--arch resnet50]
                                          [--batch 32] [--workers N] [--device cpu]

Writes ``--images`` synthetic JPEGs of ``--side`` x ``--side`` pixels in the ImageNet-LT layout (a
long-tailed 8-class split file) into a temporary folder, then measures, in images per second:

* pipeline: one training epoch of batches over all ``--images`` without a model (JPEG decode,
  RandomResizedCrop(224), flip, ColorJitter in ``--workers`` worker processes, normalisation),
  from the start of the epoch (worker start-up included) to its last batch;
* train: one epoch of ``longtail.experiment.train_one`` on ``--train-images`` of them (the same
  loop as every recipe: SGD, cross-entropy, the pipeline above feeding the model), from the report;
* eval: the test pass of that run (Resize(256), CenterCrop(224), forward) over the same images.

Prints one Markdown row (for benchmarks/RESULTS.md). Timings are wall-clock: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from longtail.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from longtail.data.files import FileOptions, load_file_sets  # noqa: E402
from longtail.data.registry import Splits  # noqa: E402
from longtail.distributed import default_workers  # noqa: E402
from longtail.experiment import build_task, train_one  # noqa: E402
from longtail.loop import epoch_generator  # noqa: E402
from run_recipe import machine  # noqa: E402

HEADER = ("| date | machine | command | JPEG side | images (pipeline / train) | arch | batch | workers | "
          "pipeline img/s | train img/s | eval img/s |\n|---|---|---|---|---|---|---|---|---|---|---|")


def write_jpegs(root: Path, n: int, side: int, classes: int = 8) -> None:
    """A long-tailed ImageNet-LT-style tree: class c gets about n * 0.6^c / sum images; smooth random content."""
    rng = np.random.RandomState(0)
    share = 0.6 ** np.arange(classes)
    per_class = np.maximum(1, np.round(n * share / share.sum()).astype(int))
    lines = []
    for c, k in enumerate(per_class):
        d = root / "train" / f"n{c:08d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(k):
            low = rng.randint(0, 256, (side // 16, side // 16, 3)).astype(np.uint8)  # JPEG-friendly, photo-like sizes
            Image.fromarray(low).resize((side, side), Image.Resampling.BICUBIC).save(d / f"{i}.JPEG", quality=90)
            lines.append(f"train/n{c:08d}/{i}.JPEG {c}")
    text = "".join(f"{line}\n" for line in lines)
    (root / "ImageNet_LT_train.txt").write_text(text)
    (root / "ImageNet_LT_test.txt").write_text(text)  # the same images: only the speed is measured


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=768)
    p.add_argument("--train-images", type=int, default=128)
    p.add_argument("--side", type=int, default=224, help="side of the synthetic JPEGs")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: min(8, CPUs))")
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", default=str(Path(__file__).resolve().parent / "RESULTS.md"),
                   help="append the row here ('' to only print)")
    a = p.parse_args()
    workers = default_workers() if a.workers is None else a.workers
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_jpegs(root, a.images, a.side)
        opt = FileOptions("imagenet-lt", root, "ImageNet_LT_train.txt", None, "ImageNet_LT_test.txt",
                          image_size=224, num_workers=workers)
        pool, _, _ = load_file_sets(opt)
        frac = min(1.0, a.train_images / len(pool))  # the same long-tailed shape, every class kept
        rows = [i for c in range(pool.num_classes) for i in
                (pool.labels == c).nonzero().squeeze(1).tolist()[:max(1, round(frac * int((pool.labels == c).sum())))]]
        train = pool.subset(torch.tensor(rows))
        splits = Splits(train, train)
        cfg = RunConfig(recipe="large-images-bench", data=DataConfig(dataset="imagenet-lt", root=str(root)),
                        model=ModelConfig(arch=a.arch),
                        train=TrainConfig(epochs=1, batch_size=a.batch, lr=0.2, weight_decay=5e-4, schedule="cosine",
                                          warmup_epochs=0, device=a.device, checkpoint_every=1))

        # the pipeline alone: one epoch of batches over every image, worker start-up included
        task = build_task(cfg, pool, pool.class_counts()).to(a.device)
        task.on_epoch_start(0)
        t0, seen = time.perf_counter(), 0
        for b in task.batches(0, epoch_generator(0, 0, torch.device(a.device))):
            seen += b.labels.numel()
        pipeline = seen / (time.perf_counter() - t0)
        del task
        print(f"pipeline: {pipeline:.1f} img/s ({seen} images)", flush=True)

        result = train_one(cfg, Path(tmp) / "run", splits=splits, progress=False, log=lambda _: None)
        timing = result["timing"]
        train_ips = timing["train_images_per_s"]
        eval_ips = len(train) / timing["eval_s"]
    command = (f"`python benchmarks/large_images_cpu.py --images {a.images} --train-images {a.train_images} "
               f"--side {a.side} --arch {a.arch} "
               f"--batch {a.batch} --workers {workers} --device {a.device}`")
    row = (f"| {dt.date.today()} | {machine()} | {command} | {a.side} | {a.images} / {len(train)} | {a.arch} | "
           f"{a.batch} | {workers} | "
           f"{pipeline:.1f} | {train_ips:.1f} | {eval_ips:.1f} |")
    print()
    print(HEADER)
    print(row)
    if a.results:
        from run_recipe import append_row, append_section

        section = "## Large-image pipeline throughput (benchmarks/large_images_cpu.py)"
        results = Path(a.results)
        if not results.exists() or section not in results.read_text():
            append_section(results, ["", section, "", HEADER])
        append_row(results, row, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
