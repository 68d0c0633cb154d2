"""Training steps for the loop: eager (the closure form) or one CUDA graph per step.

``fit`` hands every batch to a *stepper*. :class:`EagerStep` is the general one:
``optimizer.step(closure)``, which every optimizer and task support. :class:`GraphStep` is the fast path
for small images on a GPU (``train.engine=graph``, and ``auto`` on one GPU when the task and
optimizer allow it): it records forward, backward and the SGD update (with SAM: both passes, then
the update) of one step as a CUDA graph and replays it for every later batch of the same shape, so the host
launches one graph per step instead of a few hundred kernels (REFERENCE.md: the host, at about
30 ms per step, not the GPU's 3 ms, bounds eager training of ResNet-32 on an H100).

What a graph needs, and how the step provides it:

* static memory: each batch is copied into the graph's input tensors; gradients are zeroed in
  place (never set to ``None``); momentum buffers are the optimizer's own (``optimizer.state``,
  so checkpoints are those of ``torch.optim.SGD`` and a run resumes under either stepper);
* no host synchronisation: the learning rate is a device tensor, filled once per epoch, and the
  SGD update (:func:`sgd_update`, the arithmetic of ``torch.optim.SGD`` with momentum, dampening 0,
  weight decay, no Nesterov) uses only ``torch._foreach_*`` kernels;
* a task whose loss reads only the batch and per-class weights (``graphable``): the step keeps each
  ``class_weight`` the task sets in a tensor of its own and copies every new epoch's weights into it,
  so a replayed graph reads them where it recorded them; which tasks hold weights (a task, the members
  of stacked seeds, the task inside a loader) is :func:`weight_holders`. The graph's key is whether each
  holder is weighted (DRW after its start), the form of its loss (TLA truncated or not) and the batch
  shapes: a new key gets its own graph (``pool`` shared), after ``warmup`` eager steps of it (cuDNN picks
  its kernels outside the capture).

Every step, eager or replayed, is a real training step: the warm-up steps are the schedule's first
steps, so the number of optimizer steps and the batches are those of an eager run. On the CPU (and
before capture) :class:`GraphStep` runs the same body eagerly, which is what the CPU tests compare
with :class:`EagerStep`.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Hashable, Protocol, cast

import torch
import torch.nn as nn

from .devices import autocast_for
from .distributed import current
from .errors import LongtailError

ENGINES = ("auto", "eager", "graph")
#: ``train.compile``: off, or a ``torch.compile`` mode (``default`` is torch.compile's own default)
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class EagerStep:
    """``optimizer.step(closure)``: any optimizer (SGD, SAM), any task."""

    capture_s = 0.0  # nothing is compiled or captured

    def __init__(self, model: nn.Module, task: Any, optimizer: torch.optim.Optimizer, device: torch.device,
                 amp: str) -> None:
        self.model, self.task, self.optimizer, self.device, self.amp = model, task, optimizer, device, amp

    def start_epoch(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def __call__(self, batch: Any) -> torch.Tensor:
        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            with autocast_for(self.device, self.amp):
                loss = self.task.loss(self.model, batch)
            loss.backward()
            return loss

        # torch's stubs say a closure returns a float; every optimizer returns the closure's loss tensor
        return cast(_ClosureStep, self.optimizer).step(closure).detach()


class _ClosureStep(Protocol):
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor: ...


def weight_holders(task: Any) -> list[Any]:
    """The tasks whose ``class_weight`` a task's loss reads: itself, the members of stacked seeds, or the
    task a loader or shard wraps."""
    members = getattr(task, "members", None)
    if members is not None:
        return [h for m in members for h in weight_holders(m)]
    inner = task.__dict__.get("inner") if hasattr(task, "__dict__") else None
    if inner is not None:
        return weight_holders(inner)
    return [task] if hasattr(task, "class_weight") else []


def graph_unsupported_reason(task: Any, optimizer: torch.optim.Optimizer) -> str | None:
    """Why ``GraphStep`` cannot run this task and optimizer, or ``None``."""
    if not getattr(task, "graphable", False):
        return f"the task ({type(task).__name__}) is not graphable (its loss may read changing state)"
    wrapped = getattr(optimizer, "graph_unsupported", None)  # MaxNorm, EMA, Lookahead (longtail.optim)
    if wrapped is not None:
        return f"the optimizer is a {type(optimizer).__name__}; the graphed step implements plain SGD, and {wrapped}"
    sgd = base_sgd(optimizer)
    if type(sgd) is not torch.optim.SGD:
        around = f" around a {type(sgd).__name__}" if sgd is not optimizer else ""
        return (f"the optimizer is a {type(optimizer).__name__}{around}; the graphed step implements plain SGD "
                "(and SAM / ASAM around it)")
    for g in sgd.param_groups:
        if g.get("nesterov") or g.get("dampening", 0) or g.get("maximize"):
            return "the graphed step implements SGD without Nesterov, dampening or maximize"

    if current().world > 1:
        return "several processes (DDP) train eagerly"
    return None


def sam_of(optimizer: torch.optim.Optimizer) -> Any:
    """The optimizer if it takes SAM's two passes per step (``longtail.optim.SAM``: ``two_pass``), else None."""
    return optimizer if getattr(optimizer, "two_pass", False) else None


def base_sgd(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """What updates the weights: SAM's base optimizer, else the optimizer itself."""
    sam = sam_of(optimizer)
    return sam.base_optimizer if sam is not None else optimizer


def sgd_update(params: list[torch.Tensor], grads: list[torch.Tensor] | tuple[torch.Tensor, ...],
               bufs: list[torch.Tensor], lr: torch.Tensor, momentum: float, weight_decay: float) -> None:
    """``torch.optim.SGD``'s update (dampening 0, no Nesterov) with ``lr`` a device tensor, in place.

    ``d = g + wd * p``; ``buf = momentum * buf + d``; ``p -= lr * buf``. A zero buffer gives the
    same first step as SGD's ``buf = d``.
    """
    if weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum:
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads)
        grads = bufs
    torch._foreach_sub_(params, torch._foreach_mul(grads, lr))


class GraphStep:
    """Forward, backward and SGD as one CUDA graph per (task graph key, batch shapes); eager on the CPU.

    With SAM or ASAM (``longtail.optim.SAM``, ``optim.name=sam|asam``) the graph holds both passes: the
    gradient at w, the perturbation (its radius a device tensor, refilled when the epoch's radius changes),
    the gradient at w + e, the weights restored, then the base SGD's update; the phase hooks (BatchNorm's
    statistics frozen in the second pass) run while recording, so the replayed kernels are theirs. It is
    :meth:`longtail.optim.SAM.two_passes`, the code of the eager step."""

    def __init__(self, model: nn.Module, task: Any, optimizer: torch.optim.Optimizer, device: torch.device, amp: str,
                 *, warmup: int = 3, log: Callable[[str], None] | None = None, fallback: bool = False) -> None:
        reason = graph_unsupported_reason(task, optimizer)
        if reason is not None:
            raise LongtailError(f"train.engine=graph cannot run this training: {reason}",
                                "use train.engine=eager (or auto)")
        self.model, self.task, self.optimizer, self.device, self.amp = model, task, optimizer, device, amp
        self.sam = sam_of(optimizer)
        self.sgd = base_sgd(optimizer)
        self.warmup, self.log, self.fallback = int(warmup), log, fallback
        self.capture = device.type == "cuda"
        self.lr = torch.zeros((), device=device)
        self.rho = torch.zeros((), device=device)  # SAM's radius, read by the graph
        self.rho_value: float | None = None
        self.graphs: dict[Hashable, tuple[Any, Any, torch.Tensor]] = {}  # key -> (graph, static batch, loss)
        self.eager_steps: dict[Hashable, int] = {}
        self.pool: Any = None
        self.capture_s = 0.0  # time spent capturing graphs (the "compile" time of this engine)
        self.groups = [self._group(g) for g in self.sgd.param_groups]
        self.holders = weight_holders(task)
        self.weight_bufs: dict[int, torch.Tensor] = {}

    def _group(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor], float, float]:
        params = [p for p in group["params"] if p.requires_grad]
        bufs = []
        for p in params:
            state = self.sgd.state[p]
            if state.get("momentum_buffer") is None:  # a fresh run: zeros, which SGD's first step equals
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        return params, bufs, float(group["momentum"]), float(group["weight_decay"])

    def start_epoch(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr  # what a checkpoint records
        self.lr.fill_(lr)

    def _forward_backward(self, batch: Any) -> torch.Tensor:
        for params, _, _, _ in self.groups:
            for p in params:
                if p.grad is not None:
                    p.grad.zero_()  # in place: the graph's gradient memory stays put
        with autocast_for(self.device, self.amp, cache=not self.capture):
            loss = self.task.loss(self.model, batch)
        loss.backward()
        return loss

    def _body(self, batch: Any) -> torch.Tensor:
        if self.sam is None:
            loss = self._forward_backward(batch)
        else:
            loss = self.sam.two_passes(lambda: self._forward_backward(batch), self.rho)
        with torch.no_grad():
            for params, bufs, momentum, wd in self.groups:
                # as torch.optim.SGD: a parameter without a gradient (unused by the model) is not updated
                used = [i for i, p in enumerate(params) if p.grad is not None]
                if used:
                    sgd_update([params[i] for i in used], [params[i].grad for i in used],  # type: ignore[misc]
                               [bufs[i] for i in used], self.lr, momentum, wd)
        return loss.detach()

    def _key(self, batch: Any) -> Hashable:
        shapes = tuple((tuple(t.shape), t.dtype) for t in batch if isinstance(t, torch.Tensor))
        # a loss whose form changes at an epoch (TLA's truncation, losses.TruncatedVS) gets a graph of each form
        forms = tuple(getattr(getattr(h, "criterion", None), "truncated", None) for h in self.holders)
        return (tuple(h.class_weight is not None for h in self.holders), forms, shapes)

    def _pin_weights(self) -> None:
        """Each holder's ``class_weight`` in a tensor that stays put: a new epoch's weights are copied in."""
        for i, holder in enumerate(self.holders):
            w = holder.class_weight
            if w is None:
                continue
            buf = self.weight_bufs.get(i)
            if buf is None or buf.shape != w.shape or buf.dtype != w.dtype or buf.device != w.device:
                self.weight_bufs[i] = buf = w.detach().clone()
            elif w is not buf:
                buf.copy_(w)
            holder.class_weight = buf

    def __call__(self, batch: Any) -> torch.Tensor:
        self._pin_weights()
        if self.sam is not None and self.sam.rho != self.rho_value:  # a new radius (optim.sam_rho_late)
            self.rho.fill_(self.sam.rho)
            self.rho_value = self.sam.rho
        key = self._key(batch)
        entry = self.graphs.get(key)
        if entry is not None:
            graph, static, loss = entry
            for dst, src in zip(static, batch):
                if isinstance(dst, torch.Tensor):
                    dst.copy_(src)
            graph.replay()
            return loss
        if not self.capture or self.eager_steps.get(key, 0) < self.warmup:
            self.eager_steps[key] = self.eager_steps.get(key, 0) + 1
            return self._warm_step(batch)
        return self._capture(key, batch)

    def _warm_step(self, batch: Any) -> torch.Tensor:
        if not self.capture:
            return self._body(batch)
        side = torch.cuda.Stream(self.device)  # warm-up on a side stream, as torch.cuda.graph asks
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            loss = self._body(batch)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return loss

    def _record(self, graph: Any, step: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Record ``step`` into ``graph`` (nothing runs); its output tensor is rewritten by every replay."""
        with torch.cuda.graph(graph, pool=self.pool):
            return step()

    def _capture(self, key: Hashable, batch: Any) -> torch.Tensor:
        t0 = time.perf_counter()
        static = type(batch)(*(t.clone() if isinstance(t, torch.Tensor) else t for t in batch))
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        try:
            loss = self._record(graph, lambda: self._body(static))
        except Exception as e:  # nothing ran: the capture only records
            if not self.fallback:
                raise LongtailError(f"capturing the training step as a CUDA graph failed: {type(e).__name__}: "
                                    f"{str(e)[:300]}", "train with train.engine=eager") from e
            warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {str(e)[:200]}); "
                          "training on with eager steps (set train.engine=eager to skip the attempt)", stacklevel=2)
            self.capture = False
            torch.cuda.synchronize(self.device)
            return self._body(batch)
        self.pool = graph.pool()
        self.graphs[key] = (graph, static, loss)
        self.capture_s += time.perf_counter() - t0
        if self.log is not None:
            self.log(f"captured a CUDA graph of the training step for {key}")
        graph.replay()  # capture records without running: this batch's step happens now
        return loss


def compile_model(model: nn.Module, mode: str, example: torch.Tensor, *, device: torch.device, amp: str,
                  autocast_cache: bool = True) -> tuple[nn.Module, float]:
    """``torch.compile(model)`` for training, compiled before the first step; returns (module, seconds).

    ``example`` is a batch of the training shape: one forward and backward pass of it compiles the
    graphs (static shapes; a smaller last batch compiles once more when it comes). That pass changes
    nothing: gradients are dropped, BatchNorm statistics and the random state restored, so training
    is unchanged. ``autocast_cache`` must be that of the steps (off under ``GraphStep`` on CUDA).
    Only ``forward`` is compiled: a task that calls ``model.features`` (MFW) runs those eagerly.
    """
    if mode not in COMPILE_MODES:
        raise LongtailError(f"unknown train.compile {mode!r}", f"use one of: {', '.join(COMPILE_MODES)}")
    if mode == "off":
        return model, 0.0
    t0 = time.perf_counter()
    # compiling a module gives a module (an OptimizedModule); torch's stubs say only "a callable"
    compiled = cast(nn.Module, torch.compile(model, mode=None if mode == "default" else mode, dynamic=False))
    saved = {k: b.clone() for k, b in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # draws nothing for training
            with autocast_for(device, amp, cache=autocast_cache):  # as the steps will: no recompilation
                out = compiled(example)
            out.float().sum().backward()
    except Exception as e:  # a compiler error names neither the setting nor the way out
        raise LongtailError(f"torch.compile (train.compile={mode}) failed: {type(e).__name__}: {str(e)[:300]}",
                            "train without it (train.compile=off); on the CPU it needs a C++ compiler") from e
    for p in model.parameters():
        p.grad = None
    with torch.no_grad():
        for k, b in model.named_buffers():
            b.copy_(saved[k])
    model.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return compiled, time.perf_counter() - t0


#: torch.compile modes that record CUDA graphs themselves: not inside GraphStep's own capture
CUDAGRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")


def resolve_engine(engine: str, device: torch.device, compile_mode: str = "off") -> str:
    """``eager`` or ``graph`` for ``train.engine``; ``auto`` is ``graph`` on CUDA (one process, a compile
    mode without CUDA graphs of its own) and ``eager`` elsewhere. :func:`make_stepper` still steps
    eagerly under ``auto`` when the task or optimizer cannot be graphed."""
    if engine not in ENGINES:
        raise LongtailError(f"unknown train.engine {engine!r}", f"use one of: {', '.join(ENGINES)}")
    if engine == "graph" and compile_mode in CUDAGRAPH_COMPILE_MODES:
        raise LongtailError(f"train.compile={compile_mode} records CUDA graphs itself, inside train.engine=graph's own",
                            "use train.compile=max-autotune-no-cudagraphs (or default) with train.engine=graph")
    if engine == "auto":
        graphed = device.type == "cuda" and current().world == 1 and compile_mode not in CUDAGRAPH_COMPILE_MODES
        return "graph" if graphed else "eager"
    return engine


def training_engine(engine: str, compile_mode: str, device: torch.device) -> str:
    """What to pass to ``fit(engine=...)`` for these settings: ``auto`` becomes ``eager`` where
    :func:`resolve_engine` says so (e.g. a compile mode with CUDA graphs of its own); errors early."""
    resolved = resolve_engine(engine, device, compile_mode)
    return "eager" if engine == "auto" and resolved == "eager" else engine


def make_stepper(engine: str, model: nn.Module, task: Any, optimizer: torch.optim.Optimizer,
                 device: torch.device, amp: str) -> EagerStep | GraphStep:
    """The stepper of ``train.engine`` (:func:`resolve_engine`).

    ``graph`` asked for explicitly fails clearly when the training cannot be graphed; ``auto`` takes
    the graph engine on a GPU only when the task and optimizer allow it, and steps on eagerly (with a
    warning) if a capture fails.
    """
    if resolve_engine(engine, device) == "graph":
        if engine == "graph":
            return GraphStep(model, task, optimizer, device, amp)
        if graph_unsupported_reason(task, optimizer) is None:
            return GraphStep(model, task, optimizer, device, amp, fallback=True)
    return EagerStep(model, task, optimizer, device, amp)


__all__ = ["COMPILE_MODES", "CUDAGRAPH_COMPILE_MODES", "ENGINES", "EagerStep", "GraphStep", "base_sgd", "compile_model",
           "graph_unsupported_reason", "make_stepper", "resolve_engine", "sam_of", "sgd_update",
           "training_engine"]
