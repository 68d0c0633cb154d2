"""AutoAugment's CIFAR-10 policy on batches of uint8 image tensors, drawn from an explicit generator.

AutoAugment (Cubuk et al., "AutoAugment: Learning Augmentation Policies from Data", CVPR 2019) found 25
sub-policies for CIFAR-10, each two ops with a probability and a magnitude of 0..9. This is the policy as
DeepVoltaire/AutoAugment's ``CIFAR10Policy`` implements it, the form most PyTorch code copies; wang22ti/DDC
(at bcae46e, ``utils/autoaug.py``, lines 90-142 and 200-263) copies it as its ``--randaug 1`` augmentation.
Per image (``CIFAR10Policy.__call__``): one sub-policy, ``random.randint(0, 24)``, uniformly; then
(``SubPolicy.__call__``) its first op if ``random.random() < p1``, then its second if ``random.random() < p2``
(each op on the output of the one before). An op's parameter is its magnitude's entry in ``SubPolicy``'s
``ranges`` (10 values, ``np.linspace`` over the op's range), signed by ``random.choice([-1, 1])`` where the
op draws one:

* ShearX/Y: ``transform(AFFINE, (1, s, 0, 0, 1, 0))`` (Y: ``(1, 0, 0, s, 1, 0)``) with ``BICUBIC`` resampling,
  ``s = +-linspace(0, 0.3)``;
* TranslateX/Y: ``transform(AFFINE, (1, 0, t, 0, 1, 0))`` (Y: ``f = t``), nearest, ``t = +-linspace(0, 150 / 331)
  * width`` (height for Y): fractional pixels;
* Rotate: ``linspace(0, 30)`` degrees, **counter-clockwise only** (no sign), nearest; theirs rotates an RGBA
  copy and composites it on grey, which is a rotation whose corners are (128, 128, 128);
* Color, Contrast, Sharpness, Brightness: ``ImageEnhance.X(img).enhance(1 +- linspace(0, 0.9))``: factors in
  [0.1, 1.9], so these strengthen as well as weaken (RandAugment's FixMatch pool only weakens);
* Posterize: ``round(linspace(8, 4))`` bits; Solarize: the threshold ``linspace(256, 0)``;
* AutoContrast, Equalize, Invert: no parameter.

Every transform fills with ``fillcolor=(128, 128, 128)``. The ops are :mod:`longtail.data.randaugment`'s
(Pillow's arithmetic, pixel for pixel), with a fill value, plus Invert and PIL's bicubic affine transform
(:func:`affine_bicubic`); tests/test_autoaugment.py checks each sub-policy against a transcription of
DeepVoltaire's ``SubPolicy`` run with PIL.

Deviations (everything else is meant to be the same distribution):

* randomness comes from a ``torch.Generator``, not Python's ``random``: same seed, same images on any
  device, not the source's stream; every image draws its sub-policy, two uniforms and two signs, whether
  its ops use them or not;
* images are (N, C, H, W) uint8 tensors, C = 1 or 3, processed in batches (the images that drew the same op
  at the same step are transformed together, each with its own parameter); on one channel Color is the
  identity and the fill is 128;
* MPS has no float64: there the geometric ops' coordinates are float32 and a pixel may differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..errors import LongtailError
from . import randaugment as ra
from .randaugment import _check, _coord_dtype, _matrix, _uniform

#: the policies this module has (``augment.autoaugment``; "none" is off)
AUTOAUGMENT_POLICIES = ("cifar10",)
#: the grey of DeepVoltaire's ``fillcolor=(128, 128, 128)`` (and of ``rotate_with_fill``'s (128,) * 4)
FILL = 128

#: ``SubPolicy``'s ``ranges``: each op's parameter at magnitudes 0..9 (the values its ops are given)
RANGES: dict[str, tuple[float, ...]] = {
    "shearX": tuple(np.linspace(0, 0.3, 10).tolist()),
    "shearY": tuple(np.linspace(0, 0.3, 10).tolist()),
    "translateX": tuple(np.linspace(0, 150 / 331, 10).tolist()),
    "translateY": tuple(np.linspace(0, 150 / 331, 10).tolist()),
    "rotate": tuple(np.linspace(0, 30, 10).tolist()),
    "color": tuple(np.linspace(0.0, 0.9, 10).tolist()),
    "posterize": tuple(float(v) for v in np.round(np.linspace(8, 4, 10), 0).astype(np.int32)),
    "solarize": tuple(np.linspace(256, 0, 10).tolist()),
    "contrast": tuple(np.linspace(0.0, 0.9, 10).tolist()),
    "sharpness": tuple(np.linspace(0.0, 0.9, 10).tolist()),
    "brightness": tuple(np.linspace(0.0, 0.9, 10).tolist()),
    "autocontrast": (0.0,) * 10,
    "equalize": (0.0,) * 10,
    "invert": (0.0,) * 10,
}
#: the ops, in ``SubPolicy``'s order
OPS = tuple(RANGES)
#: the ops whose parameter is signed by ``random.choice([-1, 1])``
SIGNED = ("shearX", "shearY", "translateX", "translateY", "color", "contrast", "sharpness", "brightness")

#: ``CIFAR10Policy``'s 25 sub-policies, in its order: (p1, op1, magnitude1, p2, op2, magnitude2)
CIFAR10_POLICY: tuple[tuple[float, str, int, float, str, int], ...] = (
    (0.1, "invert", 7, 0.2, "contrast", 6),
    (0.7, "rotate", 2, 0.3, "translateX", 9),
    (0.8, "sharpness", 1, 0.9, "sharpness", 3),
    (0.5, "shearY", 8, 0.7, "translateY", 9),
    (0.5, "autocontrast", 8, 0.9, "equalize", 2),

    (0.2, "shearY", 7, 0.3, "posterize", 7),
    (0.4, "color", 3, 0.6, "brightness", 7),
    (0.3, "sharpness", 9, 0.7, "brightness", 9),
    (0.6, "equalize", 5, 0.5, "equalize", 1),
    (0.6, "contrast", 7, 0.6, "sharpness", 5),

    (0.7, "color", 7, 0.5, "translateX", 8),
    (0.3, "equalize", 7, 0.4, "autocontrast", 8),
    (0.4, "translateY", 3, 0.2, "sharpness", 6),
    (0.9, "brightness", 6, 0.2, "color", 8),
    (0.5, "solarize", 2, 0.0, "invert", 3),

    (0.2, "equalize", 0, 0.6, "autocontrast", 0),
    (0.2, "equalize", 8, 0.6, "equalize", 4),
    (0.9, "color", 9, 0.6, "equalize", 6),
    (0.8, "autocontrast", 4, 0.2, "solarize", 8),
    (0.1, "brightness", 3, 0.7, "color", 0),

    (0.4, "solarize", 5, 0.9, "autocontrast", 3),
    (0.9, "translateY", 9, 0.7, "translateY", 9),
    (0.9, "autocontrast", 2, 0.8, "solarize", 3),
    (0.8, "equalize", 8, 0.1, "invert", 3),
    (0.7, "translateY", 9, 0.9, "autocontrast", 1),
)
POLICY_TABLES = {"cifar10": CIFAR10_POLICY}


def invert(images: Tensor, _: Tensor | None = None) -> Tensor:
    """``ImageOps.invert``: ``255 - x``."""
    return 255 - images


def affine_bicubic(images: Tensor, matrix: Tensor, fill: int = 0) -> Tensor:
    """PIL's ``Image.transform(size, AFFINE, (a, b, c, d, e, f), BICUBIC, fillcolor=(fill,) * C)``; ``matrix`` (n, 6).

    As Pillow's ``ImagingGenericTransform`` with ``bicubic_filter32RGB`` (``libImaging/Geometry.c``): output pixel
    (x, y) samples the input at ``u = a (x + .5) + b (y + .5) + c``, ``v = d (x + .5) + e (y + .5) + f`` (float64);
    outside ``[0, W) x [0, H)`` it keeps the fill. Inside, ``u - .5`` and ``v - .5`` are split into an integer
    ``i`` and a fraction ``t``, and the 4 x 4 pixels from ``i - 1`` to ``i + 2`` (clamped to the image) are
    interpolated along each row, then down the column, by Pillow's cubic
    ``p1 + t (p2 + t (p3 + t p4))`` with ``p1 = v1``, ``p2 = v2 - v0``, ``p3 = 2 (v0 - v1) + v2 - v3``,
    ``p4 = -v0 + v1 - v2 + v3`` (a = -1), in float64 and in Pillow's order of operations; the result is
    truncated to an integer and clipped to [0, 255].
    """
    n, c, h, w = images.shape
    dev = images.device
    dt = _coord_dtype(dev)
    a, b, cc, d, e, f = (t.view(n, 1, 1) for t in matrix.to(dt).unbind(1))
    xs = (torch.arange(w, device=dev, dtype=dt) + 0.5).view(1, 1, w)
    ys = (torch.arange(h, device=dev, dtype=dt) + 0.5).view(1, h, 1)
    u = a * xs + b * ys + cc  # affine_transform: a0 * xin + a1 * yin + a2
    v = d * xs + e * ys + f
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)  # (n, H, W)
    u, v = u - 0.5, v - 0.5
    ui, vi = u.floor(), v.floor()
    tx, ty = (u - ui)[:, None], (v - vi)[:, None]  # (n, 1, H, W)
    ui, vi = ui.long() - 1, vi.long() - 1
    flat = images.reshape(n, c, h * w)

    def cubic(v0: Tensor, v1: Tensor, v2: Tensor, v3: Tensor, t: Tensor) -> Tensor:  # Pillow's BICUBIC macro
        p1 = v1
        p2 = -v0 + v2
        p3 = 2 * (v0 - v1) + v2 - v3
        p4 = -v0 + v1 - v2 + v3
        return p1 + t * (p2 + t * (p3 + t * p4))

    cols = [(ui + k).clamp(0, w - 1) for k in range(4)]
    rows = []
    for j in range(4):
        r = (vi + j).clamp(0, h - 1) * w
        taps = [flat.gather(2, (r + col).view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w).to(dt)
                for col in cols]
        rows.append(cubic(taps[0], taps[1], taps[2], taps[3], tx))
    out = cubic(rows[0], rows[1], rows[2], rows[3], ty).clamp(0, 255).trunc().to(torch.uint8)
    return torch.where(inside[:, None], out, torch.full_like(out, fill))


def _shear_x(images: Tensor, shear: Tensor) -> Tensor:
    return affine_bicubic(images, _matrix(images.shape[0], images.device, b=shear), FILL)


def _shear_y(images: Tensor, shear: Tensor) -> Tensor:
    return affine_bicubic(images, _matrix(images.shape[0], images.device, d=shear), FILL)


#: each op as a function of (images, parameter), DeepVoltaire's ``func``
OP_FUNCTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "shearX": _shear_x, "shearY": _shear_y,
    "translateX": lambda x, t: ra.translate_x(x, t, FILL), "translateY": lambda x, t: ra.translate_y(x, t, FILL),
    "rotate": lambda x, deg: ra.rotate(x, deg, FILL), "color": ra.color, "posterize": ra.posterize,
    "solarize": ra.solarize, "contrast": ra.contrast, "sharpness": ra.sharpness, "brightness": ra.brightness,
    "autocontrast": ra.autocontrast, "equalize": ra.equalize, "invert": invert}


def parameter(op: str, magnitude: Tensor, sign: Tensor, size: tuple[int, int]) -> Tensor:
    """DeepVoltaire's argument to ``op``'s PIL call for ``magnitude`` (n,) (its ``ranges`` value, float64) and
    ``sign`` (n,) of +-1 (used by the :data:`SIGNED` ops only); ``size`` (H, W)."""
    m = magnitude.double()
    if op in ("shearX", "shearY"):
        return m * sign
    if op == "translateX":
        return m * size[1] * sign  # magnitude * img.size[0] * random.choice([-1, 1])
    if op == "translateY":
        return m * size[0] * sign
    if op in ("color", "contrast", "sharpness", "brightness"):
        return 1 + m * sign  # enhance(1 + magnitude * random.choice([-1, 1]))
    return m  # rotate (unsigned), posterize, solarize; none for the rest


class AutoAugmentDraw(NamedTuple):
    """The random choices of one call for n images."""

    policy: Tensor  # (n,) long: the sub-policy
    uniform: Tensor  # (n, 2) float64: op k is applied when uniform[:, k] < its probability
    sign: Tensor  # (n, 2) float64 of +-1: op k's sign, where it takes one


@dataclass(frozen=True)
class AutoAugment:
    """AutoAugment's ``policy`` (``cifar10``: DeepVoltaire's ``CIFAR10Policy``) on a uint8 (N, C, H, W) batch."""

    policy: str = "cifar10"

    def __post_init__(self) -> None:
        if self.policy not in AUTOAUGMENT_POLICIES:
            raise LongtailError(f"unknown AutoAugment policy {self.policy!r}",
                                f"use one of: {', '.join(AUTOAUGMENT_POLICIES)}")

    @property
    def table(self) -> tuple[tuple[float, str, int, float, str, int], ...]:
        return POLICY_TABLES[self.policy]

    def draw(self, n: int, generator: torch.Generator, device: torch.device) -> AutoAugmentDraw:
        """The choices for ``n`` images: always the same draws in the same order."""
        policy = torch.randint(len(self.table), (n,), generator=generator, device=generator.device).to(device)
        uniform = _uniform((n, 2), generator, device)
        sign = torch.where(_uniform((n, 2), generator, device) < 0.5, -1.0, 1.0).double()
        return AutoAugmentDraw(policy, uniform, sign)

    def apply(self, images: Tensor, draw: AutoAugmentDraw) -> Tensor:
        """``images`` with the drawn sub-policies: at step k the images whose op k is the same op and applied
        are transformed together, each at its sub-policy's magnitude and its own sign."""
        dev = images.device
        size = (images.shape[2], images.shape[3])
        table = self.table
        prob = torch.tensor([[p[0], p[3]] for p in table], dtype=torch.float64, device=dev)
        op = torch.tensor([[OPS.index(p[1]), OPS.index(p[4])] for p in table], device=dev)
        mag = torch.tensor([[RANGES[p[1]][p[2]], RANGES[p[4]][p[5]]] for p in table], dtype=torch.float64, device=dev)
        applied = draw.uniform < prob[draw.policy]  # (n, 2): random.random() < p
        ops, mags = op[draw.policy], mag[draw.policy]
        out = images.clone()
        for k in range(2):
            for j, name in enumerate(OPS):
                rows = ((ops[:, k] == j) & applied[:, k]).nonzero().squeeze(1)
                if rows.numel():
                    param = parameter(name, mags[rows, k], draw.sign[rows, k], size)
                    out[rows] = OP_FUNCTIONS[name](out[rows], param)
        return out

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        _check(images)
        if images.shape[0] == 0:
            return images
        return self.apply(images, self.draw(images.shape[0], generator, images.device))


__all__ = ["AUTOAUGMENT_POLICIES", "CIFAR10_POLICY", "FILL", "OPS", "OP_FUNCTIONS", "RANGES", "SIGNED", "AutoAugment",
           "AutoAugmentDraw", "affine_bicubic", "invert", "parameter"]
