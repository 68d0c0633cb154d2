"""Data-parallel training across processes (``torchrun``), with the same loop and the same reports.

``torchrun --nproc_per_node N -m longtail train RECIPE ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment.
:func:`setup` reads them and joins the process group (NCCL on CUDA, Gloo on the CPU); without them
it does nothing, so every entry point is both the 1-process and the N-process program.

How the work is split (one rule for every data set):

* every process draws the same seeded epoch order (``longtail.loop.epoch_generator``), cuts it into
  the recipe's global batches of ``train.batch_size`` and takes rows ``rank::world`` of each batch:
  about ``batch_size // world`` images per process per step, the recipe's batch over all of them;
* :class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients; each process scales its
  loss by ``n_rank * world / n_batch`` so the average is the gradient of the whole batch's mean loss
  even when the batch does not split evenly (exact for losses that are a plain mean over the batch;
  class-weighted means are normalised per process, which differs slightly);
* evaluation: each process predicts rows ``rank::world`` of the evaluation set; logits are gathered on
  rank 0, which computes the summary and hands it to the others;
* rank 0 alone writes metrics, checkpoints and reports. A checkpoint holds the unwrapped model and
  the optimizer, neither of which depends on the number of processes, and the epoch order depends only
  on (seed, epoch): a run resumes on any number of processes.

BatchNorm statistics are per process (as in the references' multi-GPU training), so N processes with
batch ``B/N`` each match 1 process with batch ``B`` exactly only for models without batch statistics.
Self-supervised pre-training: MoCo shuffles its keys across processes and keeps one queue of the whole
batch's keys on every process (``longtail.ssl.tasks.MoCoTask``); SimSiam may synchronise BatchNorm
(``ssl.sync_bn``, GPUs only). Not covered: FixMatch, major feature weakening.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Self

import torch
import torch.distributed as dist
import torch.nn as nn

from .devices import resolve_device
from .errors import LongtailError


@dataclass(frozen=True)
class Shard:
    """This process's place: ``rank`` in ``0..world-1``."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> torch.Tensor:
        """This process's rows ``rank::world`` of ``n`` rows (possibly none)."""
        return torch.arange(self.rank, n, self.world)

    def batch_rows(self, n: int) -> tuple[torch.Tensor, float]:
        """This process's rows of a global training batch of ``n`` rows, and its loss scale.

        DDP averages the processes' gradients; with loss scale ``n_rank * world / n`` the average is
        the gradient of the mean loss over the ``n`` rows. A process with no row (``n < world``, a
        last batch) takes row 0 with scale 0: every process must run the same number of steps.
        """
        rows = self.rows(n)
        if rows.numel() == 0:
            return torch.zeros(1, dtype=torch.long), 0.0
        return rows, rows.numel() * self.world / n

    def weighted_scale(self, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The loss scale of this process's ``rows`` when the loss is a weighted mean over the batch.

        ``weight`` (n,) are the whole batch's example weights: with scale ``world * w[rows].sum() / w.sum()``
        DDP's average of the processes' weighted means is the whole batch's weighted mean.
        """
        return self.world * weight[rows.to(weight.device)].sum() / weight.sum()


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def current() -> Shard:
    """The shard of this process: (0, 1) unless a process group with several members is active."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


def is_main() -> bool:
    return current().is_main


def launch_rank() -> int:
    """This process's rank as ``torchrun`` set it (0 without it), known before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def setup(device: torch.device) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment; return this process's device.

    Without ``WORLD_SIZE > 1`` (a plain ``python -m longtail``) nothing happens and ``device`` is
    returned. On CUDA each process takes ``cuda:LOCAL_RANK``. Calling it again reuses the group.
    """
    world = env_world_size()
    if world <= 1:
        return device
    if not dist.is_available():
        raise LongtailError("this PyTorch build has no torch.distributed", "install a PyTorch with distributed support")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise LongtailError(f"process {local_rank} has no GPU: {torch.cuda.device_count()} visible",
                                "start at most one process per GPU (torchrun --nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise LongtailError(f"WORLD_SIZE={world} but {', '.join(missing)} not set",
                                "start distributed runs with torchrun --nproc_per_node N -m longtail ...")
        backend = "nccl" if device.type == "cuda" else "gloo"
        kw: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, init_method="env://", **kw)
        atexit.register(_teardown)
    return device


def _teardown() -> None:
    """Leave the process group at exit, in step with the other processes.

    Without the barrier, a process that finishes first tears its connections down while a peer is still
    leaving (or still finishing a collective), and the peer's Gloo threads can abort the process at exit
    ("terminate called without an active exception", SIGABRT; seen about once in eight two-process test
    runs). With it, every process has finished every collective before any of them destroys the group.
    Gloo's monitored barrier gives up after a minute if a peer died, so a crashed peer cannot hang the exit.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    with contextlib.suppress(Exception):
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
        else:
            dist.barrier()
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def barrier() -> None:
    if current().world > 1:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. a download), the others after it has finished."""
    shard = current()
    if not shard.is_main:
        barrier()
    yield
    if shard.is_main:
        barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (any picklable value)."""
    if current().world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(obj: Any) -> list[Any] | None:
    """``[obj of rank 0, obj of rank 1, ...]`` on rank 0, ``None`` elsewhere."""
    shard = current()
    if shard.world == 1:
        return [obj]
    out: list[Any] | None = [None] * shard.world if shard.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the processes (the tensor itself with one process)."""
    world = current().world
    if world == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world


def all_gather(x: torch.Tensor) -> list[torch.Tensor]:
    """``[x of rank 0, x of rank 1, ...]`` on every process; ``x`` has the same shape everywhere (no gradient)."""
    world = current().world
    if world == 1:
        return [x]
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    return parts


def wrap(model: nn.Module, device: torch.device, *, broadcast_buffers: bool = True) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when several processes train, else ``model`` itself.

    The wrapped module's gradients are averaged in ``backward``; keep the unwrapped ``model`` for
    evaluation and checkpoints (its state_dict has no ``module.`` prefix, so any number of
    processes can load it).
    """
    if current().world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # newer PyTorch renamed the per-forward buffer broadcast (and warns about the old name)
    name = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else "broadcast_buffers")
    sync: dict[str, Any] = {name: broadcast_buffers}  # a keyword chosen at run time
    return DistributedDataParallel(model, device_ids=ids, **sync)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class TaskWrapper:
    """A task that runs an ``inner`` task differently (``ShardedTask``; ``longtail.data.loader.LoaderTask``).

    What the loop and the drivers read of a task is the inner task's unless a wrapper says otherwise; the
    inner task's own hooks (a pre-training task's end_epoch, state_dict, ...) are called on it directly
    (:func:`unwrap_task`)."""

    def __init__(self, inner: Any, shard: Shard | None = None) -> None:
        self.inner = inner
        self.shard = shard if shard is not None else current()
        self.scale = 1.0  # this batch's loss factor, read by the wrapper's loss()

    @property
    def train(self) -> Any:
        return self.inner.train

    @property
    def multi_process(self) -> bool:
        return self.inner.multi_process

    @property
    def image_files(self) -> bool:
        return self.inner.image_files

    @property
    def graphable(self) -> bool:
        return self.inner.graphable

    @property
    def steps_per_epoch(self) -> int:
        return self.inner.steps_per_epoch

    def to(self, device: torch.device | str) -> Self:
        self.inner = self.inner.to(device)
        return self

    def on_epoch_start(self, epoch: int) -> None:
        self.inner.on_epoch_start(epoch)


class ShardedTask(TaskWrapper):
    """A task on tensor data (``ImageSet``) under DDP: rows ``rank::world`` of each of the inner task's batches.

    Every process runs the inner task's whole epoch draw (order and augmentation, cheap batched
    tensor operations) and keeps its rows of each global batch, so the processes together see
    exactly the batches of a 1-process run; the loss is scaled as :meth:`Shard.batch_rows` says.
    """

    def __init__(self, inner: Any, shard: Shard | None = None) -> None:
        super().__init__(inner, shard)
        self._rows: torch.Tensor = torch.zeros(0, dtype=torch.long)
        self._index: torch.Tensor | None = None

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[Any]:
        for batch in self.inner.batches(epoch, generator):
            rows, self.scale = self.shard.batch_rows(batch.labels.shape[0])  # scale: read by loss() for this batch
            rows = rows.to(batch.labels.device)
            self._rows, self._index = rows, getattr(batch, "index", None)
            yield type(batch)(*(t[rows] for t in batch))

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        loss = self.inner.loss(model, batch)
        scale: float | torch.Tensor = self.scale
        weights_now = getattr(self.inner, "current_weights", None)  # rwSAM: a weighted mean over the batch
        if weights_now is not None and self._index is not None:
            w = weights_now(self._index)
            if w is not None:  # this process's share of the whole batch's weight, not of its rows
                scale = self.shard.weighted_scale(w, self._rows)
        return loss if isinstance(scale, float) and scale == 1.0 else loss * scale


def unwrap_task(task: Any) -> Any:
    """The task inside ``ShardedTask`` / ``LoaderTask`` wrappers (``task`` itself when it has none)."""
    while "inner" in getattr(task, "__dict__", {}):
        task = task.inner
    return task


def default_workers() -> int:
    """DataLoader workers per process: min(8, the CPUs this process may use / processes on this node)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(0, min(8, cpus // max(per_node, 1)))


__all__ = ["Shard", "ShardedTask", "TaskWrapper", "all_gather", "all_mean", "barrier", "broadcast", "current",
           "default_workers", "unwrap_task", "env_world_size", "gather_to_main", "is_main", "main_first", "setup",
           "unwrap", "wrap"]


def start_process(device_name: str, log: Callable[[str], None], progress: bool | None
                  ) -> tuple[torch.device, bool, Callable[[str], None], bool | None]:
    """(device, is rank 0, log, progress) of this process; alone, or one of ``torchrun``'s.

    Joins the process group (``cuda:LOCAL_RANK`` on GPUs), silences logging and progress bars off
    rank 0, and waits until every process is past the command line's ``--restart`` before rank 0 writes.
    """
    device = setup(resolve_device(device_name))
    main = is_main()
    if not main:
        log, progress = (lambda _: None), False
    barrier()
    return device, main, log, progress
