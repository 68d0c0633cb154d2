"""RandAugment, Cutout (longtail.data.randaugment), mixup and CutMix (longtail.data.mix), and how runs use them.

Each RandAugment op is checked against the PIL call that FixMatch's and USB's code make, image by image,
with **zero tolerance**: the module re-does Pillow's arithmetic (integer grey, float32 blends truncated,
Pillow's look-up tables, its SMOOTH filter rounded, its 16.16 fixed-point affine sampling), so on the
Pillow that torchvision installs every pixel agrees. A Pillow that changed its arithmetic would show here first.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from longtail import LongtailError
from longtail import config as config_module
from longtail.config import AugmentConfig, DataConfig, MFWConfig, ModelConfig, RunConfig, SemiConfig, TrainConfig
from longtail.data import randaugment as ra
from longtail.data.augment import Augment, Batch, iterate_batches, normalize
from longtail.data.mix import MIXES, Mix, MixedBatch, cutmix, mixed_loss, mixup, sample_beta
from longtail.data.pools import hide_labels
from longtail.data.semi import SemiSplits
from longtail.experiment import augment_from_config, build_task
from longtail.graphs import GraphStep
from longtail.loop import fit, make_sgd
from longtail.losses import LOSSES, make_loss
from longtail.models import make_model
from longtail.semi.fixmatch import FixMatchTask, strong_augment
from longtail.semi.task import cycled_draw
from longtail.stacked import stack_unsupported_reason
from longtail.tasks import SupervisedTask

from conftest import synthetic_set

CPU = torch.device("cpu")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sample_images(n: int = 4, c: int = 3, h: int = 32, w: int = 32) -> torch.Tensor:
    """Noise, its blur (smooth regions, narrow histograms) and a darkened blur: every op has work to do."""
    noise = torch.randint(0, 256, (n, c, h, w), generator=gen(0), dtype=torch.uint8)
    blur = F.avg_pool2d(noise.float(), 5, 1, 2).round().to(torch.uint8)
    return torch.cat([noise, blur, (blur // 2 + 60).to(torch.uint8)])


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x[0].numpy()) if x.shape[0] == 1 else Image.fromarray(x.permute(1, 2, 0).numpy())


def from_pil(im: Image.Image) -> torch.Tensor:
    a = torch.from_numpy(np.array(im))
    return a[None] if a.ndim == 2 else a.permute(2, 0, 1)


def pil_op(name: str, im: Image.Image, p: float) -> Image.Image:
    """The PIL call of kekmodel's / USB's op with its (already mapped) parameter ``p``."""
    affine = {"shear_x": (1, p, 0, 0, 1, 0), "shear_y": (1, 0, 0, p, 1, 0), "translate_x": (1, 0, p, 0, 1, 0),
              "translate_y": (1, 0, 0, 0, 1, p)}
    if name in affine:
        return im.transform(im.size, Image.AFFINE, affine[name])
    enhance = {"brightness": ImageEnhance.Brightness, "color": ImageEnhance.Color,
               "contrast": ImageEnhance.Contrast, "sharpness": ImageEnhance.Sharpness}
    if name in enhance:
        return enhance[name](im).enhance(p)
    return {"autocontrast": lambda: ImageOps.autocontrast(im), "equalize": lambda: ImageOps.equalize(im),
            "identity": lambda: im, "posterize": lambda: ImageOps.posterize(im, int(p)),
            "solarize": lambda: ImageOps.solarize(im, p), "rotate": lambda: im.rotate(p)}[name]()


# RandAugment's ops against PIL -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ra.OPS)
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 20, 27)], ids=["rgb32", "grey20x27"])
def test_each_op_equals_pil_image_by_image(name, shape):
    c, h, w = shape
    images = sample_images(2, c, h, w)
    n = images.shape[0]
    sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).double()
    params = [ra.fixmatch_parameter(name, torch.full((n,), v), sign, (h, w)) for v in range(PARAMETER_RANGE)]
    params += [ra.usb_parameter(name, torch.rand(n, dtype=torch.float64, generator=gen(k)), (h, w)) for k in range(4)]
    for param in params:
        out = ra.OP_FUNCTIONS[name](images, param)
        assert out.dtype == torch.uint8 and out.shape == images.shape
        for i in range(n):
            expected = from_pil(pil_op(name, to_pil(images[i]), float(param[i])))
            assert torch.equal(out[i], expected), f"{name} at parameter {float(param[i])}, image {i}"


PARAMETER_RANGE = ra.PARAMETER_MAX + 1  # magnitudes 0..10


def test_fixmatch_parameters_are_kekmodels():
    v = torch.arange(1, 10)
    one = torch.ones(9, dtype=torch.float64)
    # _float_parameter(v, max_v) + bias and _int_parameter(v, max_v) + bias of fixmatch_augment_pool
    assert ra.fixmatch_parameter("brightness", v, one, (32, 32)).tolist() == [i * 0.9 / 10 + 0.05 for i in range(1, 10)]
    assert ra.fixmatch_parameter("posterize", v, one, (32, 32)).tolist() == [int(i * 4 / 10) + 4 for i in range(1, 10)]
    assert ra.fixmatch_parameter("rotate", v, -one, (32, 32)).tolist() == [-int(i * 30 / 10) for i in range(1, 10)]
    assert ra.fixmatch_parameter("solarize", v, one, (32, 32)).tolist() == [256 - int(i * 256 / 10)
                                                                             for i in range(1, 10)]
    assert ra.fixmatch_parameter("translate_x", v, -one, (32, 24)).tolist() == [int(-(i * 0.3 / 10) * 24)
                                                                                 for i in range(1, 10)]
    assert ra.fixmatch_parameter("shear_y", v, one, (32, 32)).tolist() == [i * 0.3 / 10 for i in range(1, 10)]


def test_randaugment_applies_each_images_own_ops_in_order():
    images = sample_images(3)
    for policy, magnitude in (("fixmatch", None), ("fixmatch", 7), ("usb", None)):
        aug = ra.RandAugment(num_ops=3, magnitude=magnitude, policy=policy)
        draw = aug.draw(images.shape[0], (32, 32), gen(1), CPU)
        out = aug.apply(images, draw)
        for i in range(images.shape[0]):
            im = to_pil(images[i])
            for k in range(3):
                if draw.applied[i, k]:
                    im = pil_op(ra.OPS[int(draw.op[i, k])], im, float(draw.parameter[i, k]))
            assert torch.equal(out[i], from_pil(im)), (policy, i)
        if policy == "usb":
            assert draw.applied.all()
        elif magnitude is None:
            assert 0.2 < draw.applied.float().mean() < 0.8


def test_magnitudes_are_drawn_from_1_to_9_as_kekmodel():
    draw = ra.RandAugment(2).draw(4000, (32, 32), gen(0), CPU)
    posterize = draw.parameter[draw.op == ra.OPS.index("posterize")]
    assert set(posterize.tolist()) == {4.0, 5.0, 6.0, 7.0}  # int(0.4 v) + 4 for v in 1..9: never 8 bits (v = 10)
    solarize = draw.parameter[draw.op == ra.OPS.index("solarize")]
    assert solarize.min() == 256 - int(9 * 25.6) and solarize.max() == 256 - int(25.6)
    assert torch.bincount(draw.op.flatten(), minlength=14).min() > 400  # every op is drawn


def test_randaugment_and_cutout_are_seeded_and_keep_dtype_shape_and_device():
    images = sample_images(2)
    for policy in ra.POLICIES:
        aug = Augment(crop_padding=2, randaugment=2, cutout=0.5, policy=policy)
        a, b, c = aug(images, gen(0)), aug(images, gen(0)), aug(images, gen(1))
        assert a.dtype == torch.uint8 and a.shape == images.shape and a.device == images.device
        assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(ra.RandAugment(0)(images, gen(0)), images)
    with pytest.raises(LongtailError, match="uint8"):
        ra.RandAugment(2)(images.float(), gen(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_images_with_a_cpu_generator_match_the_cpu():
    """The same draws give the same images on the GPU: exactly for the arithmetic ops; the geometric ones may
    differ where a rotation's cos / sin differs by one ulp between the CPU's and CUDA's libm (none seen)."""
    images = sample_images(4)
    n = images.shape[0]
    for name in ra.OPS:
        p = ra.fixmatch_parameter(name, torch.full((n,), 7), torch.ones(n, dtype=torch.float64), (32, 32))
        cuda, cpu = ra.OP_FUNCTIONS[name](images.cuda(), p.cuda()), ra.OP_FUNCTIONS[name](images, p)
        assert cuda.device.type == "cuda"
        assert (cuda.cpu() != cpu).float().mean() <= (0.005 if name == "rotate" else 0.0), name
    aug = Augment(crop_padding=4, randaugment=2, cutout=0.5)
    cuda = aug(images.cuda(), gen(3))  # a CPU generator drives CUDA data: its draws move to the GPU
    assert cuda.device.type == "cuda" and (cuda.cpu() != aug(images, gen(3))).float().mean() <= 0.005
    on_gpu = torch.Generator(device="cuda").manual_seed(3)
    a = aug(images.cuda(), on_gpu)
    assert torch.equal(a, aug(images.cuda(), torch.Generator(device="cuda").manual_seed(3)))
    mixed, labels_b, lam = cutmix(normalize(a, (0.5,) * 3, (0.25,) * 3), torch.arange(n, device="cuda"), on_gpu)
    assert mixed.device.type == labels_b.device.type == lam.device.type == "cuda"


def test_the_epoch_stream_is_unchanged_without_the_new_augmentations():
    images = sample_images(2)
    old = Augment(crop_padding=4, flip=True)
    new = Augment(crop_padding=4, flip=True, randaugment=0, cutout=0.0)
    assert torch.equal(old(images, gen(5)), new(images, gen(5)))
    assert Augment(crop_padding=0, flip=False, cutout=0.5).active and not Augment(crop_padding=0, flip=False).active


# Cutout against kekmodel's and USB's CutoutAbs ----------------------------------------------------------
def kekmodel_cutout(im: Image.Image, v: float, x: float, y: float, color) -> Image.Image:
    """kekmodel's CutoutAbs with the centre given (USB's differs only in its centre's draw and colour)."""
    w, h = im.size
    x0, y0 = int(max(0, x - v / 2.0)), int(max(0, y - v / 2.0))
    x1, y1 = min(w, x0 + v), min(h, y0 + v)
    im = im.copy()
    ImageDraw.Draw(im).rectangle((x0, y0, x1, y1), color)
    return im


@pytest.mark.parametrize("policy", ra.POLICIES)
def test_cutout_paints_the_sources_rectangle(policy):
    images = sample_images(6)
    n, h, w = images.shape[0], 32, 32
    out = ra.Cutout(0.5, policy)(images, gen(4))
    g = gen(4)  # the same draws, in Cutout's order
    u = lambda: torch.rand(n, generator=g, dtype=torch.float64)  # noqa: E731
    if policy == "usb":
        sides, xs, ys = (u() * 0.5 * w).tolist(), (w + (1 - w) * u()).tolist(), (h + (1 - h) * u()).tolist()
    else:
        sides, xs, ys = [16] * n, (u() * w).tolist(), (u() * h).tolist()
    for i in range(n):
        expected = kekmodel_cutout(to_pil(images[i]), sides[i], xs[i], ys[i], ra.CUTOUT_FILL[policy])
        assert torch.equal(out[i], from_pil(expected)), i
    if policy == "fixmatch":  # 17 x 17 where not clipped (PIL's rectangle includes its far corner), grey 127
        painted = (out == 127).all(dim=1) & (images != 127).any(dim=1)
        assert painted.sum(dim=(1, 2)).max() == 17 * 17


# mixup and CutMix --------------------------------------------------------------------------------------
def test_beta_draws_follow_beta():
    n = 20000
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    cdfs = {0.5: lambda x: 2 / math.pi * torch.asin(x.sqrt()), 1.0: lambda x: x, 2.0: lambda x: 3 * x**2 - 2 * x**3}
    for alpha, cdf in cdfs.items():
        s = sample_beta(alpha, n, gen(0)).sort().values
        assert (cdf(s) - grid).abs().max() < 0.0115  # Kolmogorov-Smirnov, 1 % level for n = 20000
    tiny = sample_beta(0.05, 2000, gen(0))
    assert torch.isfinite(tiny).all() and ((tiny < 0.01) | (tiny > 0.99)).float().mean() > 0.5
    with pytest.raises(LongtailError, match="alpha > 0"):
        sample_beta(0.0, 1, gen(0))


def distinct_batch(b: int = 8, h: int = 8, w: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is the constant i + 1 (float), label i: a row's partner is its labels_b."""
    labels = torch.arange(b)
    return (labels.float() + 1).view(b, 1, 1, 1).expand(b, 3, h, w).clone(), labels


def test_mixup_mixes_each_image_with_its_partner():
    images, labels = distinct_batch()
    mixed, labels_b, lam = mixup(images, labels, gen(0), alpha=1.0)
    assert lam.shape == (8,) and lam.dtype == torch.float32 and (lam == lam[0]).all() and 0 < lam[0] < 1
    assert sorted(labels_b.tolist()) == labels.tolist()  # a permutation
    expected = lam[0] * images + (1 - lam[0]) * images[labels_b]
    assert torch.allclose(mixed, expected)
    a, b = mixup(images, labels, gen(0)), mixup(images, labels, gen(0))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    unmixed, _, one = mixup(images, labels, gen(0), prob=0.0)
    assert torch.equal(unmixed, images) and (one == 1).all()


def test_cutmix_share_is_the_area_left_unpasted():
    images, labels = distinct_batch(16, 10, 12)
    shares = []
    for seed in range(20):
        mixed, labels_b, lam = cutmix(images, labels, gen(seed), alpha=1.0)
        moved = labels_b != labels
        changed = (mixed != images).all(dim=1)  # (B, H, W): pixels taken from the partner
        assert torch.equal(mixed[changed[:, None].expand_as(mixed)],
                           images[labels_b][changed[:, None].expand_as(mixed)])
        assert moved.any()
        box = changed[moved][0]
        assert (changed[moved] == box).all()  # one box, the same for every image
        if box.any():
            rows, cols = box.any(dim=1).nonzero(), box.any(dim=0).nonzero()
            assert box.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a rectangle
        assert lam[0].item() == pytest.approx(1 - box.float().mean().item(), abs=1e-6)
        shares.append(lam[0].item())
    assert len(set(shares)) > 10 and min(shares) >= 0 and max(shares) <= 1
    _, _, one = cutmix(images, labels, gen(0), prob=0.0)
    assert (one == 1).all()


@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_the_mixed_loss_with_lam_one_is_the_plain_loss(loss_name):
    counts = synthetic_set([40, 20, 10, 5]).class_counts()
    crit = make_loss(loss_name, counts, **({"gamma": 0.2} if loss_name == "cdt" else {}))
    logits = torch.randn(8, 4, generator=gen(0), requires_grad=True)
    y_a, y_b = torch.randint(4, (8,), generator=gen(1)), torch.randint(4, (8,), generator=gen(2))
    weight = torch.tensor([0.5, 1.0, 2.0, 4.0])
    for w in (None, weight):
        plain = crit(logits, y_a, weight=w)
        assert torch.equal(mixed_loss(crit, logits, y_a, y_b, torch.ones(8), weight=w), plain)
        lam = torch.full((8,), 0.3)
        both = 0.3 * crit(logits, y_a, weight=w) + 0.7 * crit(logits, y_b, weight=w)
        assert torch.allclose(mixed_loss(crit, logits, y_a, y_b, lam, weight=w), both)


def test_a_mixing_task_trains_and_stays_graphable():
    train = synthetic_set([24, 12, 6, 6])
    for mode in ("mixup", "cutmix"):
        task = SupervisedTask(train, make_loss("ce", train.class_counts()), batch_size=8,
                              augment=Augment(crop_padding=1, randaugment=2, cutout=0.5), mix=Mix(mode, 1.0, 0.5))
        assert task.graphable
        task.on_epoch_start(0)
        batches = list(task.batches(0, gen(0)))
        assert all(isinstance(b, MixedBatch) for b in batches) and len(batches) == task.steps_per_epoch
        assert any((b.lam == 1).all() for b in batches) and any((b.lam < 1).all() for b in batches)  # mix_prob 0.5
        again = list(task.batches(0, gen(0)))
        assert all(torch.equal(x.images, y.images) and torch.equal(x.lam, y.lam) for x, y in zip(batches, again))
        sliced = type(batches[0])(*(t[torch.tensor([0, 2])] for t in batches[0]))  # one process's rows
        assert isinstance(sliced, MixedBatch) and sliced.lam.shape == (2,)
        torch.manual_seed(0)
        model = make_model("tiny", 4, in_channels=3)
        recs = fit(model, task, make_sgd(model, lr=0.05, momentum=0.9, weight_decay=0), epochs=2, lr_at=lambda e: 0.05,
                   seed=0, device=CPU, amp="off", progress=False)
        assert all(math.isfinite(r.train_loss) for r in recs) and recs[0].steps == task.steps_per_epoch
    # the graph stepper (eager on the CPU) takes mixed batches like plain ones
    torch.manual_seed(0)
    model = make_model("tiny", 4, in_channels=3)
    step = GraphStep(model, task, make_sgd(model, lr=0.05, momentum=0.9, weight_decay=0), CPU, "off")
    step.start_epoch(0.05)
    assert math.isfinite(float(step(batches[0])))


def test_a_mixup_run_built_from_the_config():
    train = synthetic_set([24, 12, 6, 6])
    cfg = RunConfig(model=ModelConfig(arch="tiny"), train=TrainConfig(batch_size=8, crop_padding=1, device="cpu"),
                    augment=AugmentConfig(mix="mixup", mix_alpha=0.4, randaugment=1, randaugment_magnitude=5))
    task = build_task(cfg, train, train.class_counts())
    assert isinstance(task, SupervisedTask) and task.mix == Mix("mixup", 0.4, 1.0)
    assert task.augment == Augment(crop_padding=1, flip=True, randaugment=1, randaugment_magnitude=5)
    batch = next(iter(task.batches(0, gen(0))))
    assert isinstance(batch, MixedBatch)
    torch.manual_seed(0)
    loss = task.loss(make_model("tiny", 4, in_channels=3), batch)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_mixup_on_image_files(tmp_path):
    from longtail.data.loader import LoaderTask

    from imagefiles import file_splits, write_imagenet_lt

    root = write_imagenet_lt(tmp_path, [6, 3, 2])
    splits = file_splits("imagenet-lt", root, num_workers=0)
    cfg = RunConfig(data=DataConfig(dataset="imagenet-lt", root=str(root)), model=ModelConfig(arch="tiny"),
                    train=TrainConfig(batch_size=4, device="cpu"), augment=AugmentConfig(mix="cutmix"))
    task = build_task(cfg, splits.train, splits.train.class_counts())
    assert isinstance(task, LoaderTask)
    task.on_epoch_start(0)
    batches = list(task.batches(0, gen(0)))
    assert batches and all(isinstance(b, MixedBatch) and b.images.dtype == torch.float32 for b in batches)
    with pytest.raises(LongtailError, match="augment.randaugment and augment.cutout"):
        build_task(replace(cfg, augment=AugmentConfig(cutout=0.5)), splits.train, splits.train.class_counts())


# FixMatch's strong view ----------------------------------------------------------------------------------
def fixmatch_parts():
    lab = synthetic_set([16, 8, 4, 2])
    unl = hide_labels(synthetic_set([12, 6, 3, 3], seed=2), name="unlabeled")
    return lab, unl


def test_fixmatch_strong_view_with_randaugment():
    lab, unl = fixmatch_parts()
    crit = make_loss("ce", lab.class_counts())
    weak = Augment(crop_padding=1)
    strong = Augment(crop_padding=1, randaugment=2, cutout=0.5)
    task = FixMatchTask(lab, unl, crit, batch_size=8, mu=2, threshold=0.5, augment=weak, strong=strong)
    a = next(iter(task.batches(0, gen(0))))
    b = next(iter(task.batches(0, gen(0))))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and a.u_strong.shape == a.u_weak.shape
    # the strong view is the policy's uint8 images, normalised: replay the draws in the task's order
    g = gen(0)
    order = task.sampler.epoch_indices(g)
    u = unl.images[cycled_draw(torch.arange(len(unl)), order.numel() * 2, g)[:16]]
    weak(lab.images[order[:8]], g)
    assert torch.equal(normalize(weak(u, g), unl.mean, unl.std), a.u_weak)
    expected = strong(u, g)
    assert torch.equal(normalize(expected, unl.mean, unl.std), a.u_strong)
    assert ((expected == 127).all(dim=1).sum(dim=(1, 2)) >= 3 * 3).all()  # every image has its cutout (4 + 1 px)
    torch.manual_seed(0)
    model = make_model("tiny", 4, in_channels=3)
    recs = fit(model, task, make_sgd(model, lr=0.05, momentum=0.9, weight_decay=0), epochs=1, lr_at=lambda e: 0.05,
               seed=0, device=CPU, amp="off", progress=False)
    assert math.isfinite(recs[0].train_loss)


def test_fixmatch_from_the_config_keeps_the_simplified_view_by_default():
    lab, unl = fixmatch_parts()
    splits = SemiSplits(lab, lab, unlabeled=unl)
    base = RunConfig(model=ModelConfig(arch="tiny"), train=TrainConfig(batch_size=8, device="cpu"),
                     semi=SemiConfig(method="fixmatch"))
    plain = build_task(base, lab, lab.class_counts(), splits)
    assert isinstance(plain, FixMatchTask) and plain.strong is None and plain.weak == Augment(4, True)
    # the default strong view is today's strong_augment, drawn after the weak views
    batch = next(iter(plain.batches(0, gen(0))))
    g = gen(0)
    order = plain.sampler.epoch_indices(g)
    u = unl.images[cycled_draw(torch.arange(len(unl)), order.numel() * plain.mu, g)[:8 * plain.mu]]
    plain.weak(lab.images[order[:8]], g)
    plain.weak(u, g)
    simplified = strong_augment(u, g, weak=plain.weak)
    m, s = torch.tensor(unl.mean).view(1, -1, 1, 1), torch.tensor(unl.std).view(1, -1, 1, 1)
    assert torch.equal(batch.u_strong, (simplified - m) / s)
    usb = replace(base, augment=AugmentConfig(randaugment=3, cutout=0.5, policy="usb"))
    task = build_task(usb, lab, lab.class_counts(), splits)
    assert task.strong == Augment(4, True, randaugment=3, cutout=0.5, policy="usb") and task.weak == Augment(4, True)
    for bad, match in ((AugmentConfig(cutout=0.5), "augment.randaugment=2"),
                       (AugmentConfig(randaugment=2, mix="mixup"), "augment.mix=mixup on a FixMatch run"),
                       (AugmentConfig(randaugment=3, policy="usb", randaugment_magnitude=5), "takes no magnitude")):
        with pytest.raises(LongtailError, match=match):
            build_task(replace(base, augment=bad), lab, lab.class_counts(), splits)


# settings that cannot work are refused --------------------------------------------------------------------
def test_bad_settings_give_clear_errors():
    train = synthetic_set([24, 12, 6, 6])
    with pytest.raises(LongtailError, match="augment.policy"):
        AugmentConfig(policy="timm")
    with pytest.raises(LongtailError, match="augment.mix"):
        AugmentConfig(mix="manifold")
    with pytest.raises(LongtailError, match="mix_alpha"):
        AugmentConfig(mix_alpha=0.0)
    mfw = RunConfig(mfw=MFWConfig(strength=0.5), augment=AugmentConfig(mix="cutmix"))
    with pytest.raises(LongtailError, match="major feature weakening"):
        build_task(mfw, train, train.class_counts())
    mixing = RunConfig(augment=AugmentConfig(mix="mixup"))
    reason = stack_unsupported_reason(mixing)
    assert reason is not None and "augment.mix=mixup" in reason
    assert stack_unsupported_reason(RunConfig(augment=AugmentConfig(randaugment=2, cutout=0.5))) is None
    with pytest.raises(LongtailError, match="magnitude"):
        ra.RandAugment(2, magnitude=11)
    with pytest.raises(LongtailError, match="share"):
        Augment(cutout=1.5)
    with pytest.raises(LongtailError, match="mixup"):
        Mix("mixout")


def test_pretraining_refuses_the_augment_section():
    from longtail.ssl.run import build_pretraining

    cfg = RunConfig(model=ModelConfig(arch="tiny"), train=TrainConfig(device="cpu"),
                    augment=AugmentConfig(randaugment=2))
    with pytest.raises(LongtailError, match="augment section"):
        build_pretraining("rotation", cfg, cfg.ssl, synthetic_set([4, 4]), CPU)


def test_pseudo_labels_refuse_mixing():
    train = synthetic_set([8, 8])
    splits = SemiSplits(train, train, is_pseudo=torch.zeros(len(train), dtype=torch.bool))
    cfg = RunConfig(augment=AugmentConfig(mix="mixup"))
    with pytest.raises(LongtailError, match="pseudo-labels"):
        build_task(cfg, train, train.class_counts(), splits)


def test_name_lists_mirror_the_modules():
    assert config_module.MIXES == MIXES and config_module.AUGMENT_POLICIES == ra.POLICIES
    assert augment_from_config(RunConfig(), synthetic_set([2, 2]))[1] is None


def test_iterate_batches_applies_the_policy_to_the_epoch():
    train = synthetic_set([8, 8])
    aug = Augment(crop_padding=0, flip=False, cutout=0.5)
    (batch,) = list(iterate_batches(train, torch.arange(16), 16, augment=aug, generator=gen(0)))
    assert isinstance(batch, Batch) and torch.equal(batch.images, normalize(aug(train.images, gen(0)), train.mean,
                                                                             train.std))


def test_reflect_padded_crop_equals_torchvision_reflect_padding_at_the_same_offsets():
    """augment.crop_padding_mode=reflect (USB's RandomCrop(padding_mode="reflect")): the same offsets as the
    zero-padded crop, read from the image padded by reflection (numpy/torchvision "reflect", no edge repeat)."""
    import torch.nn.functional as F

    from longtail.data.augment import random_crop

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 9, 7), generator=g, dtype=torch.uint8)
    zeros = random_crop(images, 4, torch.Generator().manual_seed(1))
    reflect = random_crop(images, 4, torch.Generator().manual_seed(1), "reflect")
    padded_z = F.pad(images, (4, 4, 4, 4))
    padded_r = F.pad(images.float(), (4, 4, 4, 4), mode="reflect").to(torch.uint8)
    for i in range(6):  # find each image's offset from the zero-padded crop, check the reflect crop there
        offsets = [(dy, dx) for dy in range(9) for dx in range(9)
                   if torch.equal(padded_z[i, :, dy:dy + 9, dx:dx + 7], zeros[i])]
        assert any(torch.equal(padded_r[i, :, dy:dy + 9, dx:dx + 7], reflect[i]) for dy, dx in offsets)
    assert reflect.dtype == torch.uint8 and reflect.shape == images.shape
    assert not torch.equal(zeros, reflect)
    with pytest.raises(ValueError, match="reflect padding"):
        random_crop(images, 9, torch.Generator().manual_seed(1), "reflect")
    from longtail.recipes import get_recipe

    for name in ("cifar10-semi-darp-fixmatch", "cifar10-semi-darp-supervised"):
        assert get_recipe(name).config.augment.crop_padding_mode == "reflect"
    assert get_recipe("cifar10-semi-darp-fixmatch-short").config.augment.crop_padding_mode == "zeros"
