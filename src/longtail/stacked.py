"""Train several seeds of one configuration at once, as one network, exactly.

``--seeds 0 1 2 3 4`` on one GPU: ResNet-32 on 32x32 images is far too small to fill a modern
GPU, so S sequential runs leave it mostly idle. Here the S members are fused into one network
whose every layer is block-diagonal over the members:

* every ``Conv2d`` ``C_in -> C_out`` (groups ``g``) becomes ``S*C_in -> S*C_out`` with groups
  ``S*g``: member ``s`` owns input channels ``[s*C_in, (s+1)*C_in)`` and output channels
  ``[s*C_out, (s+1)*C_out)`` and never sees another member's channels;
* every ``BatchNorm2d(C)`` becomes ``BatchNorm2d(S*C)``: batch statistics are per channel, so
  per member, and the running statistics update exactly as each member's own would;
* the option-A ``ZeroPadShortcut`` pads each member's channels (:class:`StackedZeroPad`);
* ReLU, pooling and flattening act per channel and are unchanged;
* the head is a batched matmul over ``(S, K, D)`` weights (linear: plus ``(S, K)`` biases;
  cosine: normalised per member), giving logits ``(S, B, K)``.

The input is ``(B, S*C, H, W)``: member ``s``'s images in channels ``[s*C, (s+1)*C)``. The training
loss is the **sum** of the members' own losses, so each member's gradient is exactly its own loss's
gradient; SGD with momentum and weight decay acts element by element, so one optimizer over the
stacked parameters is S independent optimizers. :class:`StackedTask` draws member ``s``'s batches
from ``epoch_generator(seed_s, epoch)`` exactly as the sequential loop would. Each member
therefore follows its sequential run up to floating-point rounding (grouped and single
convolutions sum in different orders), not merely in distribution.

:func:`stack` / :func:`unstack` convert between S ordinary ``Classifier``\\ s and a
:class:`StackedClassifier` bit for bit (weights and BatchNorm buffers), and
:func:`stack_optimizer_state` / :func:`unstack_optimizer_state` do the same for the optimizer
state. :func:`train_stacked` uses them so that every seed ends up in the ordinary run folder
``out/seed-N`` (config.json, metrics.jsonl, checkpoints/last.pt, report) that the sequential
``train_one`` writes; evaluation, reports and decoupling read those folders unchanged.

Resuming: the per-seed checkpoints *are* the stacked run's checkpoints (written every
``checkpoint_every`` epochs, each atomically). A stacked run resumes when every seed folder holds
a checkpoint at the same epoch, whichever mode wrote them, so a run may be interrupted in one
mode and finished in the other.

Supported: backbones built from ``Conv2d``, ``BatchNorm2d``, ``ZeroPadShortcut``, ReLU, pooling and
``Flatten`` inside ``ResNetCifar``/``BasicBlock``/``TinyNet``/``Sequential`` (resnet32, resnet20,
resnet8, tiny), with a linear or cosine head, any loss, sampler and weighting, starting weights
(``train.init_from``, ``model.pretrained``: loaded into every member's backbone), and SAM / ASAM with one gradient
norm per member (``longtail.optim.SAM``'s ``members``; the task counts only the first pass's loss, as SAM's step
returns it). Not supported (a
:class:`~longtail.errors.LongtailError` says so): major feature weakening, mixup / CutMix (``augment.mix``;
RandAugment and Cutout stack, each member drawing its own) and any other task than
:class:`~longtail.tasks.SupervisedTask`, and other layer types; train those seeds sequentially.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .checkpoints import load_model_state, load_pretrained_backbone
from .config import RunConfig
from .devices import use_channels_last
from .driver import Built, Context, Member, Stage, drive
from .errors import LongtailError
from .experiment import build_seed, finish_run, starting_weights, val_scores
from .loop import EpochRecord, epoch_generator, make_sgd
from .models import build_model
from .models.classifier import Classifier, TinyNet
from .models.heads import CosineHead, LinearHead
from .models.resnet_cifar import BasicBlock, ResNetCifar, ZeroPadShortcut
from .optim import make_optimizer, optim_settings
from .runs import EpochLog, RunDir
from .tasks import SupervisedTask, Task

#: the ``optim`` settings a stacked run takes (SAM / ASAM with one gradient norm per member)
SAM_SETTINGS = ("optim.name=sam", "optim.name=asam", "optim.sam_rho", "optim.sam_bn_stats")

__all__ = [
    "StackedBatch",
    "StackedClassifier",
    "StackedCosineHead",
    "StackedLinearHead",
    "StackedTask",
    "StackedZeroPad",
    "check_stackable",
    "stack",
    "stack_images",
    "stack_optimizer_state",
    "stack_unsupported_reason",
    "stacked_resume_problem",
    "train_stacked",
    "unstack",
    "unstack_optimizer_state",
]

_SEQUENTIAL_FIX = "train the seeds one after another instead (--stack-seeds off)"

#: Modules whose own ``forward`` acts on every channel alike, so they work unchanged on stacked channels.
_CONTAINERS: tuple[type[nn.Module], ...] = (nn.Sequential, BasicBlock, ResNetCifar, TinyNet)
_CHANNELWISE: tuple[type[nn.Module], ...] = (nn.ReLU, nn.Identity, nn.AdaptiveAvgPool2d, nn.AvgPool2d,
                                             nn.MaxPool2d, nn.Flatten)

# How a member's tensor sits in the stacked one (per state-dict key):
#   "cat":    concatenated along dim 0 (conv and BatchNorm channels)
#   "stack":  a new leading member dim (head weights)
#   "shared": one value for all members (BatchNorm num_batches_tracked)
_CAT, _STACK, _SHARED = "cat", "stack", "shared"


# --------------------------------------------------------------------------------------------
# stacked layers
# --------------------------------------------------------------------------------------------
class StackedZeroPad(nn.Module):
    """``ZeroPadShortcut`` per member: (B, S*C, H, W) -> (B, S*(C + 2*pad), H/2, W/2)."""

    def __init__(self, pad_channels: int, members: int) -> None:
        super().__init__()
        self.pad_channels, self.members = pad_channels, members

    def forward(self, x: Tensor) -> Tensor:
        p, s = self.pad_channels, self.members
        x = x[:, :, ::2, ::2]
        b, sc, h, w = x.shape
        x = F.pad(x.reshape(b, s, sc // s, h, w), (0, 0, 0, 0, p, p))
        return x.reshape(b, s * (sc // s + 2 * p), h, w)

    def extra_repr(self) -> str:
        return f"pad_channels={self.pad_channels}, members={self.members}"


class StackedLinearHead(nn.Module):
    """S linear heads: features (S, B, D) -> logits (S, B, K) with weight (S, K, D), bias (S, K)."""

    def __init__(self, members: int, in_features: int, num_classes: int, *, bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(members, num_classes, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(members, num_classes, device=device, dtype=dtype)) if bias else None
        self.members, self.in_features, self.out_features = members, in_features, num_classes

    def forward(self, features: Tensor) -> Tensor:
        w = self.weight.transpose(1, 2)  # (S, D, K)
        if self.bias is None:
            return torch.bmm(features, w)
        return torch.baddbmm(self.bias.unsqueeze(1), features, w)

    def extra_repr(self) -> str:
        return f"members={self.members}, in_features={self.in_features}, out_features={self.out_features}"


class StackedCosineHead(nn.Module):
    """S cosine heads (``CosineHead``): ``cos(f, w_c)`` per member, (S, B, D) -> (S, B, K)."""

    def __init__(self, members: int, in_features: int, num_classes: int, *,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(members, num_classes, in_features, device=device, dtype=dtype))
        self.members, self.in_features, self.out_features = members, in_features, num_classes

    def forward(self, features: Tensor) -> Tensor:
        return torch.bmm(F.normalize(features, dim=-1), F.normalize(self.weight, dim=-1).transpose(1, 2))

    def extra_repr(self) -> str:
        return f"members={self.members}, in_features={self.in_features}, out_features={self.out_features}"


class StackedClassifier(nn.Module):
    """S classifiers as one network: images (B, S*C, H, W) -> logits (S, B, K).

    Build it with :func:`stack` and get the members back with :func:`unstack`. ``backbone`` is the
    members' backbone with every layer widened block-diagonally; ``features`` gives (S, B, D).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, members: int, template: Classifier,
                 layouts: dict[str, str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.members = members
        # A weightless copy of a member (on the meta device), kept out of the module tree.
        self._template = (template,)
        self._layouts = dict(layouts)

    @property
    def num_features(self) -> int:
        return int(self.backbone.out_features)  # type: ignore[arg-type]

    def features(self, x: Tensor) -> Tensor:
        f = self.backbone(x)  # (B, S*D), member-major
        return f.reshape(f.shape[0], self.members, -1).transpose(0, 1)  # (S, B, D)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def repeat_input(self, images: Tensor) -> Tensor:
        """The same images for every member: (B, C, H, W) -> (B, S*C, H, W)."""
        return images.repeat(1, self.members, 1, 1)

    def extra_repr(self) -> str:
        return f"members={self.members}"


def stack_images(images: Sequence[Tensor]) -> Tensor:
    """Member batches [(B, C, H, W)] * S -> the stacked input (B, S*C, H, W)."""
    return torch.cat(list(images), dim=1)


# --------------------------------------------------------------------------------------------
# stack / unstack
# --------------------------------------------------------------------------------------------
def _unsupported(what: str) -> LongtailError:
    return LongtailError(f"seeds cannot be trained stacked (as one network): {what}", _SEQUENTIAL_FIX)


def _stack_tree(module: nn.Module, members: int, layouts: dict[str, str], prefix: str) -> None:
    """Replace, in place, every layer of a (copied) member backbone by its stacked version."""
    if type(module) not in _CONTAINERS:
        raise _unsupported(f"{prefix.rstrip('.') or 'the backbone'} is a {type(module).__name__}, whose forward "
                           f"is not known to act on each member's channels separately")
    for name, child in list(module.named_children()):
        key = prefix + name
        kind = type(child)
        new: nn.Module
        if kind is nn.Conv2d and isinstance(child, nn.Conv2d):
            c = child
            # torch types a Conv2d's own sizes as tuple[int, ...], its constructor's as int | tuple[int, int]
            new = nn.Conv2d(members * c.in_channels, members * c.out_channels,
                            c.kernel_size, c.stride, c.padding, c.dilation,  # type: ignore[arg-type]
                            members * c.groups, c.bias is not None, c.padding_mode,
                            device=c.weight.device, dtype=c.weight.dtype)
            layouts[f"{key}.weight"] = _CAT
            if child.bias is not None:
                layouts[f"{key}.bias"] = _CAT
        elif kind is nn.BatchNorm2d and isinstance(child, nn.BatchNorm2d):
            ref = child.weight if child.weight is not None else child.running_mean
            new = nn.BatchNorm2d(members * child.num_features, child.eps, child.momentum, child.affine,
                                 child.track_running_stats,
                                 device=None if ref is None else ref.device, dtype=None if ref is None else ref.dtype)
            for n in ("weight", "bias", "running_mean", "running_var"):
                if getattr(child, n, None) is not None:
                    layouts[f"{key}.{n}"] = _CAT
            if getattr(child, "num_batches_tracked", None) is not None:
                layouts[f"{key}.num_batches_tracked"] = _SHARED
        elif kind is ZeroPadShortcut and isinstance(child, ZeroPadShortcut):
            new = StackedZeroPad(child.pad_channels, members)
        elif kind in _CHANNELWISE:
            if isinstance(child, nn.Flatten) and (child.start_dim, child.end_dim) != (1, -1):
                raise _unsupported(f"{key} flattens dims {child.start_dim}..{child.end_dim}")
            continue
        elif kind in _CONTAINERS:
            _stack_tree(child, members, layouts, key + ".")
            continue
        else:
            raise _unsupported(f"{key} is a {kind.__name__} layer (stackable: Conv2d, BatchNorm2d, "
                               f"ZeroPadShortcut, ReLU, pooling, Flatten)")
        setattr(module, name, new)


def _stack_head(head: nn.Module, members: int, layouts: dict[str, str]) -> nn.Module:
    kind = type(head)
    if kind in (LinearHead, nn.Linear) and isinstance(head, nn.Linear):
        w, bias = head.weight, head.bias is not None
        layouts.update({"head.weight": _STACK, **({"head.bias": _STACK} if bias else {})})
        return StackedLinearHead(members, w.shape[1], w.shape[0], bias=bias, device=w.device, dtype=w.dtype)
    if kind is CosineHead and isinstance(head, CosineHead):
        w = head.weight
        layouts["head.weight"] = _STACK
        return StackedCosineHead(members, w.shape[1], w.shape[0], device=w.device, dtype=w.dtype)
    raise _unsupported(f"the head is a {kind.__name__} (stackable: LinearHead, CosineHead)")


def _stacked_skeleton(model: Classifier, members: int) -> tuple[nn.Module, nn.Module, dict[str, str]]:
    if type(model) is not Classifier:
        raise _unsupported(f"the model is a {type(model).__name__}, not a Classifier(backbone, head)")
    layouts: dict[str, str] = {}
    backbone = copy.deepcopy(model.backbone)
    _stack_tree(backbone, members, layouts, "backbone.")
    head = _stack_head(model.head, members, layouts)
    return backbone, head, layouts


def _combine(layout: str, tensors: list[Tensor], key: str) -> Tensor:
    if layout == _CAT:
        return torch.cat(tensors, 0)
    if layout == _STACK:
        return torch.stack(tensors, 0)
    first = tensors[0]
    if any(not torch.equal(t, first) for t in tensors[1:]):
        raise LongtailError(f"cannot stack: {key} differs between the members ({[t.tolist() for t in tensors]})",
                            "stack models that have taken the same number of training steps")
    return first.clone()


def _member_part(layout: str, stacked: Tensor, s: int, members: int) -> Tensor:
    if layout == _CAT:
        return stacked.reshape(members, stacked.shape[0] // members, *stacked.shape[1:])[s]
    if layout == _STACK:
        return stacked[s]
    return stacked


def stack(models: Sequence[Classifier]) -> StackedClassifier:
    """S ``Classifier``\\ s of one architecture -> one :class:`StackedClassifier` (weights and buffers copied exactly).

    The stacked model is on the members' device, in the first member's train/eval mode.
    """
    models = list(models)
    if not models:
        raise LongtailError("stack() needs at least one model")
    first = models[0]
    backbone, head, layouts = _stacked_skeleton(first, len(models))
    desc = str(first)
    states = [m.state_dict() for m in models]
    for i, (m, sd) in enumerate(zip(models, states)):
        if type(m) is not Classifier or str(m) != desc:
            raise LongtailError(f"cannot stack: model {i} has another architecture than model 0",
                                "stack copies of one architecture (same arch, head, classes and channels)")
        if {k: (v.shape, v.dtype, v.device) for k, v in sd.items()} != \
                {k: (v.shape, v.dtype, v.device) for k, v in states[0].items()}:
            raise LongtailError(f"cannot stack: model {i}'s tensors differ in shape, type or device from model 0's",
                                "stack copies of one architecture on one device")
    buffers = {n for n, _ in first.named_buffers()} | {n for n, _ in first.named_parameters()}
    if buffers != set(states[0]) or set(states[0]) != set(layouts):
        raise _unsupported("the model holds tensors outside its state dict, or tensors of unknown layout")
    template = copy.deepcopy(first).to("meta")
    stacked = StackedClassifier(backbone, head, len(models), template, layouts)
    stacked.load_state_dict({k: _combine(layouts[k], [sd[k] for sd in states], k) for k in states[0]})
    stacked.train(first.training)
    return stacked


def unstack(stacked: StackedClassifier) -> list[Classifier]:
    """The S members as ordinary, independent ``Classifier``\\ s (exact copies), on the stacked model's device."""
    template = stacked._template[0]
    device = next(stacked.parameters()).device
    state = stacked.state_dict()
    out: list[Classifier] = []
    for s in range(stacked.members):
        member = copy.deepcopy(template).to_empty(device=device)
        member.load_state_dict({k: _member_part(stacked._layouts[k], v, s, stacked.members) for k, v in state.items()})
        member.train(stacked.training)
        out.append(member)
    return out


def _param_keys(stacked: StackedClassifier) -> list[str]:
    return [n for n, _ in stacked.named_parameters()]


def _check_single_group(state: dict[str, Any], n_params: int, what: str) -> None:
    groups = state.get("param_groups", [])
    if len(groups) != 1 or list(groups[0]["params"]) != list(range(n_params)):
        raise LongtailError(f"{what}: expected one parameter group over all {n_params} parameters of the model",
                            "build the optimizer with longtail.loop.make_sgd(model, ...)")


def unstack_optimizer_state(stacked: StackedClassifier, state: dict[str, Any]) -> list[dict[str, Any]]:
    """A stacked optimizer's ``state_dict()`` -> one ``state_dict()`` per member (for ``make_sgd(member)``).

    Per-parameter tensors (SGD's momentum buffers) are sliced like the parameters; scalars and
    the hyperparameters are shared. The optimizer must hold one group over ``stacked.parameters()``.
    """
    keys = _param_keys(stacked)
    _check_single_group(state, len(keys), "unstack_optimizer_state")
    shapes = dict((n, p.shape) for n, p in stacked.named_parameters())
    out = []
    for s in range(stacked.members):
        member_state: dict[int, dict[str, Any]] = {}
        for i, per_param in state["state"].items():
            key = keys[int(i)]
            member_state[i] = {
                k: (_member_part(stacked._layouts[key], v, s, stacked.members).clone()
                    if isinstance(v, Tensor) and v.shape == shapes[key] else copy.deepcopy(v))
                for k, v in per_param.items()}
        out.append({"state": member_state, "param_groups": copy.deepcopy(state["param_groups"])})
    return out


def stack_optimizer_state(stacked: StackedClassifier, states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The inverse of :func:`unstack_optimizer_state`: member optimizer ``state_dict()``\\ s -> the stacked one."""
    keys = _param_keys(stacked)
    shapes = dict((n, p.shape) for n, p in stacked.named_parameters())
    states = list(states)
    if len(states) != stacked.members:
        raise LongtailError(f"{len(states)} optimizer states for {stacked.members} stacked members")
    for st in states:
        _check_single_group(st, len(keys), "stack_optimizer_state")
    groups = [{k: v for k, v in st["param_groups"][0].items() if k != "params"} for st in states]
    if any(g != groups[0] for g in groups[1:]):
        raise LongtailError("cannot stack optimizer states with different hyperparameters",
                            "resume seeds that were trained with one configuration to the same epoch")
    indices = set(states[0]["state"])
    if any(set(st["state"]) != indices for st in states[1:]):
        raise LongtailError("cannot stack optimizer states: the members have state for different parameters",
                            "resume seeds that have taken the same number of steps")
    combined: dict[int, dict[str, Any]] = {}
    for i in sorted(indices):
        key = keys[int(i)]
        per = [st["state"][i] for st in states]
        entry: dict[str, Any] = {}
        for k, v in per[0].items():
            vals = [p.get(k) for p in per]
            if isinstance(v, Tensor) and v.dim() > 0:
                entry[k] = _combine(stacked._layouts[key], vals, f"optimizer state {key}.{k}")
                if entry[k].shape != shapes[key]:
                    raise LongtailError(f"optimizer state {key}.{k} does not fit the stacked parameter")
            elif isinstance(v, Tensor):
                entry[k] = _combine(_SHARED, vals, f"optimizer state {key}.{k}")
            else:
                if any(x != v for x in vals[1:]):
                    raise LongtailError(f"cannot stack optimizer state {key}.{k}: it differs between members")
                entry[k] = copy.deepcopy(v)
        combined[i] = entry
    return {"state": combined, "param_groups": copy.deepcopy(states[0]["param_groups"])}


# --------------------------------------------------------------------------------------------
# the task
# --------------------------------------------------------------------------------------------
class StackedBatch(NamedTuple):
    """S member batches as one: images (B, S*C, H, W), member-major channels; labels and index (S, B)."""

    images: Tensor
    labels: Tensor
    index: Tensor  # type: ignore[assignment]  # a field named like tuple.index, which it hides


class StackedTask:
    """S ``SupervisedTask``\\ s (one per seed) as one task for a :class:`StackedClassifier`.

    ``batches(epoch, generator)`` ignores the loop's generator: member ``s`` draws its epoch from
    ``epoch_generator(seeds[s], epoch, generator.device)``, as its sequential run would, so its
    images, augmentation and labels are exactly those of that run. ``loss`` is the sum of the
    members' own losses (each with its own per-class weights of the epoch); the per-member means
    of the epoch so far are :meth:`member_losses`.
    """

    multi_process = False  # several seeds in one process, never under torchrun
    image_files = False  # tensors only

    def __init__(self, members: Sequence[Task], seeds: Sequence[int]) -> None:
        # each is checked below to be a plain SupervisedTask
        self.members, self.seeds = cast(list[SupervisedTask], list(members)), [int(s) for s in seeds]
        if not self.members or len(self.members) != len(self.seeds):
            raise LongtailError(f"StackedTask needs one task per seed, got {len(self.members)} tasks "
                                f"and {len(self.seeds)} seeds")
        for t in self.members:
            if type(t) is not SupervisedTask:
                raise _unsupported(f"the task is a {type(t).__name__}; only a plain SupervisedTask "
                                   "(no major feature weakening) is stackable")
            if t.mix is not None:
                raise _unsupported(f"mixing (augment.mix={t.mix.mode}) is not stackable")
        self._loss_sum: Tensor | None = None  # (S,) on the device, summed in place (a CUDA graph replays the sum)
        self._calls = 0  # counted by batches(): a replayed step runs no Python
        self._phase = "plain"  # SAM's pass (set_phase): the loss of its second pass is not the step's loss

    def to(self, device: torch.device | str) -> "StackedTask":
        self.members = [m.to(device) for m in self.members]
        return self

    @property
    def steps_per_epoch(self) -> int:
        return self.members[0].steps_per_epoch

    def on_epoch_start(self, epoch: int) -> None:
        for m in self.members:
            m.on_epoch_start(epoch)
        if self._loss_sum is not None:
            self._loss_sum.zero_()
        self._calls = 0

    @property
    def graphable(self) -> bool:
        return all(m.graphable for m in self.members)

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[StackedBatch]:
        device = generator.device
        streams = [m.batches(epoch, epoch_generator(seed, epoch, device)) for m, seed in zip(self.members, self.seeds)]
        for parts in zip(*streams, strict=True):
            sizes = {p.labels.shape[0] for p in parts}
            if len(sizes) != 1:
                raise LongtailError(f"the stacked members drew batches of different sizes {sorted(sizes)}",
                                    "every member must use the same data, batch size and number of samples")
            self._calls += 1
            yield StackedBatch(stack_images([p.images for p in parts]), torch.stack([p.labels for p in parts]),
                               torch.stack([p.index for p in parts]))

    def member_loss_terms(self, model: nn.Module, batch: StackedBatch) -> Tensor:
        """(S,) the members' own losses on a stacked batch."""
        logits = model(batch.images)  # (S, B, K)
        return torch.stack([m.criterion(logits[s].float(), batch.labels[s], weight=m.class_weight)
                            for s, m in enumerate(self.members)])

    def set_phase(self, phase: str) -> None:
        """SAM's phase hook (``longtail.optim.SAM.add_phase_hook``): ``ascent``, ``descent`` or ``plain``."""
        self._phase = phase

    def loss(self, model: nn.Module, batch: StackedBatch) -> Tensor:
        losses = self.member_loss_terms(model, batch)
        if self._loss_sum is None:
            self._loss_sum = torch.zeros_like(losses, dtype=torch.float32).detach()
        if self._phase != "descent":  # a step's loss is its first pass's (the loss at w), as SAM's step returns
            self._loss_sum.add_(losses.detach())  # in place, no host sync
        return losses.sum()

    def member_losses(self) -> list[float]:
        """The members' mean training losses over this epoch's ``loss`` calls so far."""
        if self._loss_sum is None or self._calls == 0:
            return [float("nan")] * len(self.members)
        return (self._loss_sum / self._calls).tolist()


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def stack_unsupported_reason(cfg: RunConfig) -> str | None:
    """Why ``cfg`` cannot be trained stacked, or ``None`` when it can (cheap: builds no weights)."""
    if cfg.mfw.strength > 0:
        return "major feature weakening (mfw.strength > 0) mixes features within each batch"
    if getattr(cfg.train, "task", "supervised") != "supervised":
        return f"train.task={cfg.train.task} has its own model (two heads and a projector) and batches"
    if cfg.semi.method != "none" or cfg.data.pseudo_labels:
        return "semi-supervised tasks (semi.method, data.pseudo_labels) are not stackable"
    if cfg.train.freeze_backbone:
        return "a frozen backbone (train.freeze_backbone) is not stackable"
    if cfg.augment.mix != "none":  # RandAugment and Cutout are per member's batches, and stack
        return f"mixing (augment.mix={cfg.augment.mix}) gives each seed a second label per image and a share"
    # SAM / ASAM take one gradient norm per member (longtail.optim.SAM's members); MaxNorm's cap, the EMA, Lookahead
    # and the per-group settings are per run, and the stacked optimizer is one SGD over every seed
    on = [s for s in optim_settings(cfg) if not s.startswith(SAM_SETTINGS)]
    if on:
        return f"{', '.join(on)} are per run, and the stacked optimizer is one SGD (or SAM) over every seed"

    try:
        with torch.device("meta"):
            model = build_model(cfg, 2, 3)
        _stacked_skeleton(model, 2)
    except LongtailError as e:
        return e.problem
    return None


def check_stackable(cfg: RunConfig) -> None:
    """Raise a ``LongtailError`` naming the fix when ``cfg`` cannot be trained stacked."""
    reason = stack_unsupported_reason(cfg)
    if reason is not None:
        problem = reason if reason.startswith("seeds cannot") else f"seeds cannot be trained stacked: {reason}"
        raise LongtailError(problem, _SEQUENTIAL_FIX)


def stacked_resume_problem(out: str | Path, seeds: Sequence[int]) -> str | None:
    """Why the seed folders ``out/seed-N`` cannot be resumed together as one stacked run, or ``None``.

    They can when none holds a checkpoint (a fresh start) or all hold one at the same epoch.
    A caller choosing stacking automatically can fall back to sequential training otherwise.
    """
    runs = [RunDir(Path(out) / f"seed-{s}") for s in seeds]
    epochs = [int(r.resume_state(lambda m: None)["next_epoch"]) if r.has_checkpoint() else None  # type: ignore[index]
              for r in runs]
    return _resume_problem(out, seeds, epochs)


def _resume_problem(out: str | Path, seeds: Sequence[int], epochs: list[int | None]) -> str | None:
    """:func:`stacked_resume_problem` from each seed's checkpointed epoch (None: no checkpoint)."""
    have = [s for s, e in zip(seeds, epochs) if e is not None]
    if not have:
        return None
    if len(have) < len(seeds):
        return (f"only some seed folders under {out} hold a checkpoint (seeds {have} of {list(seeds)}), "
                "so the seeds cannot be resumed together")
    if len(set(epochs)) != 1:  # every seed has a checkpoint here
        at = sorted({e for e in epochs if e is not None})
        return (f"the seed folders under {out} were checkpointed at different epochs {at}, "
                "so the seeds cannot be resumed together")
    return None


def _member_optimizers(stacked: StackedClassifier, optimizer: torch.optim.Optimizer, members: list[Classifier],
                       cfg: RunConfig) -> list[torch.optim.Optimizer]:
    t = cfg.train
    out: list[torch.optim.Optimizer] = []
    for member, state in zip(members, unstack_optimizer_state(stacked, optimizer.state_dict())):
        opt = make_sgd(member, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.nesterov)
        opt.load_state_dict(state)
        out.append(opt)
    return out


def train_stacked(
    cfg: RunConfig,
    seeds: Sequence[int],
    out: str | Path,
    *,
    splits: Any = None,
    command: list[str] | None = None,
    progress: bool | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
    restart: bool = False,
) -> list[dict[str, Any]]:
    """Train ``cfg`` once per seed, all seeds at once as one stacked network, into ``out/seed-N``
    (each seed folder locked while it runs; ``restart`` clears them once settings and data are checked).

    Each seed's run folder is the one ``experiment.train_one(replace(cfg, seed=N), out/seed-N)``
    writes, and its weights equal that run's up to floating-point rounding. Returns one result
    per seed, shaped like ``train_one``'s (test summary + context), or ``{}`` per seed when
    ``stop_after`` ended the run early. Resumes from the seed folders' checkpoints when all of
    them hold one at the same epoch (written by this function or by ``train_one``).
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise LongtailError(f"train_stacked needs distinct seeds, got {seeds}", "pass each seed once")
    check_stackable(cfg)
    return drive(StackedStage(cfg, seeds, Path(out)), splits=splits, command=command, progress=progress,
                 stop_after=stop_after, log=log, restart=restart)


def _copy_into(stacked: StackedClassifier, members: list[Classifier]) -> None:
    """The members' weights and buffers into ``stacked``, in place (the optimizer holds its parameters)."""
    with torch.no_grad():
        for mine, theirs in zip(stacked.state_dict().values(), stack(members).state_dict().values()):
            mine.copy_(theirs)


class StackedStage(Stage):
    """Several seeds of one configuration trained at once as one stacked network; a run folder per seed."""

    def __init__(self, cfg: RunConfig, seeds: list[int], out: Path) -> None:
        self.cfg, self.seeds, self.out = cfg, seeds, out
        self.members = [Member(replace(cfg, seed=s), RunDir(out / f"seed-{s}")) for s in seeds]

    @property
    def seed(self) -> int:
        return self.seeds[0]  # each member draws its batches from its own seed (StackedTask)

    @property
    def images_per_step(self) -> int:
        return self.cfg.train.batch_size * len(self.seeds)  # img/s of all seeds

    def build(self, ctx: Context) -> Built:
        members, tasks = [], []
        for m in self.members:  # exactly as train_one builds each seed's run
            model, member_task = build_seed(m.cfg, ctx.splits, ctx.counts, ctx.device)
            members.append(model)
            tasks.append(member_task)
        stacked = stack(members)
        t = self.cfg.train
        if use_channels_last(t.channels_last):
            stacked = stacked.to(memory_format=torch.channels_last)
        # SGD over every seed, in SAM / ASAM with a gradient norm per member when cfg.optim asks for it
        optimizer = make_optimizer(stacked, self.cfg, members=len(self.seeds))
        task = StackedTask(tasks, self.seeds)
        if hasattr(optimizer, "add_phase_hook"):  # SAM: the task counts the loss of the first pass only
            optimizer.add_phase_hook(task.set_phase)
        c0, h, w = ctx.splits.train.image_shape  # the stacked input: member-major channels
        return Built(stacked, task, optimizer, (len(self.seeds) * c0, h, w))

    def prepare(self, built: Built, ctx: Context, *, resuming: bool) -> None:
        """A fresh run's starting weights (``train.init_from``, ``model.pretrained``) in every member's backbone,
        as each seed's own run loads them."""
        weights = starting_weights(self.cfg)
        if not weights or resuming:  # a resumed run has its own weights
            return
        stacked: StackedClassifier = built.model  # type: ignore[assignment]
        members = unstack(stacked)
        for i, member in enumerate(members):
            load_pretrained_backbone(member, weights, log=ctx.log if i == 0 else None)
        _copy_into(stacked, members)

    def restore(self, built: Built, states: list[dict[str, Any] | None], ctx: Context) -> int:
        epochs = [None if st is None else int(st["next_epoch"]) for st in states]
        problem = _resume_problem(self.out, self.seeds, epochs)
        if problem is not None:
            raise LongtailError(problem, f"{_SEQUENTIAL_FIX}, or pass --restart to start all seeds afresh")
        members = []
        train = ctx.splits.train
        for m, state in zip(self.members, states):
            assert state is not None
            if state.get("optimizer") is None:
                raise LongtailError(f"{m.run.checkpoint} holds no optimizer state to resume from",
                                    "pass --restart to train afresh")
            member = build_model(m.cfg, train.num_classes, train.image_shape[0])
            load_model_state(member, state["model"], str(m.run.checkpoint))
            members.append(member.to(ctx.device))
        stacked: StackedClassifier = built.model  # type: ignore[assignment]
        _copy_into(stacked, members)
        built.optimizer.load_state_dict(stack_optimizer_state(stacked, [st["optimizer"] for st in states]))  # type: ignore[index]
        return int(states[0]["next_epoch"])  # type: ignore[index]

    def end_epoch(self, rec: EpochRecord, built: Built, logs: list[EpochLog], ctx: Context) -> float:
        stacked: StackedClassifier = built.model  # type: ignore[assignment]
        losses = built.task.member_losses()  # type: ignore[attr-defined]
        done = rec.epoch + 1
        models = unstack(stacked) if logs[0].wants_model(done) else None
        optimizers = (_member_optimizers(stacked, built.optimizer, models, self.cfg)
                      if models is not None and logs[0].checkpoints(done) else None)
        for s, log_s in enumerate(logs):
            row = asdict(rec)
            row["train_loss"] = losses[s]  # this seed's own loss (rec.train_loss is the sum over seeds)
            row["stacked_seeds"] = self.seeds  # `seconds` is the time of the stacked epoch (all seeds)
            model = models[s] if models is not None else None
            # no model: this epoch neither validates nor checkpoints (wants_model), so no validate is called
            validate = (None if model is None
                        else functools.partial(val_scores, model, ctx.splits, ctx.counts, ctx.device, self.cfg))
            log_s.end_epoch(row, model, optimizers[s] if optimizers is not None else None, validate=validate)
        return sum(losses) / len(losses)  # the seeds' mean loss

    def report(self, built: Built, ctx: Context, timing: dict[str, float], records: list[list[dict[str, Any]]],
               start_epoch: int) -> list[dict[str, Any]]:
        timing = {**timing, "stacked_train_images_per_s": timing["train_images_per_s"] * len(self.seeds)}
        return [finish_run(m.cfg, m.run, model, ctx.splits, ctx.counts, ctx.device, timing,
                           {"stacked_seeds": self.seeds}, writes=True)
                for m, model in zip(self.members, unstack(built.model))]  # type: ignore[arg-type]

    def stopped(self) -> list[dict[str, Any]]:
        return [{} for _ in self.seeds]
