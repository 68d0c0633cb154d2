"""The optimizer of a run: SGD, or SAM / ASAM around it; then MaxNorm and an average of the weights.

:func:`make_optimizer` builds it from ``cfg.train`` (lr, momentum, Nesterov, weight decay) and ``cfg.optim``:

* ``optim.name=sam`` (Foret et al., ICLR 2021) minimises ``max_{||e|| <= rho} L(w + e)``. One step, given a
  closure that zeroes the gradients, computes the loss and calls ``backward``::

      loss = closure()                      # "ascent" pass: g = grad L(w)
      e = rho * g / ||g||                   # sam;  asam: e = rho * w^2 g / ||w g||   (T_w = |w|)
      w <- w + e;  closure()                # "descent" pass: grad L(w + e)
      w <- w (restored exactly);  SGD step with that second gradient

  ``optim.name=asam`` is adaptive SAM (Kwon et al., ICML 2021) with ``T_w = |w|`` over every parameter and no
  ``eta``, as davda54/sam's ``adaptive=True`` (Kwon's code uses ``|w| + 0.01`` on weights only). ``optim.sam_rho``
  defaults to the papers' 0.05 (sam) and 2.0 (asam). ``longtail.loop.fit`` calls ``optimizer.step(closure)``,
  so SAM needs no branch there. BatchNorm running statistics are updated by the first pass only (Foret et
  al.'s code keeps the unperturbed pass's statistics; davda54/sam's ``disable_running_stats``), or with
  ``optim.sam_bn_stats=both`` by both passes, in train mode (wang22ti/DDC's ``cifar_train_sam.py``, lines
  277-293 at bcae46e: ``model(input)`` twice after one ``model.train()``; Liu et al.'s rwSAM likewise).
  ``optim.sam_rho_late=r1`` switches the radius to ``r1`` from epoch ``scaled_epoch(optim.sam_rho_late_start,
  train.epochs)`` (0-based; default 160 of 200) on, as DDC's ``adjust_rho`` (``utils/utils.py`` 88-98: ``rho[1]``
  once ``epoch + 1 > 160 * (epochs // 200)``, i.e. from 0-based epoch 320 of 400, ``rho[0]`` before), set at each
  epoch's start (:meth:`SAM.on_epoch_start`), so a resumed run gets the radius of its epoch.
* ``optim.maxnorm=t`` (Alshammari et al., CVPR 2022): after every step the rows of the classifier head's
  weight (one per class) are projected onto norms at most ``cap = min + t (max - min)`` of their norms when
  training starts (:class:`longtail.maxnorm.MaxNorm`); the cap is saved with the optimizer state, so a
  resumed run keeps the cap of its start.
* ``optim.ema=d`` (USB's EMA, ``semilearn/core/utils/misc.py`` ``EMA`` + ``hooks/ema.py``): after every
  step (and after MaxNorm's projection) ``ema = d * ema + (1 - d) * w`` for the trained parameters, and the
  buffers (BatchNorm running statistics) and frozen parameters copied; it starts from the weights when
  training starts (USB: no warm-up, no bias correction). Validation, the test metrics and the report
  evaluate it (:func:`evaluated_model`).


airbench94's techniques (KellerJordan/cifar10-airbench ``airbench94.py`` at 01a2367; issue 15 measures them on
long-tailed data), each off by default:

* ``optim.lookahead=d`` (airbench's ``LookaheadState``, :class:`Lookahead`): from epoch ``optim.lookahead_start``
  on, every ``optim.lookahead_every`` steps ``ema <- lerp(ema, w, 1 - rho)``, ``w <- ema`` over every float tensor
  of the model's state dict (parameters and BatchNorm statistics), with ``rho = d^every * (k / K)^3`` at step ``k``
  of ``K``; the first such step only copies the weights; at the end of every epoch ``w <- ema`` (decay 1). The
  model's weights are then the averaged ones: they are what is evaluated and checkpointed.
* ``optim.bn_bias_lr_mult=m`` (airbench's ``bias_scaler`` 64, line 45 "scales up learning rate (but not weight
  decay) for BatchNorm biases"; lines 328 and 356-361): BatchNorm's biases in a parameter group of their own whose
  learning rate is ``m`` times the schedule's and whose weight decay is ``train.weight_decay / m``, so the decay
  per step (``lr * weight_decay``) stays that of the other parameters (:func:`make_run_sgd`).
* ``optim.whiten_bias_epochs=n`` (airbench's ``whiten_bias_epochs`` 3, line 53; line 379 sets
  ``model[0].bias.requires_grad = (epoch < n)`` before each epoch, and its ``zero_grad(set_to_none=True)`` leaves
  the frozen bias without a gradient, so SGD skips it): FastNet's patch-whitening bias trains in epochs
  ``0 .. n-1`` and is frozen from epoch ``n``, a resumed run included. Deviation: we only ever turn
  ``requires_grad`` off (airbench also sets it on before epoch ``n``), so a frozen backbone stays frozen.

``longtail.loop.fit`` tells the optimizer where the run is (:meth:`RunOptimizer.on_epoch_start` with the epoch,
its steps and the run's epochs; :meth:`RunOptimizer.on_epoch_end`).

Checkpoints: ``optimizer.state_dict()`` is SGD's (``state``, ``param_groups``; the BatchNorm-bias group carries
its ``lr_mult``) with, when on, ``maxnorm`` (``{"cap", "thresh"}``), ``ema`` (``{"decay", "weights": the
averaged model's state dict}``) and, once started, ``lookahead`` (``{"decay", "weights": the averaged float
tensors}``) beside them; ``longtail.checkpoints.evaluated_weights`` reads the weights a checkpoint's run is
evaluated with.

The CUDA-graph engine (``train.engine=graph``) captures SGD steps and SAM / ASAM around them (both passes in one
graph); for the other settings ``auto`` steps eagerly and ``graph`` refuses them (``longtail.graphs``).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator, cast

import torch
import torch.nn as nn

from .checkpoints import RESTART_FIX
from .config import OptimConfig, RunConfig
from .errors import LongtailError
from .loop import make_sgd
from .maxnorm import MaxNorm
from .models.fastnet import whitening_layer
from .schedule import scaled_epoch

PHASES = ("plain", "ascent", "descent")
SAM_RHO = {"sam": 0.05, "asam": 2.0}  # Foret et al. 2021; Kwon et al. 2021 (davda54/sam: rho=2 with adaptive)


class WrappedOptimizer(torch.optim.Optimizer):
    """An optimizer around ``base_optimizer`` whose ``param_groups`` *are* the base's, so the learning rate
    that the loop sets reaches it."""

    def __init__(self, base_optimizer: torch.optim.Optimizer, defaults: dict[str, Any]) -> None:
        params = [p for group in base_optimizer.param_groups for p in group["params"]]
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer  # from here on, param_groups are the base optimiser's

    # The groups are looked up on the base optimiser every time: its load_state_dict replaces its
    # list of groups, and a reference taken at construction would then miss the loop's lr updates.
    @property
    def param_groups(self) -> list[dict]:
        base = self.__dict__.get("base_optimizer")
        return base.param_groups if base is not None else self.__dict__["_init_groups"]

    @param_groups.setter
    def param_groups(self, groups: list[dict]) -> None:
        base = self.__dict__.get("base_optimizer")
        if base is not None:
            base.param_groups = groups
        else:  # Optimizer.__init__ building its (discarded) groups
            self.__dict__["_init_groups"] = groups


class SAM(WrappedOptimizer):
    """SAM / ASAM around an existing optimiser (usually SGD with momentum).

    ``state_dict`` is the base optimiser's, so a checkpoint reads the same with or without SAM.
    ``rho = 0`` makes every step exactly a step of the base optimiser.

    Phases: the loop's closure takes no arguments, so a task that treats the two passes differently
    (rwSAM re-weights the ascent loss; BatchNorm statistics should be updated once per step) learns
    the pass from a hook: ``sam.add_phase_hook(task.set_phase)`` is called with ``"ascent"`` before
    the first evaluation, ``"descent"`` before the second and ``"plain"`` after the step.
    """

    #: ``longtail.graphs.GraphStep`` captures both passes and the base optimizer's update (plain SGD) as one graph
    two_pass = True

    def __init__(self, base_optimizer: torch.optim.Optimizer, *, rho: float = 0.05, adaptive: bool = False,
                 eps: float = 1e-12, rho_late: float | None = None, rho_late_epoch: int | None = None,
                 members: int = 1) -> None:
        if rho < 0 or (rho_late is not None and rho_late < 0):
            raise LongtailError(f"SAM rho must be >= 0, got {rho}" + ("" if rho_late is None else f" and {rho_late}"))
        if (rho_late is None) != (rho_late_epoch is None):
            raise LongtailError("SAM's late radius needs both rho_late and rho_late_epoch")
        if members < 1:
            raise LongtailError(f"SAM needs members >= 1, got {members}")
        super().__init__(base_optimizer, {"rho": rho, "adaptive": adaptive})
        self.rho, self.adaptive, self.eps = float(rho), bool(adaptive), float(eps)
        # the networks stacked in the parameters (longtail.stacked: every tensor member-major along dim 0); each gets
        # its own gradient norm, so each member's perturbation is the one its own run would take
        self.members = int(members)
        # rho until epoch rho_late_epoch (0-based), rho_late from it on (DDC's --rho r0 r1; on_epoch_start)
        self.rho_early = self.rho
        self.rho_late = None if rho_late is None else float(rho_late)
        self.rho_late_epoch = rho_late_epoch
        self._phase_hooks: list[Callable[[str], None]] = []

    def rho_at(self, epoch: int) -> float:
        """The radius of epoch ``epoch`` (0-based): ``rho_late`` from ``rho_late_epoch`` on, else ``rho``."""
        if self.rho_late is not None and epoch >= cast(int, self.rho_late_epoch):
            return self.rho_late
        return self.rho_early

    def on_epoch_start(self, epoch: int, steps_per_epoch: int | None = None, epochs: int | None = None) -> None:
        """Epoch ``epoch`` (0-based) starts (``longtail.loop.fit`` calls this): its radius, :meth:`rho_at`."""
        self.rho = self.rho_at(int(epoch))

    def add_phase_hook(self, hook: Callable[[str], None]) -> None:
        """``hook(phase)`` is called with ``"ascent"``, ``"descent"`` and ``"plain"`` during each step."""
        self._phase_hooks.append(hook)

    def _phase(self, phase: str) -> None:
        for hook in self._phase_hooks:
            hook(phase)

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def perturbation(self, rho: float | torch.Tensor | None = None) -> list[torch.Tensor]:
        """``e`` for the current gradients, one tensor per parameter with a gradient. ``rho`` (default
        ``self.rho``) may be a 0-d tensor: ``longtail.graphs.GraphStep`` passes one that a replayed graph reads."""
        params = self._params()
        if not params:
            return []
        grads = [cast(torch.Tensor, p.grad) for p in params]  # _params keeps only those with a gradient
        scaled = [p.abs() * g for p, g in zip(params, grads)] if self.adaptive else grads
        radius = self.rho if rho is None else rho
        if self.members > 1:
            return self._member_perturbation(params, grads, scaled, radius)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s.float()) for s in scaled]))
        # 1/(norm + eps) times rho: what ``rho / tensor`` computes for a float rho, and the same for a tensor one
        scale = (norm + self.eps).reciprocal() * radius
        if self.adaptive:
            return [p * p * g * scale for p, g in zip(params, grads)]
        return [g * scale for g in grads]

    def _member_perturbation(self, params: list[torch.Tensor], grads: list[torch.Tensor], scaled: list[torch.Tensor],
                             radius: float | torch.Tensor) -> list[torch.Tensor]:
        """:meth:`perturbation` with one gradient norm per stacked member: row ``s`` of every tensor seen as
        ``(members, -1)`` is member ``s``'s (``longtail.stacked``'s layouts, concatenated or stacked along dim 0)."""
        m = self.members
        for p in params:
            if p.dim() == 0 or p.shape[0] % m:
                raise LongtailError(f"SAM over {m} stacked members: a parameter of shape {tuple(p.shape)} is not "
                                    "member-major along its first dimension", "train the seeds one after another")
        per_member = torch.stack([torch.linalg.vector_norm(s.float().reshape(m, -1), dim=1) for s in scaled])
        scale = (torch.linalg.vector_norm(per_member, dim=0) + self.eps).reciprocal() * radius  # (members,)

        def by_member(t: torch.Tensor) -> torch.Tensor:
            return (t.reshape(m, -1) * scale.unsqueeze(1)).reshape(t.shape)

        if self.adaptive:
            return [by_member(p * p * g) for p, g in zip(params, grads)]
        return [by_member(g) for g in grads]

    @torch.no_grad()
    def perturb(self, rho: float | torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Move every parameter with a gradient to ``w + e`` (:meth:`perturbation`); returns (params, saved w)."""
        params = self._params()
        saved = [p.detach().clone() for p in params]
        for p, e in zip(params, self.perturbation(rho)):
            p.add_(e)
        return params, saved

    @staticmethod
    @torch.no_grad()
    def restore(params: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
        for p, w in zip(params, saved):
            p.copy_(w)  # exactly w again, not w + e - e

    def two_passes(self, forward_backward: Callable[[], torch.Tensor],
                   rho: float | torch.Tensor | None = None) -> torch.Tensor:
        """SAM's two gradient passes (the phase hooks around them): the loss at ``w``, then the gradients at
        ``w + e`` left in ``.grad`` with the weights back at ``w``; the base optimizer's update is the caller's.
        :meth:`step` and the graphed step (``longtail.graphs.GraphStep``) share it."""
        try:
            self._phase("ascent")
            loss = forward_backward()
            params, saved = self.perturb(rho)
            self._phase("descent")
            forward_backward()
            self.restore(params, saved)
        finally:
            self._phase("plain")
        return loss

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise LongtailError("SAM needs a closure: optimizer.step(closure)",
                                "train through longtail.loop.fit, which passes one")
        loss = self.two_passes(torch.enable_grad()(closure))
        self.base_optimizer.step()
        return loss

    def state_dict(self) -> dict:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)


@contextlib.contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with batch statistics as usual but leave their running statistics alone.

    For SAM's second pass: the running mean and variance would otherwise be updated twice per
    step, once at the perturbed weights.
    """
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training:
            saved.append((m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)  # type: ignore[union-attr]


class FirstPassStatistics:
    """A SAM phase hook: BatchNorm running statistics frozen during the descent pass (updated once per step)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._frozen: contextlib.ExitStack | None = None

    def __call__(self, phase: str) -> None:
        if phase == "descent" and self._frozen is None:
            self._frozen = contextlib.ExitStack()
            self._frozen.enter_context(frozen_bn_statistics(self.model))
        elif phase != "descent" and self._frozen is not None:
            self._frozen.close()
            self._frozen = None


class WeightAverage:
    """An exponential moving average of ``model``'s weights, as USB's ``EMA``: ``ema = d * ema + (1 - d) * w``
    for every trained parameter after each step; buffers and frozen parameters are copied.

    ``averaged`` is a copy of ``model`` (eval mode, no gradients) that holds the average; it starts from the
    weights of ``model`` when :meth:`start` is called (at the first step).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise LongtailError(f"the EMA decay must lie in [0, 1), got {decay}", "use e.g. 0.999")
        self.model, self.decay = model, float(decay)
        self.averaged = copy.deepcopy(model).eval().requires_grad_(False)
        self.started = False
        pairs = list(zip(self.averaged.parameters(), model.parameters()))
        self._mean = [(a, w) for a, w in pairs if w.requires_grad]
        self._copy = [(a, w) for a, w in pairs if not w.requires_grad] + list(zip(self.averaged.buffers(),
                                                                                 model.buffers()))

    @torch.no_grad()
    def start(self) -> None:
        """The average is the model's weights now."""
        self.averaged.load_state_dict(self.model.state_dict())
        self.started = True

    @torch.no_grad()
    def update(self) -> None:
        if not self.started:
            self.start()
        if self._mean:
            avg: list[torch.Tensor] = [a for a, _ in self._mean]
            now = [w.detach() for _, w in self._mean]
            torch._foreach_mul_(avg, self.decay)
            torch._foreach_add_(avg, now, alpha=1.0 - self.decay)
        for a, w in self._copy:
            a.copy_(w)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "weights": self.averaged.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["weights"])
        self.started = True


class Lookahead:
    """airbench94's Lookahead weight averaging (``LookaheadState``, lines 271-280, driven by lines 399-413).

    What airbench does, and this follows: ``ema`` is a copy of every float tensor of the model's state dict
    (parameters, frozen ones included, and BatchNorm's running statistics; the integer ``num_batches_tracked`` is
    left alone), taken at the first step ``k`` (counted from 1 over the run) of epoch ``start_epoch`` or later with
    ``k % every == 0``. At each later such step ``ema.lerp_(w, 1 - rho)`` then ``w.copy_(ema)``, with
    ``rho = decay^every * (k / total_steps)^3`` (airbench: ``decay_base`` 0.95, ``every_n_steps`` 5, ``decay_pow``
    3, ``start_epochs`` 3). After every epoch's last step, once started, the same update with ``rho = 1``:
    ``w <- ema``. So the network leaves each epoch holding the averaged weights.

    Deviations: tensors are matched by name (airbench zips two state dicts in order); "float" is any floating
    dtype (airbench: half and float); ``total_steps`` is the run's ``epochs * steps_per_epoch`` (airbench:
    ``ceil(len(loader) * 9.9)`` with the loader dropping its last partial batch); the decay power is fixed at 3.
    """

    def __init__(self, model: nn.Module, decay: float, *, every: int = 5, start_epoch: int = 3,
                 power: float = 3.0) -> None:
        if not 0.0 <= decay < 1.0:
            raise LongtailError(f"the Lookahead decay must lie in [0, 1), got {decay}", "use e.g. 0.95 (airbench)")
        if every < 1 or start_epoch < 0:
            raise LongtailError(f"Lookahead needs every >= 1 and start_epoch >= 0, got {every} and {start_epoch}")
        self.model, self.decay, self.every, self.start_epoch, self.power = model, float(decay), int(every), \
            int(start_epoch), float(power)
        self.weights: dict[str, torch.Tensor] | None = None  # None: not started

    @property
    def started(self) -> bool:
        return self.weights is not None

    def _floats(self) -> list[tuple[str, torch.Tensor]]:
        return [(k, v) for k, v in self.model.state_dict().items() if v.is_floating_point()]

    @torch.no_grad()
    def start(self) -> None:
        """The average is the model's weights now."""
        self.weights = {k: v.detach().clone() for k, v in self._floats()}

    def rho(self, step: int, total_steps: int) -> float:
        """The decay of the update after step ``step`` (1-based) of ``total_steps``."""
        return self.decay ** self.every * (step / total_steps) ** self.power

    @torch.no_grad()
    def update(self, decay: float) -> None:
        """``ema <- lerp(ema, w, 1 - decay)``, then ``w <- ema``, for every float tensor."""
        assert self.weights is not None
        for k, w in self._floats():
            ema = self.weights[k]
            ema.lerp_(w, 1.0 - decay)
            w.copy_(ema)

    def after_step(self, epoch: int, step: int, total_steps: int) -> None:
        """After step ``step`` (1-based over the run) of epoch ``epoch``: start or update every ``every`` steps."""
        if epoch >= self.start_epoch and step % self.every == 0:
            if self.weights is None:
                self.start()
            else:
                self.update(self.rho(step, total_steps))

    def end_epoch(self) -> None:
        """After an epoch's last step: the weights become the average (decay 1), once started."""
        if self.weights is not None:
            self.update(1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["weights"]
        mine = dict(self._floats())
        if set(saved) != set(mine):
            raise LongtailError("the checkpoint's Lookahead weights do not match this model", RESTART_FIX)
        self.weights = {k: v.detach().clone().to(mine[k]) for k, v in saved.items()}


class RunOptimizer(WrappedOptimizer):
    """``base_optimizer.step`` (SGD or :class:`SAM`; a parameter group with an ``lr_mult`` steps at that multiple
    of the rate the loop set), then MaxNorm's projection of ``head_weight``'s rows, then the EMA's update, then
    :class:`Lookahead`'s. MaxNorm's cap and the EMA's start are taken at the first step, after any pre-trained
    weights were loaded, unless :meth:`load_state_dict` restored them from a checkpoint.

    ``whiten_bias`` / ``whiten_bias_epochs``: that parameter is frozen (``requires_grad`` off) at the start of every
    epoch from ``whiten_bias_epochs`` on (it is never turned back on: a frozen backbone stays frozen). The loop's
    hooks :meth:`on_epoch_start` and :meth:`on_epoch_end` give the epoch and the run's steps."""

    graph_unsupported = ("MaxNorm and the EMA (optim.maxnorm, optim.ema), Lookahead (optim.lookahead), the BatchNorm "
                         "biases' rate (optim.bn_bias_lr_mult) and the whitening bias's freeze "
                         "(optim.whiten_bias_epochs) change the weights or the rates outside SGD's step")

    def __init__(self, base_optimizer: torch.optim.Optimizer, model: nn.Module, *, maxnorm: float | None = None,
                 head_weight: torch.Tensor | None = None, ema: float = 0.0, lookahead: Lookahead | None = None,
                 whiten_bias: torch.Tensor | None = None, whiten_bias_epochs: int | None = None) -> None:
        super().__init__(base_optimizer, {})
        if maxnorm is not None and head_weight is None:
            raise LongtailError("MaxNorm (optim.maxnorm) needs the classifier head's weight", "pass head_weight")
        if whiten_bias_epochs is not None and whiten_bias is None:
            raise LongtailError("optim.whiten_bias_epochs needs the whitening layer's bias", "pass whiten_bias")
        self.thresh, self.head_weight = maxnorm, head_weight
        self.maxnorm: MaxNorm | None = None
        self.ema = WeightAverage(model, ema) if ema > 0 else None
        self.lookahead = lookahead
        self.whiten_bias, self.whiten_bias_epochs = whiten_bias, whiten_bias_epochs
        self.started = False
        # where the run is (on_epoch_start): the epoch, the steps taken over the run, the run's steps
        self.epoch, self.steps, self.total_steps = 0, 0, None  # type: int, int, int | None

    def on_epoch_start(self, epoch: int, steps_per_epoch: int | None = None, epochs: int | None = None) -> None:
        """Epoch ``epoch`` (0-based) of ``epochs`` starts, of ``steps_per_epoch`` steps each (Lookahead's ``k`` and
        ``K``: ``k`` counts on from ``epoch * steps_per_epoch``, so a resumed run counts as an uninterrupted one);
        the whitening bias is frozen from its epoch on; a base optimiser that follows the epoch (SAM's radius,
        :meth:`SAM.on_epoch_start`) hears it too."""
        base_start = getattr(self.base_optimizer, "on_epoch_start", None)
        if base_start is not None:
            base_start(epoch, steps_per_epoch, epochs)
        self.epoch = int(epoch)
        if steps_per_epoch is not None:
            self.steps = self.epoch * int(steps_per_epoch)
            if epochs is not None:
                self.total_steps = int(epochs) * int(steps_per_epoch)
        if self.whiten_bias_epochs is not None and self.epoch >= self.whiten_bias_epochs:
            cast(torch.Tensor, self.whiten_bias).requires_grad_(False)

    def on_epoch_end(self, epoch: int) -> None:
        """After the epoch's last step: Lookahead's decay-1 update (the weights become the average)."""
        if self.lookahead is not None:
            self.lookahead.end_epoch()

    def _start(self) -> None:
        if self.thresh is not None and self.maxnorm is None:
            self.maxnorm = MaxNorm(cast(torch.Tensor, self.head_weight), self.thresh)
        if self.ema is not None and not self.ema.started:
            self.ema.start()
        self.started = True

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        if not self.started:
            self._start()
        scaled = [(g, g["lr"]) for g in self.param_groups if g.get("lr_mult", 1.0) != 1.0]
        for g, lr in scaled:  # the loop sets one rate for every group (longtail.graphs.EagerStep.start_epoch)
            g["lr"] = lr * g["lr_mult"]
        try:
            loss = cast(Any, self.base_optimizer).step(closure)  # SGD or SAM: the closure's loss
        finally:
            for g, lr in scaled:
                g["lr"] = lr
        if self.maxnorm is not None:
            self.maxnorm.project()
        if self.ema is not None:
            self.ema.update()
        self.steps += 1
        if self.lookahead is not None:
            if self.total_steps is None:
                raise LongtailError("Lookahead (optim.lookahead) needs the run's steps: call on_epoch_start(epoch, "
                                    "steps_per_epoch, epochs) before each epoch", "train through longtail.loop.fit")
            self.lookahead.after_step(self.epoch, self.steps, self.total_steps)
        return loss

    def state_dict(self) -> dict:
        state = dict(self.base_optimizer.state_dict())
        if self.maxnorm is not None:
            state["maxnorm"] = self.maxnorm.state_dict()
        if self.ema is not None and self.ema.started:
            state["ema"] = self.ema.state_dict()
        if self.lookahead is not None and self.lookahead.started:
            state["lookahead"] = self.lookahead.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        maxnorm, ema = state.pop("maxnorm", None), state.pop("ema", None)
        lookahead = state.pop("lookahead", None)  # none before the averaging started
        for name, on, saved in (("MaxNorm cap", self.thresh is not None, maxnorm), ("EMA", self.ema, ema)):
            if on and saved is None:
                raise LongtailError(f"the checkpoint holds no {name} to resume this run with", RESTART_FIX)
        self.base_optimizer.load_state_dict(state)
        if self.thresh is not None:
            self.maxnorm = MaxNorm(cast(torch.Tensor, self.head_weight), self.thresh)
            self.maxnorm.load_state_dict(maxnorm)
        if self.ema is not None:
            self.ema.load_state_dict(ema)
        if self.lookahead is not None:
            if lookahead is not None:
                self.lookahead.load_state_dict(lookahead)
            else:
                self.lookahead.weights = None
        self.started = True


def sam_rho(optim: OptimConfig) -> float:
    """``optim.sam_rho``, or the default radius of ``optim.name`` (0.05 for sam, 2.0 for asam)."""
    return float(optim.sam_rho) if optim.sam_rho is not None else SAM_RHO[optim.name]


def optim_settings(cfg: RunConfig) -> list[str]:
    """The ``optim`` settings of ``cfg`` that are on, as ``key=value`` (empty: plain SGD)."""
    o, on = cfg.optim, []
    if o.name != "sgd":
        on.append(f"optim.name={o.name}")
    if o.sam_rho is not None:
        on.append(f"optim.sam_rho={o.sam_rho}")
    if o.sam_rho_late is not None:
        on.append(f"optim.sam_rho_late={o.sam_rho_late}")
        if o.sam_rho_late_start != 160.0:
            on.append(f"optim.sam_rho_late_start={o.sam_rho_late_start}")
    if o.sam_bn_stats != "first":
        on.append(f"optim.sam_bn_stats={o.sam_bn_stats}")
    if o.maxnorm is not None:
        on.append(f"optim.maxnorm={o.maxnorm}")
    if o.ema > 0:
        on.append(f"optim.ema={o.ema}")
    if not o.decay_bn_bias:
        on.append("optim.decay_bn_bias=false")
    if o.lookahead > 0:
        on.append(f"optim.lookahead={o.lookahead}")
    if o.bn_bias_lr_mult != 1.0:
        on.append(f"optim.bn_bias_lr_mult={o.bn_bias_lr_mult}")
    if o.whiten_bias_epochs is not None:
        on.append(f"optim.whiten_bias_epochs={o.whiten_bias_epochs}")
    return on


def check_optim(cfg: RunConfig) -> None:
    """Refuse ``optim`` settings that cannot apply to this run, naming the fix (cheap: builds nothing)."""
    o, t = cfg.optim, cfg.train
    on = optim_settings(cfg)
    if o.sam_rho is not None and o.name == "sgd":
        raise LongtailError("optim.sam_rho is SAM's radius, and optim.name=sgd takes no SAM step",
                            "set optim.name=sam or asam, or leave optim.sam_rho unset")
    if o.name == "sgd" and (o.sam_rho_late is not None or o.sam_bn_stats != "first"):
        key = (f"optim.sam_rho_late={o.sam_rho_late}" if o.sam_rho_late is not None
               else f"optim.sam_bn_stats={o.sam_bn_stats}")
        raise LongtailError(f"{key} sets SAM's steps, and optim.name=sgd takes no SAM step",
                            "set optim.name=sam or asam, or leave optim.sam_rho_late unset and optim.sam_bn_stats "
                            "at first")
    # SAM's settings are graphed (longtail.graphs.GraphStep); the others change weights or rates outside SGD's step
    ungraphed = [s for s in on if not s.startswith(("optim.name=", "optim.sam_"))]
    if ungraphed and t.engine == "graph":
        raise LongtailError(f"train.engine=graph captures SGD (or SAM) steps, not {', '.join(ungraphed)}",
                            "use train.engine=auto (it steps eagerly for these settings) or eager")
    if o.maxnorm is not None and cfg.model.head == "cosine":
        raise LongtailError("MaxNorm (optim.maxnorm) caps the norms of the head's weight rows, which a cosine head "
                            "normalises away", "use model.head=linear, or leave optim.maxnorm unset")
    if o.name != "sgd" and cfg.semi.method == "fixmatch" and cfg.semi.alignment == "da":
        raise LongtailError("SAM's two passes per step would update FixMatch's distribution alignment twice",
                            "use semi.alignment=none or la with SAM, or optim.name=sgd")
    if o.lookahead > 0 and o.ema > 0:
        raise LongtailError(f"optim.lookahead={o.lookahead} and optim.ema={o.ema} both average the weights "
                            "(Lookahead writes its average back into them, the EMA keeps its own copy)",
                            "keep one: --set optim.ema=0 or --set optim.lookahead=0")


def head_weight(model: nn.Module) -> torch.Tensor:
    """The classifier head's weight (one row per class) of a ``longtail.models.Classifier``."""
    weight = getattr(getattr(model, "head", None), "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        raise LongtailError(f"MaxNorm (optim.maxnorm) needs a classifier head with a weight of one row per class; "
                            f"{type(model).__name__} has none", "use a longtail Classifier with a linear head")
    return weight


def batchnorm_biases(model: nn.Module) -> list[nn.Parameter]:
    """The biases (shifts) of every BatchNorm layer of ``model``, each once, in module order."""
    seen: set[int] = set()
    out = []
    for m in model.modules():
        bias = getattr(m, "bias", None)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and isinstance(bias, nn.Parameter) and id(bias) not in seen:
            seen.add(id(bias))
            out.append(bias)
    return out


def make_run_sgd(model: nn.Module, cfg: RunConfig) -> torch.optim.SGD:
    """SGD of ``cfg.train`` over ``model`` (``longtail.loop.make_sgd``, ``optim.decay_bn_bias``); with
    ``optim.bn_bias_lr_mult=m`` != 1 the BatchNorm biases form a last group of their own with ``lr_mult`` m and
    weight decay ``train.weight_decay / m`` (0 with ``optim.decay_bn_bias=false``), as airbench94's ``norm_biases``
    group (lines 356-359: ``lr_biases = lr * bias_scaler``, ``weight_decay = wd / lr_biases`` against ``wd / lr``
    for the rest, so that ``lr * weight_decay`` is the same in both groups). :class:`RunOptimizer` steps that group
    at ``m`` times the rate the loop sets, so the schedule scales both groups alike.

    Deviation: airbench's group is every trained parameter whose name holds ``norm`` (its BatchNorm scales are
    frozen, so: the biases); ours is the bias of every BatchNorm layer, whatever the model, and a BatchNorm scale
    that trains (ResNets) stays with the other parameters."""
    t, o = cfg.train, cfg.optim
    if o.bn_bias_lr_mult == 1.0:
        return make_sgd(model, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.nesterov,
                        decay_bn_bias=o.decay_bn_bias)
    mult = float(o.bn_bias_lr_mult)
    shifts = batchnorm_biases(model)
    if not shifts:
        raise LongtailError(f"optim.bn_bias_lr_mult={o.bn_bias_lr_mult} scales the learning rate of BatchNorm's "
                            f"biases, and {type(model).__name__} (model.arch={cfg.model.arch}) has no BatchNorm layer",
                            "leave optim.bn_bias_lr_mult at 1 for this model")
    ids = {id(p) for p in shifts}
    rest = [p for p in model.parameters() if id(p) not in ids]
    if o.decay_bn_bias:
        groups: list[dict[str, Any]] = [{"params": rest}]
        shift_decay = t.weight_decay / mult
    else:  # as make_sgd: the weights of convolutions and linear layers decay, biases and BatchNorm do not
        groups = [{"params": [p for p in rest if p.dim() > 1]},
                  {"params": [p for p in rest if p.dim() <= 1], "weight_decay": 0.0}]
        shift_decay = 0.0
    groups = [g for g in groups if g["params"]]
    groups.append({"params": shifts, "weight_decay": shift_decay, "lr_mult": mult})
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                           nesterov=t.nesterov and t.momentum > 0)


def whitening_bias(model: nn.Module, cfg: RunConfig) -> torch.Tensor:
    """The bias of ``model``'s patch-whitening layer (a FastNet's), for ``optim.whiten_bias_epochs``."""
    try:
        layer = whitening_layer(model)
    except LongtailError:
        layer = None
    if layer is None or layer.bias is None:
        raise LongtailError(f"optim.whiten_bias_epochs={cfg.optim.whiten_bias_epochs} freezes the bias of FastNet's "
                            f"patch-whitening layer, and {type(model).__name__} (model.arch={cfg.model.arch}) has none",
                            "use a FastNet (e.g. --set model.arch=fastnet-m), or leave optim.whiten_bias_epochs unset "
                            "(none)")
    return layer.bias


def make_optimizer(model: nn.Module, cfg: RunConfig, *, members: int = 1) -> torch.optim.Optimizer:
    """The optimizer of a supervised run of ``cfg``: SGD (``cfg.train``; :func:`make_run_sgd`), wrapped in
    :class:`SAM` for ``optim.name=sam|asam``, and in :class:`RunOptimizer` for ``optim.maxnorm`` / ``optim.ema`` /
    ``optim.lookahead`` / ``optim.bn_bias_lr_mult`` / ``optim.whiten_bias_epochs``. With every ``optim`` setting
    off it is exactly ``torch.optim.SGD`` (``longtail.loop.make_sgd``). ``members``: the seeds stacked in ``model``
    (``longtail.stacked``), each of which SAM perturbs by its own gradient norm."""
    check_optim(cfg)
    o = cfg.optim
    optimizer: torch.optim.Optimizer = make_run_sgd(model, cfg)
    if o.name in SAM_RHO:
        late_epoch = None if o.sam_rho_late is None else scaled_epoch(o.sam_rho_late_start, cfg.train.epochs)
        sam = SAM(optimizer, rho=sam_rho(o), adaptive=o.name == "asam", rho_late=o.sam_rho_late,
                  rho_late_epoch=late_epoch, members=members)
        if o.sam_bn_stats == "first":  # "both": the second pass updates them too, as the first
            sam.add_phase_hook(FirstPassStatistics(model))
        optimizer = sam
    if (o.maxnorm is not None or o.ema > 0 or o.lookahead > 0 or o.bn_bias_lr_mult != 1.0
            or o.whiten_bias_epochs is not None):
        lookahead = (Lookahead(model, o.lookahead, every=o.lookahead_every, start_epoch=o.lookahead_start)
                     if o.lookahead > 0 else None)
        bias = whitening_bias(model, cfg) if o.whiten_bias_epochs is not None else None
        optimizer = RunOptimizer(optimizer, model, maxnorm=o.maxnorm, ema=o.ema, lookahead=lookahead,
                                 head_weight=head_weight(model) if o.maxnorm is not None else None,
                                 whiten_bias=bias, whiten_bias_epochs=o.whiten_bias_epochs)
    return optimizer


def evaluated_model(model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
    """What a run evaluates (validation, test metrics, report): the EMA of ``model``'s weights when
    ``optimizer`` keeps one and has started it, else ``model``."""
    ema = getattr(optimizer, "ema", None)
    return ema.averaged if isinstance(ema, WeightAverage) and ema.started else model


__all__ = ["PHASES", "SAM", "SAM_RHO", "FirstPassStatistics", "Lookahead", "RunOptimizer", "WeightAverage",
           "WrappedOptimizer", "batchnorm_biases", "check_optim", "evaluated_model", "frozen_bn_statistics",
           "head_weight", "make_optimizer", "make_run_sgd", "optim_settings", "sam_rho", "whitening_bias"]
