"""FastNet: a small, fast VGG-style backbone for small images, in the manner of Keller Jordan's airbench.

The network (any ``C x H x W`` input; CIFAR's 3x32x32 shown)::

    whitening conv, 2x2 patches, 2*C*4 filters, no padding   32 -> 31   frozen weight (patch whitening)
    GELU
    stage 1: conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU      31 -> 15
    stage 2: the same                                                         15 -> 7
    stage 3: the same                                                         7 -> 3
    global max pool, times ``scale`` (1/9)   -> features (B, widths[2])

* The first layer's weight is frozen. :func:`init_whitening` sets it from training images: the
  eigenvectors of the covariance of the images' 2x2 patches, each scaled by ``1/sqrt(eigenvalue + eps)``,
  once with each sign (so that the GELU after it keeps both halves of every direction). Its bias is set
  to centre the outputs on those images and stays trainable. Without that call the layer holds the
  same construction for an identity covariance (+-1 on each pixel of the patch): the network trains,
  only more slowly.
* BatchNorm layers have a frozen scale (weight fixed at 1, only the shift is trained), a tiny eps and a
  fast running-statistics momentum (airbench's choices).
* The 3x3 convolutions start as identities on their first channels (Dirac init), an implicit residual.
* Pooling is skipped where a feature map is already 1 pixel wide, so tiny images (8x8 digits) work.
* The features are multiplied by ``scale`` before the head (airbench multiplies its logits by 1/9; with
  the project's heads behind a fixed seam, scaling the features is the same for a bias-free linear head
  and does not change a cosine head).

Widths by name (:data:`FASTNET_WIDTHS`): ``fastnet-s`` 16/64/64 (0.13M parameters with a 10-class head),
``fastnet-sm`` 24/96/128 (0.37M; the 5-minute recipes' network: 20-25 s an epoch against FastNet-M's 31 s on 2
CPU cores, benchmarks/NOTES.md), ``fastnet-m`` 32/128/128 (0.50M), ``fastnet-l`` and ``fastnet`` 64/256/256
(airbench's).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LongtailError

#: registry name -> widths of the three stages
FASTNET_WIDTHS: dict[str, tuple[int, int, int]] = {
    "fastnet": (64, 256, 256),
    "fastnet-s": (16, 64, 64),
    "fastnet-sm": (24, 96, 128),
    "fastnet-m": (32, 128, 128),
    "fastnet-l": (64, 256, 256),
}

WHITEN_EPS = 5e-4  # added to the patch covariance's eigenvalues (inputs normalised to about unit variance)
WHITEN_MAX_IMAGES = 5000  # images the patch covariance is estimated from (evenly spaced over the set)


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale is fixed at 1 (``weight.requires_grad`` is False): only the shift trains."""

    def __init__(self, num_features: int, *, eps: float = 1e-12, momentum: float = 0.4) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


def _conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():  # identity on the first min(c_in, c_out) channels: an implicit residual
        nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2) if min(x.shape[-2:]) >= 2 else x


class ConvStage(nn.Module):
    """conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out)
        self.norm1 = FrozenScaleBatchNorm(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.norm2 = FrozenScaleBatchNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(_pool(self.conv1(x))))
        return F.gelu(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    """The backbone: (B, C, H, W) normalised images -> (B, widths[2]) features. See the module docstring."""

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (64, 256, 256), *, patch: int = 2,
                 scale: float = 1 / 9) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise LongtailError(f"FastNet needs three positive stage widths, got {widths}", "e.g. (16, 64, 64)")
        self.widths, self.patch, self.scale = widths, int(patch), float(scale)
        d = in_channels * patch * patch
        self.whiten = nn.Conv2d(in_channels, 2 * d, patch, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self._identity_whitening()
        self.stages = nn.Sequential(ConvStage(2 * d, widths[0]), ConvStage(widths[0], widths[1]),
                                    ConvStage(widths[1], widths[2]))
        self.out_features = widths[2]

    def _identity_whitening(self) -> None:
        w = self.whiten.weight
        eye = torch.eye(w.shape[1] * self.patch * self.patch).reshape(-1, *w.shape[1:])
        with torch.no_grad():
            w.copy_(torch.cat([eye, -eye]) / (1.0 + WHITEN_EPS) ** 0.5)
            self.whiten.bias.zero_()  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(F.gelu(self.whiten(x)))
        return x.amax(dim=(2, 3)) * self.scale

    def init_from_data(self, images: torch.Tensor, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None, **kw: float) -> "FastNet":
        """Set the frozen first layer by patch whitening on ``images``; see :func:`init_whitening`."""
        init_whitening(self, images, mean=mean, std=std, **kw)  # type: ignore[arg-type]
        return self


def whitening_layer(target: nn.Module) -> nn.Conv2d:
    """The patch-whitening convolution of a FastNet, of a ``Classifier`` around one, or the layer itself."""
    if isinstance(target, nn.Conv2d):
        return target
    for m in (target, getattr(target, "backbone", None)):
        if isinstance(m, FastNet):
            return m.whiten
    raise LongtailError(f"{type(target).__name__} has no patch-whitening layer", "use a fastnet model")


def _as_input(images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """What the network sees: float images as given (already normalised); uint8 images scaled to 0..1 and
    normalised with ``mean``/``std``, or per channel by their own statistics when those are not given."""
    if images.dtype == torch.uint8:
        x = images.float() / 255.0
        if mean is None or std is None:
            m = x.mean(dim=(0, 2, 3), keepdim=True)
            s = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        else:
            m = torch.tensor(tuple(mean), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            s = torch.tensor(tuple(std), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s
    return images.float()


def patch_statistics(images: torch.Tensor, patch: int, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and covariance (D, D) in float64 of all ``patch x patch`` patches (stride 1) of float
    images (N, C, H, W); D = C * patch * patch, in the layout of a convolution's weight (C, kh, kw).
    (Small chunks, patches as columns: 5,000 CIFAR images take about a second on a CPU core.)"""
    d = images.shape[1] * patch * patch
    total = torch.zeros(d, dtype=torch.float64, device=images.device)
    outer = torch.zeros(d, d, dtype=torch.float64, device=images.device)
    n = 0
    for start in range(0, images.shape[0], chunk):
        p = F.unfold(images[start:start + chunk].float(), patch)  # (B, D, L)
        p = p.transpose(0, 1).reshape(d, -1).double()  # (D, B * L)
        total += p.sum(1)
        outer += p @ p.T
        n += p.shape[1]
    if n < 2:
        raise LongtailError("patch whitening needs at least two patches", "pass more (or larger) images")
    mean = total / n
    return mean, (outer - n * torch.outer(mean, mean)) / (n - 1)


@torch.no_grad()
def init_whitening(target: nn.Module, images: torch.Tensor, *, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, eps: float = WHITEN_EPS,
                   max_images: int = WHITEN_MAX_IMAGES) -> nn.Conv2d:
    """Initialise a FastNet's frozen first layer by patch whitening; returns the layer.

    ``target``: a ``Classifier`` with a FastNet backbone, the FastNet, or its whitening ``nn.Conv2d``.
    ``images``: (N, C, H, W) training images, uint8 (normalised here with ``mean``/``std``: pass the data
    set's, ``ImageSet.mean`` / ``ImageSet.std``, the constants its batches are normalised with) or float
    (taken as already normalised, as the network will see them). At most ``max_images`` evenly spaced
    images are used (a few thousand suffice: the layer has only 2 * C * 4 filters).

    With E the eigenvectors and L the eigenvalues of the covariance of the images' patches, the weight
    holds the rows ``E^T / sqrt(L + eps)`` and their negatives, and the bias ``-W mu`` (``mu`` the patch
    mean), so that on these images each half of the outputs has zero mean and covariance
    ``diag(L / (L + eps))``, about the identity. Deterministic: no random draws.

    For long-tailed data the statistics come from the long-tailed training set, which is mostly
    head-class images; that is what a run passes (its training images), and it is the only data a run
    may look at. The weight is frozen; the bias remains trainable as the module's setting has it.
    """
    layer = whitening_layer(target)
    k = layer.kernel_size[0]
    if images.ndim != 4 or images.shape[1] != layer.in_channels:
        raise LongtailError(f"patch whitening needs (N, {layer.in_channels}, H, W) images, got {tuple(images.shape)}")
    if layer.out_channels != 2 * layer.in_channels * k * k:
        raise LongtailError("the whitening layer needs 2 * C * k * k filters (both signs of each direction)")
    n = images.shape[0]
    if n > max_images:
        images = images[torch.linspace(0, n - 1, max_images, device=images.device).round().long()]
    x = _as_input(images, mean, std)
    mu, cov = patch_statistics(x, k)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0).clamp_min(0), eigenvectors.flip(1)  # strongest first
    w = eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]  # (D, D): row i = i-th direction, whitened
    w = torch.cat([w, -w])
    bias = -(w @ mu)
    layer.weight.copy_(w.reshape(layer.weight.shape).to(layer.weight))
    layer.bias.copy_(bias.to(layer.bias))  # type: ignore[union-attr]
    layer.weight.requires_grad_(False)
    return layer


def fastnet_backbone(name: str):
    """The registry's constructor ``in_channels -> FastNet`` of a named width set."""
    widths = FASTNET_WIDTHS[name]
    return lambda c: FastNet(c, widths)


#: model.tta: no test-time augmentation; the mean over each image and its mirror (:class:`FlipTTA`); airbench94's
#: flip + translate (:class:`FlipTranslateTTA`)
TTA_MODES = ("none", "flip", "flip-translate")


class FlipTTA(nn.Module):
    """Test-time augmentation by horizontal flips: ``(model(x) + model(x.flip(3))) / 2``.

    A wrapper for evaluation (``longtail.loop.predict(FlipTTA(model), ...)``); it holds no parameters of
    its own, so the wrapped model's state dict is unchanged. It suits data trained with flips (the seed
    flips SVHN too, so the SVHN recipes use it); leave it off where mirrored images change the class.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.model(x) + self.model(x.flip(3)))


class FlipTranslateTTA(nn.Module):
    """airbench94's test-time augmentation level 2 (``infer_mirror_translate``, ``tta_level=2``), for any classifier
    of (B, C, H, W) images::

        mirror(v) = 0.5 * model(v) + 0.5 * model(v.flip(3))          # the mean logits of a view and its mirror
        p = reflect-pad(x, 1 pixel on each side)                       # (B, C, H + 2, W + 2)
        out = 0.5 * mirror(x) + 0.5 * mean(mirror(p[:, :, :H, :W]), mirror(p[:, :, 2:, 2:]))

    six forward passes per image: the image, the image shifted one pixel down-right and one pixel up-left (the
    border filled by reflection), each with its mirror, weighted 1/4, 1/8, 1/8 and the same for the mirrors.

    Followed, from ``airbench94.py`` (KellerJordan/cifar10-airbench 01a2367, lines 463-476): logits are
    averaged, not probabilities; ``F.pad(..., 'reflect')`` by one pixel; the two crops ``[0:32, 0:32]`` and
    ``[2:34, 2:34]`` (here ``[:H, :W]`` and ``[2:, 2:]``, any size); the weights 0.5 and 0.5 and the plain mean of
    the two shifted views. Deviations: none in the arithmetic (airbench evaluates its half-precision network; we
    evaluate as ``longtail.loop.predict`` does, float32 on the CPU, bf16 autocast on CUDA). Like :class:`FlipTTA`
    it holds no parameters of its own. Images need at least 2 pixels on each side (reflection by one pixel).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def _mirror(self, v: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.model(v) + 0.5 * self.model(v.flip(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if min(h, w) < 2:
            raise LongtailError(f"model.tta=flip-translate reflects images by one pixel and needs at least 2x2, got "
                                f"{h}x{w}", "use model.tta=flip or none for these images")
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = torch.stack([self._mirror(padded[:, :, :h, :w]), self._mirror(padded[:, :, 2:, 2:])]).mean(0)
        return 0.5 * self._mirror(x) + 0.5 * shifted


def tta_model(model: nn.Module, mode: str) -> nn.Module:
    """``model`` wrapped for evaluation with the test-time augmentation ``mode`` (``model.tta``, :data:`TTA_MODES`)."""
    if mode == "none":
        return model
    if mode == "flip":
        return FlipTTA(model)
    if mode == "flip-translate":
        return FlipTranslateTTA(model)
    raise LongtailError(f"unknown model.tta {mode!r}", f"use one of: {', '.join(TTA_MODES)}")
