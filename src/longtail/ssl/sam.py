"""Sharpness-aware minimisation for pre-training (rwSAM): the package's one SAM, :class:`longtail.optim.SAM`.

SAM (Foret et al., ICLR 2021) and ASAM (Kwon et al., ICML 2021) live in :mod:`longtail.optim`, where
supervised runs build them from ``optim.name``; pre-training wraps its SGD in the same class (``ssl.sam_rho``,
``ssl.sam_adaptive``) and re-weights the ascent pass through a phase hook (``sam.add_phase_hook(task.set_phase)``).
"""

from __future__ import annotations

from ..optim import PHASES, SAM, frozen_bn_statistics

__all__ = ["PHASES", "SAM", "frozen_bn_statistics"]
