"""The one run driver: set up -> resume -> fit -> checkpoint -> report, for every kind of run.

Supervised training of one seed (:mod:`longtail.experiment`), several seeds trained at once as one
stacked network (:mod:`longtail.stacked`), self-supervised pre-training (:mod:`longtail.ssl.run`) and a
second stage on a trained run (:mod:`longtail.decouple`) all run through :func:`drive`. What differs
between them is a :class:`Stage`: which data it trains on, how it builds its model, task and
optimizer, what an epoch's row and checkpoint carry, and what its report says. Everything else is
here, once: the run folder's lock and checks, ``--restart``, resuming (the folder's settings compared
with the new ones, a damaged checkpoint replaced by the one before it), the config file, the
per-epoch log lines, validation and checkpoints (:class:`longtail.runs.EpochLog`), TensorBoard event files
(``train.tensorboard``, :mod:`longtail.tensorboard`), timing, and ``torchrun`` (rank 0 alone writes).

A stage writes one run folder, or several (stacked seeds: one per seed, each the folder a single
seed's run would have written). Its :attr:`Stage.members` name them.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from . import distributed, tensorboard
from .checkpoints import load_model_state
from .config import RunConfig
from .counts import ClassCounts
from .data.registry import Splits
from .data.semi import load_splits
from .devices import use_channels_last
from .graphs import compile_model, resolve_engine, training_engine
from .loop import EpochLines, EpochRecord, announces, fit
from .optim import evaluated_model
from .runs import EpochLog, RunDir, clear_run_folder, require_run_folder, resume_or_start
from .schedule import lr_function
from .tasks import Task

Log = Callable[[str], None]


@dataclass
class Member:
    """One run folder that a stage writes, with the configuration saved in it."""

    cfg: RunConfig
    run: RunDir


@dataclass
class Context:
    """What the driver set up for a stage: the data on the device, and this process's place."""

    splits: Splits
    counts: ClassCounts  # of the training split
    device: torch.device
    main: bool  # rank 0 (alone writes files)
    log: Log
    progress: bool | None


@dataclass
class Built:
    """What a stage built to train: the network whose weights the checkpoints hold (unwrapped), its task
    and optimizer, and the input shape of one example as the network sees it (for ``train.compile``)."""

    model: nn.Module
    task: Task
    optimizer: torch.optim.Optimizer
    input_shape: tuple[int, ...]
    broadcast_buffers: bool = True  # DDP's per-forward buffer broadcast under torchrun
    trains: nn.Module | None = None  # the module the loop trains, when not ``model`` (e.g. a frozen backbone's view)

    def evaluated(self) -> nn.Module:
        """The network that validation, best-val.pt and the report evaluate: the EMA of ``model``'s weights
        when the optimizer keeps one (``optim.ema``, :func:`longtail.optim.evaluated_model`), else ``model``."""
        return evaluated_model(self.model, self.optimizer)


def task_state(built: Built) -> Callable[[], dict[str, Any]] | None:
    """What a checkpoint keeps of the task's own state (``{"task": task.state_dict()}``), for a task that has one;
    :meth:`Stage.restore` gives it back."""
    task = distributed.unwrap_task(built.task)
    if not hasattr(task, "state_dict"):
        return None
    return lambda: {"task": task.state_dict()}


class Stage:
    """What one kind of run does differently; the defaults are those of supervised training of one seed.

    :func:`drive` calls, in order: :meth:`data`, :meth:`build`, :meth:`prepare` (before ``--restart``
    clears anything, so a bad setting leaves the folder as it was), :meth:`same` and :meth:`restore` (when
    the folders hold checkpoints), :meth:`write_config`, then per epoch :meth:`end_epoch`, and at the end
    :meth:`report`.
    """

    cfg: RunConfig
    members: list[Member]
    best_by: str | None = "val_balanced"  # the validation score that chooses best-val.pt; None: none kept

    @property
    def epochs(self) -> int:
        return self.cfg.train.epochs

    def lr_at(self) -> Callable[[int], float]:
        return lr_function(self.cfg)

    @property
    def seed(self) -> int:
        """The seed of the loop's per-epoch generators (batch order, augmentation)."""
        return self.cfg.seed

    @property
    def images_per_step(self) -> int:
        return self.cfg.train.batch_size

    def data(self, splits: Splits, ctx_device: torch.device, log: Log) -> Splits:
        """The splits as this stage trains on them, on the device."""
        return splits.to(ctx_device)

    def build(self, ctx: Context) -> Built:
        raise NotImplementedError

    def prepare(self, built: Built, ctx: Context, *, resuming: bool) -> None:
        """Set up what a fresh run starts from (e.g. ``train.init_from``); ``resuming``: the run has its own."""

    def same(self, member: Member) -> Callable[[], bool] | None:
        """How to tell that ``member``'s folder holds a run of these settings; None: its config equals ours."""
        return None

    def restore(self, built: Built, states: list[dict[str, Any] | None], ctx: Context) -> int:
        """Load the members' checkpoint ``states`` (None: a member without one) into ``built``; returns the
        epoch to resume from."""
        (state,) = states
        assert state is not None
        member = self.members[0]
        load_model_state(built.model, state["model"], str(member.run.checkpoint))
        built.optimizer.load_state_dict(state["optimizer"])
        task = distributed.unwrap_task(built.task)
        if hasattr(task, "load_state_dict"):  # a task with a state of its own (ACR's estimate, MoCo's queue)
            task.load_state_dict(state.get("extra", {}).get("task", {}))
        return int(state["next_epoch"])

    def write_config(self, member: Member, command: list[str] | None) -> None:
        member.run.create(member.cfg, command)

    def end_epoch(self, rec: EpochRecord, built: Built, logs: list[EpochLog], ctx: Context) -> float | None:
        """Record epoch ``rec`` in ``logs`` (rows, validation, checkpoints); returns the loss its log line
        shows (None: ``rec.train_loss``)."""
        logs[0].end_epoch(asdict(rec), built.model, built.optimizer, validate=self.validator(built, ctx),
                          evaluated=built.evaluated(), extra=task_state(built))
        return None

    def validator(self, built: Built, ctx: Context) -> Callable[[], dict[str, Any]] | None:
        """The scores an epoch's row gets on the validation split (every ``train.eval_every`` epochs)."""
        return None

    def report(self, built: Built, ctx: Context, timing: dict[str, float], records: list[list[dict[str, Any]]],
               start_epoch: int) -> Any:
        raise NotImplementedError

    def stopped(self) -> Any:
        """What :func:`drive` returns when ``stop_after`` ended the run before its last epoch."""
        return {}


def drive(stage: Stage, *, splits: Splits | None = None, command: list[str] | None = None,
          progress: bool | None = None, stop_after: int | None = None, log: Log = print,
          restart: bool = False) -> Any:
    """Run ``stage`` into its run folders, resuming from their checkpoints when they hold some.

    The folders are locked while this runs (one writer at a time). ``restart``: clear them once the
    settings and data have been checked, and start over. ``stop_after``: end after that many epochs
    (returns :meth:`Stage.stopped`). ``splits``: the data (default: loaded from the stage's config).
    Returns the stage's :meth:`~Stage.report`.
    """
    with contextlib.ExitStack() as locks:
        if distributed.launch_rank() == 0:
            for m in stage.members:
                locks.enter_context(m.run.lock(log))
        for m in stage.members:
            require_run_folder(m.run.root)
        return _drive(stage, splits=splits, command=command, progress=progress, stop_after=stop_after,
                      log=log, restart=restart)


def _drive(stage: Stage, *, splits: Splits | None, command: list[str] | None, progress: bool | None,
           stop_after: int | None, log: Log, restart: bool) -> Any:
    cfg, t = stage.cfg, stage.cfg.train
    if t.tensorboard:
        tensorboard.require()  # before any data is loaded or folder touched
    device, main, log, progress = distributed.start_process(t.device, log, progress)
    t_setup = time.perf_counter()
    with distributed.main_first():  # rank 0 downloads, the others read what it left
        splits = splits or load_splits(cfg.data)
    splits = stage.data(splits, device, log)
    counts = splits.train.class_counts()
    counts.require_nonempty(splits.train.class_names)
    ctx = Context(splits, counts, device, main, log, progress)
    built = stage.build(ctx)
    resuming = not restart and any(m.run.has_checkpoint() for m in stage.members)
    stage.prepare(built, ctx, resuming=resuming)

    if main:
        for m in stage.members:
            if restart:  # settings and data are checked by now
                clear_run_folder(m.run.root)
            m.run.clean()
    distributed.barrier()
    found = [resume_or_start(m.run, m.cfg, log=log, same=stage.same(m)) for m in stage.members]
    start_epoch, records = 0, [[] for _ in stage.members]  # type: int, list[list[dict[str, Any]]]
    if any(s is not None for s in found):
        start_epoch = stage.restore(built, found, ctx)
        records = [list(s["records"]) if s is not None else [] for s in found]
        where = stage.members[0].run.root if len(stage.members) == 1 else stage.members[0].run.root.parent
        log(f"resuming {where} from epoch {start_epoch}/{stage.epochs}")
    if main:
        for m in stage.members:
            stage.write_config(m, command)
    trains = built.trains if built.trains is not None else built.model
    train_model = distributed.wrap(trains, device, broadcast_buffers=built.broadcast_buffers)
    setup_s = time.perf_counter() - t_setup
    train_model, compile_s = compiled_for_training(train_model, cfg, built.input_shape, device)

    logs = [EpochLog(m.run, m.cfg, rows, writes=main, has_val=splits.val is not None, best_by=stage.best_by,
                     epochs=stage.epochs) for m, rows in zip(stage.members, records)]
    lines = EpochLines(stage.epochs, stage.images_per_step, start_epoch, log) if announces(progress, main) else None
    board = (tensorboard.TensorBoardLog([m.run for m in stage.members], [m.cfg.train.batch_size for m in stage.members],
                                        start_epoch=start_epoch, resumed_rows=records)
             if t.tensorboard and main else None)

    def on_epoch_end(rec: EpochRecord) -> bool:
        loss = stage.end_epoch(rec, built, logs, ctx)
        if board is not None:
            for i, member_log in enumerate(logs):
                board.epoch(i, member_log.records[-1])
        if lines is not None:
            lines(rec, loss=loss)
        return stop_after is not None and len(records[0]) - start_epoch >= stop_after

    try:
        t_train = time.perf_counter()
        fit(train_model, built.task, built.optimizer, epochs=stage.epochs, lr_at=stage.lr_at(), seed=stage.seed,
            device=device, amp=t.amp, start_epoch=start_epoch, on_epoch_end=on_epoch_end, progress=progress,
            engine=training_engine(t.engine, t.compile, device))
        train_s = time.perf_counter() - t_train
        distributed.barrier()  # rank 0's checkpoints are on disk before anyone reads them
        if stop_after is not None and len(records[0]) < stage.epochs:
            return stage.stopped()
        done = records[0][start_epoch:]
        timing = {"setup_s": setup_s, "compile_s": compile_s + captured(done),  # capture: part of train_s
                  "train_s": train_s, "train_images_per_s": images_per_s(done, t.batch_size, train_s)}
        result = stage.report(built, ctx, timing, records, start_epoch)
        if board is not None:  # the report's test scores, per-class accuracy and plot (stacked seeds: one each)
            for i, member_result in enumerate(result if isinstance(result, list) else [result]):
                board.final(i, member_result, step=stage.epochs)
        return result
    finally:
        if board is not None:
            board.close()


def captured(rows: list[dict[str, Any]]) -> float:
    """Seconds spent capturing CUDA graphs during the epochs ``rows`` (part of their training time)."""
    return sum(float(r.get("capture_s", 0.0)) for r in rows)


def images_per_s(rows: list[dict[str, Any]], batch_size: int, seconds: float) -> float:
    """Training images per second of the epochs ``rows`` (their steps times the batch size)."""
    return len(rows) and sum(r["steps"] for r in rows) * batch_size / max(seconds, 1e-9)


def compiled_for_training(model: nn.Module, cfg: RunConfig, image_shape: tuple[int, ...], device: torch.device
                          ) -> tuple[nn.Module, float]:
    """``model`` compiled for training when ``train.compile`` asks (``longtail.graphs.compile_model``)."""
    t = cfg.train
    if t.compile == "off":
        return model, 0.0

    graphed = resolve_engine(t.engine, device, t.compile) == "graph" and device.type == "cuda"
    rows = len(distributed.current().rows(t.batch_size))  # this process's share of a batch
    example = torch.zeros(rows, *image_shape, device=device)
    if use_channels_last(t.channels_last):
        example = example.contiguous(memory_format=torch.channels_last)
    return compile_model(model, t.compile, example, device=device, amp=t.amp, autocast_cache=not graphed)
