"""Where a run computes, and in what form: the device, bf16 autocast, the model's memory format."""

from __future__ import annotations

import contextlib

import torch

from .errors import LongtailError


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a device. On CUDA, cuDNN picks its fastest kernels for the (fixed) batch
    shapes (``cudnn.benchmark``): results then vary in the last bits from run to run, like any GPU run."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LongtailError("--device cuda was asked for but no CUDA GPU is available", "use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise LongtailError(f"unknown device {name!r}", "use auto, cpu or cuda")
    return torch.device(name)


def autocast_for(device: torch.device, amp: str, *, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; float32 on the CPU, where bf16 measured 10x slower (benchmarks/RESULTS.md).

    ``cache=False`` inside CUDA graph capture (autocast's cast cache must not outlive the capture).
    """
    use = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)


def use_channels_last(setting: str = "auto") -> bool:
    """Whether the model trains in channels-last memory format: ``train.channels_last``.

    ``auto`` is on: on CUDA (bf16 convolutions are made for it; not measured by us yet) and on the
    CPU, where a whole ResNet-32 epoch of CIFAR-10-LT took 94.7 s against 105.8 s contiguous
    (benchmarks/RESULTS.md, 2 cores).
    """
    if setting not in ("auto", "on", "off"):
        raise LongtailError(f"unknown train.channels_last {setting!r}", "use auto, on or off")
    return setting in ("on", "auto")
