"""MoCo v2 / SimSiam augmentations as batched tensor operations on the device.

The torchvision pipeline of MoCo v2 (Chen et al. 2020) and SimSiam (Chen & He 2021), per image::

    RandomResizedCrop(size, scale=(0.2, 1)), RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8),
    RandomGrayscale(p=0.2), RandomApply(GaussianBlur(sigma 0.1..2), p=0.5) [large images only],
    RandomHorizontalFlip(), Normalize(mean, std)

Here every step takes a whole (B, C, H, W) batch and one explicit ``torch.Generator``; nothing
leaves the device. Differences from torchvision, all deliberate and small:

* the crop: scale ``s ~ U(min_scale, 1)`` of the area and log-aspect ``~ U(log 3/4, log 4/3)``
  are drawn once and the sides clamped to the image (torchvision re-draws up to 10 times);
  crop, resize and flip are one ``grid_sample`` (bilinear) with a per-image affine map. With
  ``interpolation="bicubic"`` (the linear probe of Liu et al. 2022) the box is rounded to whole pixels
  and resampled with PIL's bicubic kernel (:func:`bicubic_resample`), as torchvision does to PIL images.
* colour jitter applies brightness, contrast, saturation, hue in that fixed order (torchvision
  shuffles the order per call); factors are drawn for every image, applied where a coin says so.
* one-channel images skip saturation, hue and grayscale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import SSLConfig

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def _uniform(lo: float, hi: float, shape: tuple[int, ...], generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    # Draw on the generator's device (a CPU generator may drive CUDA data), then move.
    u = torch.rand(shape, generator=generator, device=generator.device).to(device)
    return lo + (hi - lo) * u


def _coin(p: float, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return _uniform(0.0, 1.0, (n,), generator, device) < p


#: PIL's bicubic coefficient (``Resample.c``, ``bicubic_filter``); torch's bicubic (``grid_sample``,
#: ``interpolate`` without antialias) uses -0.75
PIL_BICUBIC_A = -0.5
#: the fractional bits of PIL's fixed-point weights for 8-bit images (``Resample.c``, ``PRECISION_BITS``)
PIL_PRECISION_BITS = 32 - 8 - 2
#: the resampling of :func:`random_resized_crop`
INTERPOLATIONS = ("bilinear", "bicubic")


def _cubic(d: torch.Tensor, a: float = PIL_BICUBIC_A) -> torch.Tensor:
    """Keys' cubic convolution kernel of coefficient ``a``, support (-2, 2), in ``bicubic_filter``'s order of
    operations."""
    d = d.abs()
    near = ((a + 2.0) * d - (a + 3.0)) * d * d + 1
    far = (((d - 5) * d + 8) * d - 4) * a
    return torch.where(d < 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def bicubic_weights(lo: torch.Tensor, hi: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """(B, out_size, in_size) float64 weights resampling the pixels ``lo .. hi - 1`` (whole pixels) of a side of
    ``in_size`` pixels to ``out_size`` pixels: PIL's ``precompute_coeffs`` with its bicubic kernel (in double
    precision, as PIL), per image (``lo``, ``hi``: (B,)), as PIL resizes the crop ``lo .. hi``.

    In the box's coordinates output pixel ``o`` is centred at ``c = (o + 0.5) (hi - lo) / out_size``; box pixel
    ``t`` weighs ``cubic((t - c + 0.5) / f)``, ``f = max(1, (hi - lo) / out_size)`` (PIL's antialias when
    shrinking), pixels outside the box nothing, and the weights of each output pixel are normalised to sum 1:
    at the box's edges the kernel is cut off, not padded.
    """
    dev = lo.device
    lo, hi = lo.double(), hi.double()
    scale = (hi - lo) / out_size  # (B,)
    inv_filterscale = 1.0 / scale.clamp(min=1.0)
    center = (torch.arange(out_size, device=dev, dtype=torch.float64) + 0.5)[None] * scale[:, None]  # (B, out)
    t = torch.arange(in_size, device=dev, dtype=torch.float64)[None, None] - lo[:, None, None]  # (B, 1, in)
    w = _cubic((t - center[:, :, None] + 0.5) * inv_filterscale[:, None, None])
    inside = (t >= 0) & (t < (hi - lo)[:, None, None])
    w = torch.where(inside, w, torch.zeros_like(w))
    total = w.sum(dim=2, keepdim=True)
    return w / torch.where(total != 0, total, torch.ones_like(total))


def _fixed_point(w: torch.Tensor) -> torch.Tensor:
    """PIL's ``normalize_coeffs_8bpc``: weights as integers of ``PIL_PRECISION_BITS`` fractional bits, rounded half
    away from zero (held in float64, where they and the sums below are exact)."""
    scaled = w.double() * (1 << PIL_PRECISION_BITS)
    return scaled.sign() * (scaled.abs() + 0.5).floor()


def _pil_pass(acc: torch.Tensor) -> torch.Tensor:
    """PIL's ``clip8`` of a fixed-point sum plus one half: the 8-bit value, rounded half up and clamped to 0..255."""
    return ((acc + (1 << (PIL_PRECISION_BITS - 1))) / (1 << PIL_PRECISION_BITS)).floor().clamp(0, 255)


def bicubic_resample(x: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor) -> torch.Tensor:
    """8-bit images / 255, (B, C, H, W) in [0, 1] -> (B, C, out_h, out_w), as PIL resizes 8-bit images: rows by
    ``wx`` (B, out_w, W), then columns by ``wy`` (B, out_h, H) (:func:`bicubic_weights`), each pass with PIL's
    fixed-point weights and integer sums (exact in float64), rounded and clamped to 0..255 as PIL's ``clip8``; the
    result / 255 in ``x``'s dtype. On the enlargements of the probe (crops of 0.8-1 to 32 px, 32 to 36 px) this
    gave Pillow's bytes exactly in the tests. What may still differ: the normalising sum of the weights is added in
    another order than PIL's loop (a last-bit difference, which shows only where a weight falls on a half unit of its
    22 fractional bits), and the order of the passes: rows first, as Pillow has always done (so in Liu et al.'s
    runs); Pillow 13 runs the columns first in some shrinking resizes, where results can then differ by a few
    levels."""
    levels = (x.double() * 255).round()
    y = _pil_pass(torch.einsum("bchw,bpw->bchp", levels, _fixed_point(wx)))
    out = _pil_pass(torch.einsum("boh,bchp->bcop", _fixed_point(wy), y))
    return out.to(x.dtype) / 255


def random_resized_crop(x: torch.Tensor, generator: torch.Generator, *, min_scale: float = 0.2,
                        flip: bool = True, size: tuple[int, int] | None = None,
                        interpolation: str = "bilinear") -> torch.Tensor:
    """Crop a random region of each image and resize it to ``size``; mirror half of them.

    ``x``: (B, C, H, W) float. The region has area fraction ``s ~ U(min_scale, 1)`` and aspect
    ratio ``r`` with ``log r ~ U(log 3/4, log 4/3)``; as fractions of the sides its width is
    ``sqrt(s r)`` and its height ``sqrt(s / r)`` (clamped to 1), its centre uniform where it fits.

    ``interpolation``: ``bilinear``, one ``grid_sample`` over the region as drawn (border pixels repeated);
    ``bicubic``, torchvision's ``RandomResizedCrop(interpolation=BICUBIC)`` on PIL images: the sides are rounded to
    whole pixels (at least 1), the offset is uniform over the whole-pixel positions where the box fits (as
    ``torch.randint``), the box is resampled with PIL's kernel (:func:`bicubic_weights`, coefficient -0.5, the kernel
    cut off at the box's edges; ``x``: 8-bit images / 255, resampled as PIL resamples them,
    :func:`bicubic_resample`) and the mirror is applied after. The same draws from ``generator`` in the same
    order either way.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    b, _, h, w = x.shape
    out_h, out_w = size or (h, w)
    dev = x.device
    s = _uniform(min_scale, 1.0, (b,), generator, dev)
    log_r = _uniform(math.log(3 / 4), math.log(4 / 3), (b,), generator, dev)
    # For non-square images the area fraction is the product of the side fractions, as here.
    fw = (s * log_r.exp()).sqrt().clamp(max=1.0)
    fh = (s / log_r.exp()).sqrt().clamp(max=1.0)
    ux = _uniform(-1.0, 1.0, (b,), generator, dev)
    uy = _uniform(-1.0, 1.0, (b,), generator, dev)
    mirror = _coin(0.5, b, generator, dev) if flip else torch.zeros(b, dtype=torch.bool, device=dev)
    if interpolation == "bicubic":
        bw = (fw * w).round().clamp(1, w)
        bh = (fh * h).round().clamp(1, h)
        left = torch.minimum(((ux + 1) / 2 * (w - bw + 1)).floor(), w - bw)
        top = torch.minimum(((uy + 1) / 2 * (h - bh + 1)).floor(), h - bh)
        out = bicubic_resample(x, bicubic_weights(top, top + bh, h, out_h), bicubic_weights(left, left + bw, w, out_w))
        return torch.where(mirror.view(b, 1, 1, 1), out.flip(-1), out)
    cx = ux * (1 - fw)  # centre in [-1, 1] coordinates
    cy = uy * (1 - fh)
    sign = torch.where(mirror, -1.0, 1.0) if flip else torch.ones(b, device=dev)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = fw * sign  # a negative x scale mirrors the output
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = fh
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [b, x.shape[1], out_h, out_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resize_center_crop(x: torch.Tensor, resize: int, crop: tuple[int, int] | None = None) -> torch.Tensor:
    """torchvision's ``Resize(resize, interpolation=BICUBIC)`` then ``CenterCrop(crop)`` of PIL images, on a float
    batch (B, C, H, W) in [0, 1]: the shorter side resized to ``resize`` (the longer to ``int(resize * long / short)``)
    with PIL's bicubic kernel (:func:`bicubic_resample`), then the centre ``crop`` (default: the input's size; offset
    ``int(round((new - crop) / 2))``). Only the kept rows and columns are computed."""
    b, _, h, w = x.shape
    crop_h, crop_w = crop or (h, w)
    short, long = min(h, w), max(h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_h, new_w = (new_short, new_long) if h <= w else (new_long, new_short)
    if crop_h > new_h or crop_w > new_w:
        raise ValueError(f"a centre crop of {crop_h}x{crop_w} does not fit the images resized to {new_h}x{new_w}")
    top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
    zero = torch.zeros(1, device=x.device)
    wy = bicubic_weights(zero, zero + h, h, new_h)[:, top:top + crop_h].expand(b, -1, -1)
    wx = bicubic_weights(zero, zero + w, w, new_w)[:, left:left + crop_w].expand(b, -1, -1)
    return bicubic_resample(x, wy, wx)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def rgb_to_hsv(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV with every channel in [0, 1]."""
    r, g, b = x.unbind(1)
    maxc, argmax = x.max(dim=1)
    minc = x.min(dim=1).values
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(eps), torch.zeros_like(maxc))
    d = delta.clamp_min(eps)
    h = torch.where(argmax == 0, (g - b) / d, torch.where(argmax == 1, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = x.unbind(1)
    h6 = (h % 1.0) * 6.0
    i = h6.floor()
    f = h6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sector = i.long() % 6  # (B, H, W)
    r = torch.stack([v, q, p, p, t, v], dim=1).gather(1, sector[:, None]).squeeze(1)
    g = torch.stack([t, v, v, q, p, p], dim=1).gather(1, sector[:, None]).squeeze(1)
    b = torch.stack([p, p, t, v, v, q], dim=1).gather(1, sector[:, None]).squeeze(1)
    return torch.stack([r, g, b], dim=1)


def color_jitter(x: torch.Tensor, generator: torch.Generator, *, brightness: float, contrast: float,
                 saturation: float, hue: float, p: float) -> torch.Tensor:
    """torchvision's ``RandomApply(ColorJitter(...), p)`` on a batch in [0, 1], fixed order."""
    n, c = x.shape[:2]
    dev = x.device

    def factor(strength: float) -> torch.Tensor:
        return _uniform(max(0.0, 1 - strength), 1 + strength, (n,), generator, dev).view(n, 1, 1, 1)

    apply = _coin(p, n, generator, dev).view(n, 1, 1, 1)
    fb, fc, fs = factor(brightness), factor(contrast), factor(saturation)
    fh = _uniform(-hue, hue, (n,), generator, dev).view(n, 1, 1)
    y = (x * fb).clamp(0, 1)
    gray = grayscale(y) if c == 3 else y
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    y = (fc * y + (1 - fc) * mean).clamp(0, 1)
    if c == 3:
        y = (fs * y + (1 - fs) * grayscale(y)).clamp(0, 1)
        if hue > 0:
            hsv = rgb_to_hsv(y)
            hsv = torch.stack([(hsv[:, 0] + fh) % 1.0, hsv[:, 1], hsv[:, 2]], dim=1)
            y = hsv_to_rgb(hsv).clamp(0, 1)
    return torch.where(apply, y, x)


def random_grayscale(x: torch.Tensor, generator: torch.Generator, p: float) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    apply = _coin(p, x.shape[0], generator, x.device).view(-1, 1, 1, 1)
    return torch.where(apply, grayscale(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, generator: torch.Generator, p: float,
                  sigma: tuple[float, float] = (0.1, 2.0)) -> torch.Tensor:
    """MoCo v2's blur: with probability ``p`` a Gaussian of ``sigma ~ U(0.1, 2)`` (pixels), kernel ~10 % of the side."""
    n, c, h, w = x.shape
    dev = x.device
    apply = _coin(p, n, generator, dev).view(n, 1, 1, 1)
    sig = _uniform(sigma[0], sigma[1], (n,), generator, dev)
    k = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)  # odd
    pos = torch.arange(k, device=dev, dtype=x.dtype) - k // 2
    kernel = torch.exp(-pos[None] ** 2 / (2 * sig[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, k)
    weight = kernel.repeat_interleave(c, dim=0)  # (B*C, k): one depth-wise filter per image channel
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), weight.view(n * c, 1, 1, k), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), weight.view(n * c, 1, k, 1), groups=n * c)
    return torch.where(apply, y.view(n, c, h, w), x)


_DEFAULTS = SSLConfig()  # one source of the defaults: the configuration's


@dataclass(frozen=True)
class TwoViewAugment:
    """One random view of a uint8 batch; call twice for the two views of MoCo and SimSiam. The defaults are
    ``SSLConfig``'s (:meth:`from_config` builds one from a run's settings and image size)."""

    min_scale: float = _DEFAULTS.crop_min_scale
    jitter_prob: float = _DEFAULTS.jitter_prob
    brightness: float = _DEFAULTS.brightness
    contrast: float = _DEFAULTS.contrast
    saturation: float = _DEFAULTS.saturation
    hue: float = _DEFAULTS.hue
    grayscale_prob: float = _DEFAULTS.grayscale_prob
    blur_prob: float = 0.0  # SSLConfig's None: 0 below 64 px
    flip: bool = True

    @classmethod
    def from_config(cls, ssl: SSLConfig, image_size: int) -> "TwoViewAugment":
        blur = ssl.blur_prob if ssl.blur_prob is not None else (0.5 if image_size >= 64 else 0.0)
        return cls(ssl.crop_min_scale, ssl.jitter_prob, ssl.brightness, ssl.contrast, ssl.saturation, ssl.hue,
                   ssl.grayscale_prob, blur)

    def __call__(self, images: torch.Tensor, generator: torch.Generator, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float32 (B, C, H, W)."""
        x = images.float() / 255.0
        x = random_resized_crop(x, generator, min_scale=self.min_scale, flip=self.flip)
        if self.jitter_prob > 0:
            x = color_jitter(x, generator, brightness=self.brightness, contrast=self.contrast,
                             saturation=self.saturation, hue=self.hue, p=self.jitter_prob)
        if self.grayscale_prob > 0:
            x = random_grayscale(x, generator, self.grayscale_prob)
        if self.blur_prob > 0:
            x = gaussian_blur(x, generator, self.blur_prob)
        m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s
