"""Sharpness-aware minimisation as an optimiser wrapper that the one training loop drives.

SAM (Foret et al., ICLR 2021) minimises ``max_{||e|| <= rho} L(w + e)``. One step, given a
closure that zeroes the gradients, computes the loss and calls ``backward``::

    loss = closure()                      # "ascent" pass: g = grad L(w)
    e = rho * g / ||g||                   # SAM;  ASAM (Kwon et al. 2021): e = rho * |w|^2 g / || |w| g ||
    w <- w + e;  closure()                # "descent" pass: grad L(w + e)
    w <- w (restored exactly);  base_optimizer.step()   with the second gradient

``longtail.loop.fit`` already calls ``optimizer.step(closure)``, so SAM needs no branch there.

Phases: the loop's closure takes no arguments, so a task that treats the two passes differently
(rwSAM re-weights the ascent loss; BatchNorm statistics should be updated once per step) learns
the pass from a hook: ``sam.add_phase_hook(task.set_phase)`` is called with ``"ascent"`` before
the first evaluation, ``"descent"`` before the second and ``"plain"`` after the step.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, cast

import torch
import torch.nn as nn

from ..errors import LongtailError

PHASES = ("plain", "ascent", "descent")


class SAM(torch.optim.Optimizer):
    """SAM / ASAM around an existing optimiser (usually SGD with momentum).

    ``param_groups`` *are* the base optimiser's groups, so learning-rate changes made by the
    loop reach it; ``state_dict`` is the base optimiser's, so a checkpoint reads the same with or
    without SAM. ``rho = 0`` makes every step exactly a step of the base optimiser.
    """

    def __init__(self, base_optimizer: torch.optim.Optimizer, *, rho: float = 0.05, adaptive: bool = False,
                 eps: float = 1e-12) -> None:
        if rho < 0:
            raise LongtailError(f"SAM rho must be >= 0, got {rho}")
        params = [p for group in base_optimizer.param_groups for p in group["params"]]
        super().__init__(params, {"rho": rho, "adaptive": adaptive})
        self.base_optimizer = base_optimizer  # from here on, param_groups are the base optimiser's
        self.rho, self.adaptive, self.eps = float(rho), bool(adaptive), float(eps)
        self._phase_hooks: list[Callable[[str], None]] = []

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

    def add_phase_hook(self, hook: Callable[[str], None]) -> None:
        """``hook(phase)`` is called with ``"ascent"``, ``"descent"`` and ``"plain"`` during each step."""
        self._phase_hooks.append(hook)

    def _phase(self, phase: str) -> None:
        for hook in self._phase_hooks:
            hook(phase)

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def perturbation(self) -> list[torch.Tensor]:
        """``e`` for the current gradients, one tensor per parameter with a gradient."""
        params = self._params()
        if not params:
            return []
        grads = [cast(torch.Tensor, p.grad) for p in params]  # _params keeps only those with a gradient
        scaled = [p.abs() * g for p, g in zip(params, grads)] if self.adaptive else grads
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s.float()) for s in scaled]))
        scale = self.rho / (norm + self.eps)
        if self.adaptive:
            return [p * p * g * scale for p, g in zip(params, grads)]
        return [g * scale for g in grads]

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise LongtailError("SAM needs a closure: optimizer.step(closure)",
                                "train through longtail.loop.fit, which passes one")
        closure = torch.enable_grad()(closure)
        try:
            self._phase("ascent")
            loss = closure()
            params = self._params()
            saved = [p.detach().clone() for p in params]
            for p, e in zip(params, self.perturbation()):
                p.add_(e)
            self._phase("descent")
            closure()
            for p, w in zip(params, saved):
                p.copy_(w)  # exactly w again, not w + e - e
        finally:
            self._phase("plain")
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
