"""MaxNorm: a cap on the classifier's per-class weight norms, kept by projection.

Alshammari et al. (CVPR 2022, "Long-tailed recognition via weight balancing") train the classifier of
their second stage with projected gradient descent: before the first step the norms ``||w_c||`` of the
per-class weight rows are read once, the cap is ``min + t * (max - min)`` of them (their demo: t = 0.1),
and each row whose norm exceeds the cap is scaled back onto it. Rows below the cap and the bias are left
alone (their ``MaxNorm_via_PGD`` gives one-dimensional parameters an infinite cap). Their released code
projects once after every epoch's training (``utils/trainval.py``, ``pgdFunc.PGD(model)`` after the training
phase), as ``longtail decouple --method wb`` does; ``optim.maxnorm`` (:mod:`longtail.optim`) projects after
every step.

Checked against their ``MaxNorm_via_PGD`` (``setPerLayerThresh`` then ``PGD`` with ``LpNorm=2, tau=1``) on fixed
inputs in tests/test_maxnorm.py.
"""

from __future__ import annotations

import torch


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each row of ``weight`` (one row per class), flattening any trailing dimensions."""
    return torch.linalg.vector_norm(weight.detach().reshape(weight.shape[0], -1), ord=2, dim=1)


class MaxNorm:
    """Projects the rows of ``weight`` (a classifier's ``(classes, features)`` weight) onto norms at most
    ``cap`` after each step; ``cap = min + thresh * (max - min)`` of the row norms when it is made.

    >>> w = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 2.0]])
    >>> m = MaxNorm(w, thresh=0.25)  # norms 5, 1, 2: cap 1 + 0.25 * 4 = 2
    >>> m.project(); w
    tensor([[1.2000, 1.6000],
            [0.0000, 1.0000],
            [0.0000, 2.0000]])
    """

    def __init__(self, weight: torch.Tensor, thresh: float = 0.1) -> None:
        if weight.dim() < 2:
            raise ValueError("MaxNorm takes a weight of one row per class (2 or more dimensions)")
        if not 0.0 <= thresh <= 1.0:
            raise ValueError(f"MaxNorm's thresh must lie in [0, 1], got {thresh}")
        self.weight = weight
        self.thresh = float(thresh)
        norms = row_norms(weight)
        self.cap = float(norms.min() + self.thresh * (norms.max() - norms.min()))

    @torch.no_grad()
    def project(self) -> None:
        """Scale every row whose norm exceeds the cap back onto it, in place."""
        norms = row_norms(self.weight)
        # cap as a tensor: ``float / tensor`` is computed as ``float * tensor.reciprocal()``, one ulp off the true
        # quotient that their ``threshold / norm`` (two tensors) takes (tests/test_maxnorm.py checks bit-equality)
        cap = torch.tensor(self.cap, dtype=norms.dtype, device=norms.device)
        scale = torch.where(norms > cap, cap / norms.clamp_min(1e-12), torch.ones_like(norms))
        self.weight.mul_(scale.reshape(-1, *([1] * (self.weight.dim() - 1))).to(self.weight.dtype))

    def state_dict(self) -> dict[str, float]:
        return {"cap": self.cap, "thresh": self.thresh}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """A resumed run keeps the cap of its start, not one read from the weights it resumes with."""
        self.cap = float(state["cap"])
        self.thresh = float(state["thresh"])
