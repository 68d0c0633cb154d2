"""Data-parallel training with 2 Gloo processes on the CPU equals 1 process; resuming across process counts.

The model normalises with GroupNorm: with BatchNorm, each process would normalise its half-batch
with that half's statistics and the runs would differ by more than rounding (the references' multi-GPU
training behaves the same way). With GroupNorm, 2 processes with batch B/2 each and DDP's gradient
averaging compute the same steps as 1 process with batch B, up to the order of float sums.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from longtail.checkpoints import load_checkpoint
from longtail.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from longtail.data.registry import Splits
from longtail.distributed import Shard
from longtail.experiment import train_one
from longtail.models import MODELS
from longtail.models.classifier import TinyNet
from longtail.ssl import SSLConfig, pretrain_run

from conftest import synthetic_set
from imagefiles import file_splits, write_imagenet_lt

GN = "tiny-gn"


def gn_backbone(c: int) -> TinyNet:
    return TinyNet(c, norm="group")


def config(dataset: str, **train) -> RunConfig:
    return RunConfig(recipe="ddp-test", data=DataConfig(dataset=dataset), model=ModelConfig(arch=GN),
                     train=TrainConfig(**{**dict(epochs=3, batch_size=8, lr=0.05, device="cpu", schedule="cosine",
                                                 warmup_epochs=0, checkpoint_every=1, crop_padding=1), **train}))


def tensor_splits() -> Splits:
    return Splits(synthetic_set([13, 7, 3]), synthetic_set([4, 4, 4], seed=1, name="test"))


def _worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    """One process of the run: what torchrun would start, with its environment."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    MODELS[GN] = gn_backbone
    files = file_splits("imagenet-lt", Path(root))
    train_one(config("imagenet-lt"), Path(out) / "files", splits=files, progress=False)
    train_one(config("imagenet-lt"), Path(out) / "cut", splits=files, progress=False, stop_after=1)
    train_one(config("synthetic"), Path(out) / "tensors", splits=tensor_splits(), progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world: int, *args: str, timeout: float = 150.0, worker=_worker) -> None:
    ctx = mp.start_processes(worker, args=(world, _free_port(), *args), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {world}-process run did not finish in {timeout} s")


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def _assert_same_run(a: Path, b: Path, atol: float = 1e-5) -> None:
    ra, rb = _report(a), _report(b)
    assert ra["per_class"] == rb["per_class"] and ra["top1"] == rb["top1"]
    assert ra["nll"] == pytest.approx(rb["nll"], rel=1e-4)
    ma = load_checkpoint(a / "checkpoints" / "last.pt")["model"]
    mb = load_checkpoint(b / "checkpoints" / "last.pt")["model"]
    assert ma.keys() == mb.keys()
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], atol=atol, rtol=1e-4, msg=k)
    la = [json.loads(line)["train_loss"] for line in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line)["train_loss"] for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, rel=1e-4)


def test_rows_of_a_global_batch():
    rows, scale = Shard(1, 2).batch_rows(5)
    assert rows.tolist() == [1, 3] and scale == 0.8  # 2 of 5 rows: scale 2 * 2 / 5
    rows, scale = Shard(2, 3).batch_rows(2)  # a last batch smaller than the world: a weightless row
    assert rows.tolist() == [0] and scale == 0.0
    assert sum(Shard(r, 3).batch_rows(7)[0].numel() for r in range(3)) == 7


@pytest.mark.slow
def test_two_processes_match_one_and_resume_on_one(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, GN, gn_backbone)
    root = write_imagenet_lt(tmp_path / "data", [13, 7, 3], test_per_class=3)  # 23 images: uneven halves
    two = tmp_path / "two"
    _spawn(2, str(root), str(two))

    files = file_splits("imagenet-lt", root)
    one = tmp_path / "one"
    train_one(config("imagenet-lt"), one / "files", splits=files, progress=False)
    _assert_same_run(two / "files", one / "files")
    assert _report(two / "files")["distributed"] == {"processes": 2, "batch_per_process": 4.0, "global_batch": 8}

    # the checkpoint written by 2 processes after epoch 1 resumes in 1 process to the same end
    assert load_checkpoint(two / "cut" / "checkpoints" / "last.pt")["next_epoch"] == 1
    train_one(config("imagenet-lt"), two / "cut", splits=files, progress=False)
    _assert_same_run(two / "cut", one / "files")

    # tensor data sets: each process takes its rows of the same augmented epoch
    train_one(config("synthetic"), one / "tensors", splits=tensor_splits(), progress=False)
    _assert_same_run(two / "tensors", one / "tensors")


# Self-supervised pre-training across processes -------------------------------------------------------------

SSL = SSLConfig(moco_queue=40, moco_hidden=16, moco_dim=8, moco_bn_splits=2, simsiam_dim=16, simsiam_pred_hidden=8,
                probe_epochs=5, knn_k=5)
RW = replace(SSL, rw_weights="class", sam_rho=0.05)  # rwSAM: the ascent pass is a weighted mean over the batch


def _ssl_worker(rank: int, world: int, port: int, out: str, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    MODELS[GN] = gn_backbone
    # image files: each process decodes half of them, the halves are exchanged
    pretrain_run("moco", config("imagenet-lt", batch_size=6), Path(out) / "files", ssl=SSL,
                 splits=file_splits("imagenet-lt", Path(root)), progress=False)
    for method in ("moco", "rotation", "simsiam-rwsam"):
        pretrain_run(method, config("synthetic"), Path(out) / method, ssl=SSL, splits=tensor_splits(), progress=False)
    pretrain_run("moco-rwsam", config("synthetic"), Path(out) / "moco-rwsam", ssl=RW, splits=tensor_splits(),
                 progress=False)
    pretrain_run("moco", config("synthetic"), Path(out) / "moco-cut", ssl=SSL, splits=tensor_splits(),
                 progress=False, stop_after=1)


def _assert_same_weights(a: Path, b: Path, atol: float = 5e-5) -> dict:  # float sums in another order
    ma = load_checkpoint(a / "checkpoints" / "last.pt")["model"]
    mb = load_checkpoint(b / "checkpoints" / "last.pt")["model"]
    assert ma.keys() == mb.keys()
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], atol=atol, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    return ma


@pytest.mark.slow
def test_pretraining_on_two_processes_matches_one(tmp_path, monkeypatch):
    """MoCo's keys are shuffled over the processes and the whole batch's keys enter every queue.

    With a GroupNorm backbone (and MoCo's BN-free projector) the shuffle cannot change any value, so
    2 processes must compute exactly the 1-process run: same queue, same weights, same report.
    """
    monkeypatch.setitem(MODELS, GN, gn_backbone)
    two, one = tmp_path / "two", tmp_path / "one"
    root = write_imagenet_lt(tmp_path / "data", [9, 5, 3], test_per_class=2)  # 17 images: uneven halves
    _spawn(2, str(two), str(root), worker=_ssl_worker, timeout=240.0)
    pretrain_run("moco", config("imagenet-lt", batch_size=6), one / "files", ssl=SSL,
                 splits=file_splits("imagenet-lt", root), progress=False, log=lambda _: None)
    _assert_same_weights(two / "files", one / "files")
    for method in ("moco", "rotation", "moco-rwsam"):
        ssl = RW if method.endswith("rwsam") else SSL
        pretrain_run(method, config("synthetic"), one / method, ssl=ssl, splits=tensor_splits(), progress=False)
        _assert_same_weights(two / method, one / method)
        ra, rb = _report(two / method), _report(one / method)
        assert ra["knn"]["per_class"] == rb["knn"]["per_class"] and ra["top1"] == pytest.approx(rb["top1"])
    # 23 images, batch 8, drop_last: 2 steps of 8 keys per epoch, 3 epochs -> 48 keys through a queue of 40
    assert int(load_checkpoint(two / "moco" / "checkpoints" / "last.pt")["model"]["queue_ptr"]) == 48 % 40

    # SimSiam has BatchNorm in its heads (per process on the CPU): it runs, rank 0 reports
    assert (two / "simsiam-rwsam" / "report.json").is_file()
    assert len((two / "simsiam-rwsam" / "metrics.jsonl").read_text().splitlines()) == 3

    # a MoCo checkpoint written by 2 processes after epoch 1 resumes on 1 process to the same end
    assert load_checkpoint(two / "moco-cut" / "checkpoints" / "last.pt")["next_epoch"] == 1
    pretrain_run("moco", config("synthetic"), two / "moco-cut", ssl=SSL, splits=tensor_splits(), progress=False,
                 log=lambda _: None)
    _assert_same_weights(two / "moco-cut", one / "moco")


def test_sharded_weighted_losses_add_up_to_the_whole_batch():
    """rwSAM's ascent loss is a weighted mean over the batch: each process's loss is scaled by its share
    of the batch's weight, so the processes' average (what DDP's gradient averaging computes) is the
    1-process loss."""
    from longtail.data.augment import Batch
    from longtail.distributed import ShardedTask

    values = torch.tensor([1.0, 4.0, 2.0, 8.0, 3.0])
    weights = torch.tensor([0.5, 3.0, 1.0, 1.0, 2.0])

    class Weighted:
        def batches(self, epoch, generator):
            yield Batch(values.clone(), torch.zeros(5, dtype=torch.long), torch.arange(5))

        def current_weights(self, index):
            return weights[index]

        def loss(self, model, batch):
            w = weights[batch.index]
            return (w * batch.images).sum() / w.sum()

    whole = (weights * values).sum() / weights.sum()
    parts = []
    for rank in range(2):
        task = ShardedTask(Weighted(), Shard(rank, 2))
        batch = next(task.batches(0, None))
        parts.append(task.loss(None, batch))
    assert torch.stack(parts).mean() == pytest.approx(float(whole))
