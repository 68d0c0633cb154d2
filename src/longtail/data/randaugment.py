"""RandAugment and Cutout on batches of uint8 image tensors, drawn from an explicit generator.

RandAugment (Cubuk et al., "RandAugment", CVPR-W 2020) applies ``num_ops`` operations, each chosen
uniformly (with replacement) from a pool, to every image. Two sources' policies over the same 14 ops
(AutoContrast, Brightness, Color, Contrast, Equalize, Identity, Posterize, Rotate, Sharpness, ShearX,
ShearY, Solarize, TranslateX, TranslateY):

* ``policy="fixmatch"``: ``RandAugmentMC`` and ``fixmatch_augment_pool`` of kekmodel/FixMatch-pytorch
  (``dataset/randaugment.py``), the FixMatch reproduction most papers on imbalanced SSL build on. Each
  chosen op is applied with probability 0.5 at an integer magnitude ``v`` (out of ``PARAMETER_MAX = 10``):
  ``magnitude`` when given (Cubuk et al.'s fixed M, as kekmodel's ``RandAugmentPC``), else drawn per op as
  ``RandAugmentMC(n, m=10)`` does, ``np.random.randint(1, 10)``, i.e. uniformly from 1..9 (10 is never
  drawn; we keep that). The op's parameter is ``v * max_v / 10 + bias`` (truncated to an
  integer for Posterize, Rotate and Solarize): Brightness, Color, Contrast and Sharpness take the factor
  ``0.09 v + 0.05`` (so at most 0.95: these ops only ever weaken), Posterize ``int(0.4 v) + 4`` bits,
  Rotate ``int(3 v)`` degrees, ShearX/Y ``0.03 v``, TranslateX/Y ``int(0.03 v * side)`` pixels (each of
  these four negated with probability 0.5), Solarize the threshold ``256 - int(25.6 v)``.
  :class:`Cutout` then pastes one grey (127) square of ``int(share * side)`` pixels (FixMatch: 16 of 32).
* ``policy="usb"``: ``RandAugment`` of microsoft/Semi-supervised-learning
  (``semilearn/datasets/augmentation/randaugment.py``): every chosen op is applied, with a parameter
  drawn uniformly from its range: factors in [0.05, 0.95], Posterize ``int(U(4, 8))`` bits, Rotate
  U(-30, 30) degrees, Shear U(-0.3, 0.3), Solarize threshold U(0, 256), Translate U(-0.3, 0.3) of the
  side (fractional pixels). USB ignores the magnitude (``magnitude`` must be None). Its Cutout has a
  random side ``U(0, share) * width`` (USB: share 0.5) and is filled with (125, 123, 114).

``Cutout(share, "devries")`` is DeVries & Taylor's own Cutout as wang22ti/DDC copies it (``utils/autoaug.py``):
one black square of ``2 * (int(share * side) // 2)`` pixels about a uniform pixel, clipped (see :class:`Cutout`);
:mod:`longtail.data.autoaugment` (AutoAugment's CIFAR-10 policy) uses these ops with a ``fill`` (128) outside.

Every op is the PIL operation the sources call (``PIL.ImageOps``, ``PIL.ImageEnhance``,
``Image.rotate``/``Image.transform`` with nearest-neighbour sampling and black fill), re-done on tensors
in the arithmetic Pillow uses: grey is Pillow's ``L = (19595 R + 38470 G + 7471 B + 2^15) >> 16``, blends
are ``trunc(deg + f (img - deg))`` in float32, the contrast grey level is ``int(mean(L) + 0.5)``,
AutoContrast and Equalize build Pillow's look-up tables, sharpening blends with Pillow's SMOOTH filter
(kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 in float32, rounded, border pixels kept), and geometric ops map
each output pixel centre through Pillow's inverse affine matrix in its 16.16 fixed point (rotation about
the image centre, shear about the top-left corner, as PIL does), black (0) outside (``fill``: another grey,
as PIL's ``fillcolor``). On Pillow 13 every op gives the same pixels as PIL image by image
(tests/test_augment_policies.py checks it).

Deviations from the sources (everything else is meant to be the same distribution):

* randomness comes from a ``torch.Generator``, not Python's ``random`` and NumPy: same seed, same images,
  on any device, but not the sources' exact streams;
* images are tensors, (N, C, H, W) uint8 with C = 1 or 3 (Color is the identity on one channel, as PIL's
  on an "L" image), processed in batches: in each op-step the images that drew an op are gathered and
  transformed together, each with its own parameter (one ``nonzero`` per op and step);
* Cutout's square follows kekmodel's ``CutoutAbs``: centre ``U(0, W) x U(0, H)``, top-left corner
  ``int(max(0, centre - v / 2))``, far corner ``min(side, corner + v)``, and PIL's rectangle includes that
  far corner (so the square is ``v + 1`` pixels wide where it is not clipped, 17 for FixMatch's 16); USB's
  ``np.random.uniform(w)`` draws the centre from (1, w) (NumPy's ``low=w, high=1``), which we keep, and its
  fractional corners are truncated as PIL's drawing does; a side of 0 pixels cuts nothing (PIL would
  paint one pixel);
* FixMatch and USB run the policy on the flipped, reflect-padded crop; here it runs after the run's own
  crop (zero padding, ``train.crop_padding``) and flip (:class:`longtail.data.augment.Augment`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ..errors import LongtailError

#: kekmodel's ``PARAMETER_MAX``: magnitudes are out of 10
PARAMETER_MAX = 10
#: the 14 ops of FixMatch's (and USB's) pool, in the sources' order
OPS = ("autocontrast", "brightness", "color", "contrast", "equalize", "identity", "posterize", "rotate", "sharpness",
       "shear_x", "shear_y", "solarize", "translate_x", "translate_y")
POLICIES = ("fixmatch", "usb")
#: Cutout's squares: the two RandAugment policies', and DeVries & Taylor's own (``devries``: black, as DDC's copy)
CUTOUT_POLICIES = (*POLICIES, "devries")
#: Cutout's fill: kekmodel's CutoutAbs (127, 127, 127), USB's (125, 123, 114), DeVries & Taylor's zeros
CUTOUT_FILL = {"fixmatch": (127, 127, 127), "usb": (125, 123, 114), "devries": (0, 0, 0)}


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    # float64 draws on the generator's device (a CPU generator may drive CUDA data), then moved
    return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64).to(device)


def _check(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise LongtailError(f"RandAugment and Cutout take uint8 images (N, C, H, W) with 1 or 3 channels, got "
                            f"{images.dtype} {tuple(images.shape)}", "augment the uint8 images before normalising")


def _coord_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64: its geometric ops are then approximate (a pixel may come from its neighbour)
    return torch.float32 if device.type == "mps" else torch.float64


def _col(t: Tensor) -> Tensor:
    """(n,) -> (n, 1, 1, 1), to broadcast a per-image parameter over (n, C, H, W)."""
    return t.view(-1, 1, 1, 1)


# The ops: (n, C, H, W) uint8 and a (n,) float64 parameter -> (n, C, H, W) uint8 ---------------------------


def grey(images: Tensor) -> Tensor:
    """Pillow's RGB -> L conversion, ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``: (n, 1, H, W) int32."""
    x = images.int()
    if x.shape[1] == 1:
        return x
    return (x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 32768) >> 16


def blend(degenerate: Tensor, images: Tensor, factor: Tensor) -> Tensor:
    """Pillow's ``Image.blend(degenerate, images, factor)``: ``trunc(d + f (x - d))`` in float32, clipped."""
    d = degenerate.float()
    f = _col(factor).float()
    return (d + f * (images.float() - d)).clamp(0, 255).trunc().to(torch.uint8)


def autocontrast(images: Tensor, _: Tensor | None = None) -> Tensor:
    """``ImageOps.autocontrast``: each channel's [min, max] stretched to [0, 255] (``int(x * s + o)``)."""
    x = images.double()
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp_min(1)  # not 255.0 / t: that multiplies by 1 / t
    out = (x * scale + (-lo * scale)).trunc().clamp(0, 255)
    return torch.where(hi > lo, out, x).to(torch.uint8)


def brightness(images: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Brightness``: blend with black."""
    return blend(torch.zeros_like(images), images, factor)


def color(images: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Color``: blend with the grey image (the identity on one channel)."""
    return blend(grey(images).expand_as(images), images, factor)


def contrast(images: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Contrast``: blend with the image's mean grey level, ``int(mean(L) + 0.5)``."""
    g = grey(images)
    mean = (g.sum(dim=(1, 2, 3), dtype=torch.int64).double() / g[0].numel() + 0.5).floor()
    return blend(_col(mean).expand_as(images), images, factor)


def equalize(images: Tensor, _: Tensor | None = None) -> Tensor:
    """``ImageOps.equalize``: Pillow's look-up table from each channel's histogram ``h``:
    ``step = (sum(h) - h[last non-empty]) // 255``, ``lut[i] = (step // 2 + sum(h[:i])) // step``
    (clipped to 255); the identity when one level is used or ``step`` is 0."""
    n, c, hh, ww = images.shape
    flat = images.reshape(n * c, hh * ww).long()
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=images.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    last = hist.gather(1, flat.amax(dim=1, keepdim=True))  # the count of the top level used
    step = (hh * ww - last) // 255  # (n*c, 1)
    before = hist.cumsum(dim=1) - hist  # pixels below each level
    lut = ((step // 2 + before) // step.clamp_min(1)).clamp(max=255)
    keep = ((hist > 0).sum(dim=1, keepdim=True) <= 1) | (step == 0)
    out = torch.where(keep, flat, lut.gather(1, flat))
    return out.to(torch.uint8).view(n, c, hh, ww)


def identity(images: Tensor, _: Tensor | None = None) -> Tensor:
    return images


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    """``ImageOps.posterize``: keep the top ``bits`` bits of every value."""
    shift = _col(8 - bits.long().clamp(1, 8)).int()
    return ((images.int() >> shift) << shift).to(torch.uint8)


def solarize(images: Tensor, threshold: Tensor) -> Tensor:
    """``ImageOps.solarize``: values ``>= threshold`` become ``255 - x``."""
    return torch.where(images.double() < _col(threshold), images, 255 - images)


def sharpness(images: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Sharpness``: blend with Pillow's SMOOTH filter of the image (border pixels unfiltered)."""
    n, c, h, w = images.shape
    if h < 3 or w < 3:
        return images
    x = images.float()
    # Pillow divides its kernel by 13 in float32
    k1, k5 = float(torch.tensor(1.0) / 13), float(torch.tensor(5.0) / 13)
    mid = x[:, :, 1:-1]

    def row(r: Tensor, centre: float) -> Tensor:  # one kernel row over the interior columns, Pillow's order
        return r[..., :-2] * k1 + r[..., 1:-1] * centre + r[..., 2:] * k1

    smooth = row(x[:, :, 2:], k1)  # Pillow adds the row below first, then the row, then the row above
    smooth = smooth + row(mid, k5)
    smooth = smooth + row(x[:, :, :-2], k1)
    degenerate = images.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth.clamp(0, 255).round().to(torch.uint8)
    return blend(degenerate, images, factor)


def affine(images: Tensor, matrix: Tensor, fill: int = 0) -> Tensor:
    """PIL's ``Image.transform(size, AFFINE, (a, b, c, d, e, f), NEAREST)``: output pixel (x, y) takes the input
    pixel at ``floor(a (x + .5) + b (y + .5) + c, d (x + .5) + e (y + .5) + f)``, black outside; ``matrix`` (n, 6).
    ``fill``: the value of every channel outside (PIL's ``fillcolor=(fill,) * C``; 0 is PIL's default black).

    As Pillow's ``ImagingTransformAffine``: a matrix without shear terms (b = d = 0) maps rows and columns
    separately (``ImagingScaleAffine``); any other runs in 16.16 fixed point, each entry rounded to 1/65536
    and the source point accumulated exactly (Pillow does so when every point lies within +-32768 pixels).
    """
    n, c, h, w = images.shape
    dev = images.device
    m = matrix.to(_coord_dtype(dev))
    a, b, cc, d, e, f = (t.view(n, 1, 1) for t in m.unbind(1))
    xs = torch.arange(w, device=dev).view(1, 1, w)
    ys = torch.arange(h, device=dev).view(1, h, 1)
    # ImagingScaleAffine: COORD(c + a (x + .5)), COORD(f + e (y + .5)); COORD is floor for the bounds test
    sx_scale = (cc + a * (xs + 0.5)).floor().long()  # (n, 1, W)
    sy_scale = (f + e * (ys + 0.5)).floor().long()  # (n, H, 1)

    def fix(v: Tensor) -> Tensor:  # Pillow's FIX(v): floor(v * 65536 + 0.5)
        return (v * 65536.0 + 0.5).floor().long()

    # AFFINE_TRANSFORM_FIXED: start at the first pixel centre, add a (d) per column and b (e) per row
    sx_fixed = (fix(cc + b * 0.5 + a * 0.5) + fix(b) * ys + fix(a) * xs) >> 16  # (n, H, W)
    sy_fixed = (fix(f + e * 0.5 + d * 0.5) + fix(e) * ys + fix(d) * xs) >> 16
    scale_only = (b == 0) & (d == 0)
    sx = torch.where(scale_only, sx_scale, sx_fixed)
    sy = torch.where(scale_only, sy_scale, sy_fixed)
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    src = (sy.clamp(0, h - 1) * w + sx.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    out = images.reshape(n, c, h * w).gather(2, src).view(n, c, h, w)
    return torch.where(inside[:, None], out, torch.full_like(out, fill))


def rotate(images: Tensor, degrees: Tensor, fill: int = 0) -> Tensor:
    """``Image.rotate(degrees)``: counter-clockwise about the centre (w/2, h/2), nearest, black corners (``fill``);
    the matrix as Pillow builds it (cos and sin rounded to 15 decimals)."""
    n, _, h, w = images.shape
    angle = -(torch.remainder(degrees.double(), 360.0) * (math.pi / 180.0))
    cos, sin = angle.cos().round(decimals=15), angle.sin().round(decimals=15)
    cx, cy = w / 2.0, h / 2.0
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return affine(images, torch.stack([cos, sin, c, -sin, cos, f], dim=1), fill)


def _matrix(n: int, device: torch.device, **entries: Tensor) -> Tensor:
    m = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64, device=device).repeat(n, 1)
    for k, v in entries.items():
        m[:, "abcdef".index(k)] = v.double()
    return m


def shear_x(images: Tensor, shear: Tensor, fill: int = 0) -> Tensor:
    """``transform(AFFINE, (1, s, 0, 0, 1, 0))``: x' = x + s y, about the top-left corner as PIL does."""
    return affine(images, _matrix(images.shape[0], images.device, b=shear), fill)


def shear_y(images: Tensor, shear: Tensor, fill: int = 0) -> Tensor:
    """``transform(AFFINE, (1, 0, 0, s, 1, 0))``."""
    return affine(images, _matrix(images.shape[0], images.device, d=shear), fill)


def translate_x(images: Tensor, pixels: Tensor, fill: int = 0) -> Tensor:
    """``transform(AFFINE, (1, 0, t, 0, 1, 0))``: the image moves ``t`` pixels to the left."""
    return affine(images, _matrix(images.shape[0], images.device, c=pixels), fill)


def translate_y(images: Tensor, pixels: Tensor, fill: int = 0) -> Tensor:
    """``transform(AFFINE, (1, 0, 0, 0, 1, t))``: the image moves ``t`` pixels up."""
    return affine(images, _matrix(images.shape[0], images.device, f=pixels), fill)


#: each op as a function of (images, parameter)
OP_FUNCTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "autocontrast": autocontrast, "brightness": brightness, "color": color, "contrast": contrast,
    "equalize": equalize, "identity": identity, "posterize": posterize, "rotate": rotate, "sharpness": sharpness,
    "shear_x": shear_x, "shear_y": shear_y, "solarize": solarize, "translate_x": translate_x,
    "translate_y": translate_y}


# Parameters of the two policies -------------------------------------------------------------------------


def fixmatch_parameter(op: str, v: Tensor, sign: Tensor, size: tuple[int, int]) -> Tensor:
    """kekmodel's parameter of ``op`` at integer magnitude ``v`` (n,) (``sign`` (n,) of +-1 for the signed
    ops): ``_float_parameter(v, max_v) + bias`` or ``_int_parameter(v, max_v) + bias``. ``size`` (H, W)."""
    v = v.double()

    def flt(max_v: float) -> Tensor:
        return v * max_v / PARAMETER_MAX

    def int_(max_v: float) -> Tensor:
        return (v * max_v / PARAMETER_MAX).trunc()

    h, w = size
    if op in ("brightness", "color", "contrast", "sharpness"):
        return flt(0.9) + 0.05
    if op == "posterize":
        return int_(4) + 4
    if op == "rotate":
        return int_(30) * sign
    if op in ("shear_x", "shear_y"):
        return flt(0.3) * sign
    if op == "solarize":
        return 256 - int_(256)
    if op == "translate_x":
        return (flt(0.3) * sign * w).trunc()
    if op == "translate_y":
        return (flt(0.3) * sign * h).trunc()
    return v  # no parameter


#: USB's range (min, max) of each op's parameter; Translate's is a share of the side
USB_RANGES = {"autocontrast": (0.0, 1.0), "brightness": (0.05, 0.95), "color": (0.05, 0.95),
              "contrast": (0.05, 0.95), "equalize": (0.0, 1.0), "identity": (0.0, 1.0), "posterize": (4.0, 8.0),
              "rotate": (-30.0, 30.0), "sharpness": (0.05, 0.95), "shear_x": (-0.3, 0.3), "shear_y": (-0.3, 0.3),
              "solarize": (0.0, 256.0), "translate_x": (-0.3, 0.3), "translate_y": (-0.3, 0.3)}


def usb_parameter(op: str, u: Tensor, size: tuple[int, int]) -> Tensor:
    """USB's parameter ``min + (max - min) u`` of ``op`` for ``u`` ~ U(0, 1) (n,); ``size`` (H, W)."""
    lo, hi = USB_RANGES[op]
    val = lo + float(hi - lo) * u.double()
    if op == "posterize":
        return val.trunc().clamp_min(1)
    if op == "translate_x":
        return val * size[1]
    if op == "translate_y":
        return val * size[0]
    return val


class RandAugmentDraw(NamedTuple):
    """The random choices of one call for n images: (n, num_ops) each."""

    op: Tensor  # long, index into OPS
    applied: Tensor  # bool
    parameter: Tensor  # float64, the op's parameter


@dataclass(frozen=True)
class RandAugment:
    """RandAugment of ``policy`` (see the module docstring) on a uint8 (N, C, H, W) batch; Cutout is separate.

    ``num_ops`` ops per image; ``magnitude`` (fixmatch policy): v of 10 for every op, None draws 1..9 per op.
    """

    num_ops: int = 2
    magnitude: int | None = None
    policy: str = "fixmatch"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise LongtailError(f"unknown RandAugment policy {self.policy!r}", f"use one of: {', '.join(POLICIES)}")
        if self.num_ops < 0:
            raise LongtailError(f"RandAugment needs num_ops >= 0, got {self.num_ops}", "FixMatch uses 2, USB 3")
        if self.magnitude is not None:
            if self.policy == "usb":
                raise LongtailError("USB's RandAugment (augment.policy=usb) draws every op's parameter from its "
                                    f"range and takes no magnitude (augment.randaugment_magnitude={self.magnitude})",
                                    "set --set augment.randaugment_magnitude=none, or use augment.policy=fixmatch")
            if not 0 <= self.magnitude <= PARAMETER_MAX:
                raise LongtailError(f"RandAugment magnitude must be 0..{PARAMETER_MAX}, got {self.magnitude}",
                                    "use e.g. 10, or none to draw one per op")

    def draw(self, n: int, size: tuple[int, int], generator: torch.Generator, device: torch.device
             ) -> RandAugmentDraw:
        """The choices for ``n`` images of ``size`` (H, W): always the same draws in the same order."""
        shape = (n, self.num_ops)
        op = torch.randint(len(OPS), shape, generator=generator, device=generator.device).to(device)
        if self.policy == "usb":
            u = _uniform(shape, generator, device)
            applied = torch.ones(shape, dtype=torch.bool, device=device)
            param = torch.zeros(shape, dtype=torch.float64, device=device)
            for j, name in enumerate(OPS):
                param = torch.where(op == j, usb_parameter(name, u, size), param)
            return RandAugmentDraw(op, applied, param)
        if self.magnitude is None:  # kekmodel: np.random.randint(1, 10), i.e. 1..9
            v = torch.randint(1, PARAMETER_MAX, shape, generator=generator, device=generator.device).to(device)
        else:
            v = torch.full(shape, self.magnitude, device=device)
        applied = _uniform(shape, generator, device) < 0.5
        sign = torch.where(_uniform(shape, generator, device) < 0.5, -1.0, 1.0).double()
        param = torch.zeros(shape, dtype=torch.float64, device=device)
        for j, name in enumerate(OPS):
            param = torch.where(op == j, fixmatch_parameter(name, v, sign, size), param)
        return RandAugmentDraw(op, applied, param)

    def apply(self, images: Tensor, draw: RandAugmentDraw) -> Tensor:
        """``images`` with the drawn ops: in op-step k, the images that drew op j are transformed together."""
        out = images.clone()
        for k in range(draw.op.shape[1]):
            for j, name in enumerate(OPS):
                if name == "identity":
                    continue
                rows = ((draw.op[:, k] == j) & draw.applied[:, k]).nonzero().squeeze(1)
                if rows.numel():
                    out[rows] = OP_FUNCTIONS[name](out[rows], draw.parameter[rows, k])
        return out

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        _check(images)
        if self.num_ops == 0 or images.shape[0] == 0:
            return images
        size = (images.shape[2], images.shape[3])
        return self.apply(images, self.draw(images.shape[0], size, generator, images.device))


@dataclass(frozen=True)
class Cutout:
    """One square per image filled with grey, as FixMatch's and USB's RandAugment end (see the module
    docstring): ``policy="fixmatch"`` a side of ``int(share * min(H, W))`` (DeVries & Taylor 2017's Cutout as
    kekmodel's ``CutoutAbs``), ``"usb"`` a side ``U(0, share) * W``.

    ``policy="devries"``: DeVries & Taylor's own Cutout (``Cutout(n_holes=1, length)`` of uoguelph-mlrg/Cutout's
    ``util/cutout.py``, which wang22ti/DDC copies in ``utils/autoaug.py``, lines 7-33), with ``length =
    int(share * min(H, W))`` (DDC: 16 of 32): a centre pixel ``y = randint(H)``, ``x = randint(W)``, the square
    ``[clip(y - length // 2), clip(y + length // 2))`` by the same in x (end exclusive, clipped to the image:
    ``2 * (length // 2)`` pixels wide where not clipped), filled with zeros. Theirs multiplies the ``ToTensor``
    image by a 0/1 mask before ``Normalize``; a 0 here is that 0 once :func:`longtail.data.augment.normalize`
    divides by 255, so the normalised images are the same."""

    share: float = 0.5
    policy: str = "fixmatch"

    def __post_init__(self) -> None:
        if self.policy not in CUTOUT_POLICIES:
            raise LongtailError(f"unknown Cutout policy {self.policy!r}",
                                f"use one of: {', '.join(CUTOUT_POLICIES)}")
        if not 0.0 <= self.share <= 1.0:
            raise LongtailError(f"Cutout's share of the side must be in [0, 1], got {self.share}",
                                "FixMatch cuts out half the side: 0.5")

    def boxes(self, n: int, size: tuple[int, int], generator: torch.Generator, device: torch.device) -> Tensor:
        """(n, 4) long: each square's ``x0, y0, x1, y1``, ``x1``/``y1`` exclusive, clipped to the image."""
        h, w = size
        if self.policy == "devries":  # np.random.randint(h), then np.random.randint(w); np.clip; mask[y1:y2, x1:x2]
            half = int(self.share * min(h, w)) // 2
            cy = torch.randint(h, (n,), generator=generator, device=generator.device).to(device)
            cx = torch.randint(w, (n,), generator=generator, device=generator.device).to(device)
            return torch.stack([(cx - half).clamp(0, w), (cy - half).clamp(0, h), (cx + half).clamp(0, w),
                                (cy + half).clamp(0, h)], dim=1).long()
        if self.policy == "usb":
            side = _uniform((n,), generator, device) * self.share * w  # USB: v = U(0, 0.5) * img.size[0]
            # np.random.uniform(w) is uniform(low=w, high=1.0): a point in (1, w)
            cx = w + (1.0 - w) * _uniform((n,), generator, device)
            cy = h + (1.0 - h) * _uniform((n,), generator, device)
        else:
            side = torch.full((n,), float(int(self.share * min(h, w))), dtype=torch.float64, device=device)
            cx = _uniform((n,), generator, device) * w
            cy = _uniform((n,), generator, device) * h
        x0 = (cx - side / 2).clamp_min(0).trunc()
        y0 = (cy - side / 2).clamp_min(0).trunc()
        x1 = torch.minimum(x0 + side, torch.tensor(float(w), dtype=torch.float64, device=device)).trunc()
        y1 = torch.minimum(y0 + side, torch.tensor(float(h), dtype=torch.float64, device=device)).trunc()
        # PIL's rectangle includes its second corner: one more pixel, clipped to the image
        box = torch.stack([x0, y0, (x1 + 1).clamp(max=w), (y1 + 1).clamp(max=h)], dim=1).long()
        return torch.where((side > 0)[:, None], box, torch.zeros_like(box))  # USB: no square when v <= 0

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        _check(images)
        n, c, h, w = images.shape
        if self.share == 0 or n == 0:
            return images
        box = self.boxes(n, (h, w), generator, images.device)
        cols = torch.arange(w, device=images.device).view(1, 1, w)
        rows = torch.arange(h, device=images.device).view(1, h, 1)
        inside = ((cols >= box[:, 0, None, None]) & (cols < box[:, 2, None, None])
                  & (rows >= box[:, 1, None, None]) & (rows < box[:, 3, None, None]))  # (n, H, W)
        fill = torch.tensor(CUTOUT_FILL[self.policy][:c], dtype=torch.uint8, device=images.device).view(1, c, 1, 1)
        return torch.where(inside[:, None], fill, images)


__all__ = ["CUTOUT_FILL", "CUTOUT_POLICIES", "OPS", "POLICIES", "Cutout", "RandAugment", "RandAugmentDraw",
           "fixmatch_parameter", "usb_parameter"]
