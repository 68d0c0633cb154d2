"""AutoAugment's CIFAR-10 policy and DeVries & Taylor's Cutout (longtail.data.autoaugment, longtail.data.randaugment)
against a transcription of wang22ti/DDC's ``utils/autoaug.py`` (bcae46e; DeepVoltaire/AutoAugment's ``SubPolicy`` and
``CIFAR10Policy``, and uoguelph-mlrg's ``Cutout``) run with PIL and NumPy, with **zero tolerance**, the random draws
forced to ours; the draws' distribution; and how a run's ``augment.*`` settings reach them.

torchvision's ``AutoAugment(AutoAugmentPolicy.CIFAR10)`` is not the reference: its magnitudes (bins over other
ranges, signed rotations) differ from DeepVoltaire's, which DDC uses.
"""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from longtail import LongtailError
from longtail.config import AugmentConfig, RunConfig, SemiConfig, apply_overrides
from longtail.data import autoaugment as aa
from longtail.data import randaugment as ra
from longtail.data.augment import Augment, normalize, random_crop, random_flip
from longtail.experiment import augment_from_config

from conftest import synthetic_set

CPU = torch.device("cpu")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # DDC's Normalize


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sample_images(n: int = 3, h: int = 32, w: int = 32) -> torch.Tensor:
    """Noise, its blur and a darkened blur (narrow histograms for Equalize and AutoContrast)."""
    noise = torch.randint(0, 256, (n, 3, h, w), generator=gen(0), dtype=torch.uint8)
    blur = F.avg_pool2d(noise.float(), 5, 1, 2).round().to(torch.uint8)
    return torch.cat([noise, blur, (blur // 2 + 60).to(torch.uint8)])


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def from_pil(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)


# The source, transcribed ----------------------------------------------------------------------------------
# utils/autoaug.py at bcae46e, lines 90-142 (CIFAR10Policy) and 200-263 (SubPolicy): the same names, values and
# calls; `random` is a parameter so that a test can force the draws.

class SrcSubPolicy:
    def __init__(self, p1, operation1, magnitude_idx1, p2, operation2, magnitude_idx2, fillcolor=(128, 128, 128),
                 rng=random):
        ranges = {
            "shearX": np.linspace(0, 0.3, 10),
            "shearY": np.linspace(0, 0.3, 10),
            "translateX": np.linspace(0, 150 / 331, 10),
            "translateY": np.linspace(0, 150 / 331, 10),
            "rotate": np.linspace(0, 30, 10),
            "color": np.linspace(0.0, 0.9, 10),
            "posterize": np.round(np.linspace(8, 4, 10), 0).astype(np.int32),
            "solarize": np.linspace(256, 0, 10),
            "contrast": np.linspace(0.0, 0.9, 10),
            "sharpness": np.linspace(0.0, 0.9, 10),
            "brightness": np.linspace(0.0, 0.9, 10),
            "autocontrast": [0] * 10,
            "equalize": [0] * 10,
            "invert": [0] * 10,
        }

        def rotate_with_fill(img, magnitude):
            rot = img.convert("RGBA").rotate(magnitude)
            return Image.composite(rot, Image.new("RGBA", rot.size, (128,) * 4), rot).convert(img.mode)

        func = {
            "shearX": lambda img, magnitude: img.transform(
                img.size, Image.AFFINE, (1, magnitude * rng.choice([-1, 1]), 0, 0, 1, 0),
                Image.BICUBIC, fillcolor=fillcolor),
            "shearY": lambda img, magnitude: img.transform(
                img.size, Image.AFFINE, (1, 0, 0, magnitude * rng.choice([-1, 1]), 1, 0),
                Image.BICUBIC, fillcolor=fillcolor),
            "translateX": lambda img, magnitude: img.transform(
                img.size, Image.AFFINE, (1, 0, magnitude * img.size[0] * rng.choice([-1, 1]), 0, 1, 0),
                fillcolor=fillcolor),
            "translateY": lambda img, magnitude: img.transform(
                img.size, Image.AFFINE, (1, 0, 0, 0, 1, magnitude * img.size[1] * rng.choice([-1, 1])),
                fillcolor=fillcolor),
            "rotate": lambda img, magnitude: rotate_with_fill(img, magnitude),
            "color": lambda img, magnitude: ImageEnhance.Color(img).enhance(1 + magnitude * rng.choice([-1, 1])),
            "posterize": lambda img, magnitude: ImageOps.posterize(img, magnitude),
            "solarize": lambda img, magnitude: ImageOps.solarize(img, magnitude),
            "contrast": lambda img, magnitude: ImageEnhance.Contrast(img).enhance(
                1 + magnitude * rng.choice([-1, 1])),
            "sharpness": lambda img, magnitude: ImageEnhance.Sharpness(img).enhance(
                1 + magnitude * rng.choice([-1, 1])),
            "brightness": lambda img, magnitude: ImageEnhance.Brightness(img).enhance(
                1 + magnitude * rng.choice([-1, 1])),
            "autocontrast": lambda img, magnitude: ImageOps.autocontrast(img),
            "equalize": lambda img, magnitude: ImageOps.equalize(img),
            "invert": lambda img, magnitude: ImageOps.invert(img),
        }
        self.rng = rng
        self.p1 = p1
        self.operation1 = func[operation1]
        self.magnitude1 = ranges[operation1][magnitude_idx1]
        self.p2 = p2
        self.operation2 = func[operation2]
        self.magnitude2 = ranges[operation2][magnitude_idx2]

    def __call__(self, img):
        if self.rng.random() < self.p1:
            img = self.operation1(img, self.magnitude1)
        if self.rng.random() < self.p2:
            img = self.operation2(img, self.magnitude2)
        return img


SRC_CIFAR10_POLICY = [  # CIFAR10Policy.__init__'s list, (p1, op1, m1, p2, op2, m2) of each SubPolicy(...)
    (0.1, "invert", 7, 0.2, "contrast", 6), (0.7, "rotate", 2, 0.3, "translateX", 9),
    (0.8, "sharpness", 1, 0.9, "sharpness", 3), (0.5, "shearY", 8, 0.7, "translateY", 9),
    (0.5, "autocontrast", 8, 0.9, "equalize", 2),
    (0.2, "shearY", 7, 0.3, "posterize", 7), (0.4, "color", 3, 0.6, "brightness", 7),
    (0.3, "sharpness", 9, 0.7, "brightness", 9), (0.6, "equalize", 5, 0.5, "equalize", 1),
    (0.6, "contrast", 7, 0.6, "sharpness", 5),
    (0.7, "color", 7, 0.5, "translateX", 8), (0.3, "equalize", 7, 0.4, "autocontrast", 8),
    (0.4, "translateY", 3, 0.2, "sharpness", 6), (0.9, "brightness", 6, 0.2, "color", 8),
    (0.5, "solarize", 2, 0.0, "invert", 3),
    (0.2, "equalize", 0, 0.6, "autocontrast", 0), (0.2, "equalize", 8, 0.6, "equalize", 4),
    (0.9, "color", 9, 0.6, "equalize", 6), (0.8, "autocontrast", 4, 0.2, "solarize", 8),
    (0.1, "brightness", 3, 0.7, "color", 0),
    (0.4, "solarize", 5, 0.9, "autocontrast", 3), (0.9, "translateY", 9, 0.7, "translateY", 9),
    (0.9, "autocontrast", 2, 0.8, "solarize", 3), (0.8, "equalize", 8, 0.1, "invert", 3),
    (0.7, "translateY", 9, 0.9, "autocontrast", 1),
]


class Forced:
    """A stand-in for Python's ``random`` that returns given draws: ``randint`` the sub-policy, the k-th
    ``random()`` the k-th uniform, and ``choice`` the sign of the op whose ``random()`` came last."""

    def __init__(self, policy: int, uniform, sign) -> None:
        self.policy, self.uniform, self.sign, self.k = policy, [float(u) for u in uniform], [int(s) for s in sign], -1

    def randint(self, a: int, b: int) -> int:
        assert (a, b) == (0, 24)
        return self.policy

    def random(self) -> float:
        self.k += 1
        return self.uniform[self.k]

    def choice(self, seq):
        assert list(seq) == [-1, 1]
        return self.sign[self.k]


def src_cifar10_policy(img: Image.Image, rng) -> Image.Image:
    """``CIFAR10Policy()(img)`` with ``rng`` as its ``random``."""
    policies = [SrcSubPolicy(*p, (128, 128, 128), rng=rng) for p in SRC_CIFAR10_POLICY]
    policy_idx = rng.randint(0, len(policies) - 1)
    return policies[policy_idx](img)


def src_cutout(img: torch.Tensor, length: int, y: int, x: int) -> torch.Tensor:
    """DDC's ``Cutout(n_holes=1, length)`` (utils/autoaug.py 7-33) on a ToTensor image, its centre given."""
    h = img.size(1)
    w = img.size(2)
    mask = np.ones((h, w), np.float32)
    y1 = np.clip(y - length // 2, 0, h)
    y2 = np.clip(y + length // 2, 0, h)
    x1 = np.clip(x - length // 2, 0, w)
    x2 = np.clip(x + length // 2, 0, w)
    mask[y1: y2, x1: x2] = 0.
    mask = torch.from_numpy(mask)
    mask = mask.expand_as(img)
    return img * mask


# The tables ----------------------------------------------------------------------------------------------
def test_the_policy_and_the_ranges_are_the_sources():
    assert [tuple(p) for p in SRC_CIFAR10_POLICY] == list(aa.CIFAR10_POLICY) and len(aa.CIFAR10_POLICY) == 25
    src = SrcSubPolicy(0.5, "invert", 0, 0.5, "invert", 0)  # builds the ranges; read them back op by op
    for op in aa.OPS:
        for m in range(10):
            sp = SrcSubPolicy(1.0, op, m, 1.0, op, m)
            assert aa.RANGES[op][m] == float(sp.magnitude1), (op, m)
    assert src.p1 == 0.5
    assert aa.RANGES["posterize"] == (8, 8, 7, 7, 6, 6, 5, 5, 4, 4)


# Each op against PIL ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", aa.OPS)
@pytest.mark.parametrize("size", [(32, 32), (20, 27)], ids=["32x32", "20x27"])
def test_each_op_at_every_magnitude_and_sign_equals_the_sources_pil_call(op, size):
    """Every op of SubPolicy's table (ShearX and Rotate's other magnitudes included, which CIFAR10Policy does not
    use), magnitudes 0..9, both signs, on images of 32 x 32 and 20 x 27 (width and height apart)."""
    h, w = size
    images = sample_images(2, h, w)
    n = images.shape[0]
    for m in range(10):
        for sign in (-1, 1):
            signs = torch.full((n,), float(sign), dtype=torch.float64)
            param = aa.parameter(op, torch.full((n,), aa.RANGES[op][m], dtype=torch.float64), signs, size)
            out = aa.OP_FUNCTIONS[op](images, param)
            for i in range(n):
                sp = SrcSubPolicy(1.0, op, m, 0.0, "invert", 0, rng=Forced(0, [0.0, 1.0], [sign, sign]))
                expected = from_pil(sp(to_pil(images[i])))
                assert torch.equal(out[i], expected), f"{op} magnitude {m} sign {sign}, image {i}"


def test_bicubic_affine_equals_pil_off_the_policys_values():
    """PIL's BICUBIC affine transform at shears and offsets the policy never uses, black and grey fill."""
    images = sample_images(2, 24, 30)
    rows = torch.tensor([[1.0, 0.37, -3.25, -0.21, 1.0, 2.5], [0.9, -0.1, 1.75, 0.05, 1.1, -0.3]], dtype=torch.float64)
    for fill in (0, 128):
        for k in range(rows.shape[0]):
            m = rows[k].expand(images.shape[0], 6)
            out = aa.affine_bicubic(images, m, fill)
            for i in range(images.shape[0]):
                expected = to_pil(images[i]).transform((30, 24), Image.AFFINE, tuple(rows[k].tolist()), Image.BICUBIC,
                                                       fillcolor=(fill,) * 3)
                assert torch.equal(out[i], from_pil(expected)), (fill, k, i)


# Each sub-policy, with its draws forced --------------------------------------------------------------------
@pytest.mark.parametrize("index", range(25))
def test_each_sub_policy_equals_the_source_with_the_same_draws(index):
    """Sub-policy ``index`` with its first op only, its second only, both, neither; each sign."""
    images = sample_images(2)
    n = images.shape[0]
    cases = [(u, s) for u in ((0.0, 0.99), (0.99, 0.0), (0.0, 0.0), (0.99, 0.99)) for s in ((1, -1), (-1, 1))]
    for uniform, sign in cases:
        draw = aa.AutoAugmentDraw(torch.full((n,), index, dtype=torch.long),
                                  torch.tensor([uniform] * n, dtype=torch.float64),
                                  torch.tensor([sign] * n, dtype=torch.float64))
        out = aa.AutoAugment("cifar10").apply(images, draw)
        for i in range(n):
            expected = from_pil(src_cifar10_policy(to_pil(images[i]), Forced(index, uniform, sign)))
            assert torch.equal(out[i], expected), (index, uniform, sign, i)


def test_a_drawn_batch_equals_the_source_image_by_image():
    """The whole call: our draws for 150 images, each image then run through the source with those draws."""
    images = sample_images(50)
    policy = aa.AutoAugment()
    draw = policy.draw(images.shape[0], gen(3), CPU)
    out = policy(images, gen(3))
    assert torch.equal(out, policy.apply(images, draw))  # __call__ is draw then apply
    for i in range(images.shape[0]):
        rng = Forced(int(draw.policy[i]), draw.uniform[i].tolist(), draw.sign[i].tolist())
        assert torch.equal(out[i], from_pil(src_cifar10_policy(to_pil(images[i]), rng))), i


# The draws' distribution -------------------------------------------------------------------------------------
def test_each_sub_policy_is_drawn_a_25th_of_the_time_and_each_op_with_its_probability():
    n = 100_000
    draw = aa.AutoAugment().draw(n, gen(7), CPU)
    counts = torch.bincount(draw.policy, minlength=25).double()
    assert counts.numel() == 25
    expected = n / 25
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 60, chi2  # 24 degrees of freedom: P(chi2 > 60) < 1e-4
    prob = torch.tensor([[p[0], p[3]] for p in aa.CIFAR10_POLICY], dtype=torch.float64)[draw.policy]
    applied = (draw.uniform < prob).double()
    for k in range(2):
        for j in range(25):
            rows = draw.policy == j
            p = float(prob[rows, k][0])
            share = float(applied[rows, k].mean())
            assert abs(share - p) < 4.5 * (p * (1 - p) / int(rows.sum())) ** 0.5 + 1e-12, (j, k, share, p)
    assert abs(float((draw.sign > 0).double().mean()) - 0.5) < 0.01
    assert ((draw.uniform >= 0) & (draw.uniform < 1)).all()


def test_draws_are_seeded_and_keep_dtype_shape_and_device():
    images = sample_images(4)
    a = aa.AutoAugment()(images, gen(1))
    assert torch.equal(a, aa.AutoAugment()(images, gen(1))) and not torch.equal(a, aa.AutoAugment()(images, gen(2)))
    assert a.dtype == torch.uint8 and a.shape == images.shape
    grey = aa.AutoAugment()(images[:, :1].contiguous(), gen(1))  # one channel: Color is the identity, fill 128
    assert grey.shape == (images.shape[0], 1, 32, 32)
    with pytest.raises(LongtailError, match="unknown AutoAugment policy"):
        aa.AutoAugment("imagenet")
    with pytest.raises(LongtailError, match="uint8"):
        aa.AutoAugment()(images.float(), gen(0))


# DeVries & Taylor's Cutout ----------------------------------------------------------------------------------
def test_devries_cutout_is_ddcs_square_of_zeros_before_normalising():
    """Our black square, then normalising, against DDC's ToTensor -> Cutout(1, 16) -> Normalize with the centre
    we drew (np.random.randint(h), then (w))."""
    images = sample_images(20)
    n, _, h, w = images.shape
    out = ra.Cutout(0.5, "devries")(images, gen(5))
    g = gen(5)
    ys = torch.randint(h, (n,), generator=g)
    xs = torch.randint(w, (n,), generator=g)
    ours = normalize(out, CIFAR_MEAN, CIFAR_STD)
    mean, std = torch.tensor(CIFAR_MEAN).view(3, 1, 1), torch.tensor(CIFAR_STD).view(3, 1, 1)
    for i in range(n):
        tensor = images[i].float().div(255)  # transforms.ToTensor on the uint8 image
        theirs = (src_cutout(tensor, 16, int(ys[i]), int(xs[i])) - mean) / std  # transforms.Normalize
        assert torch.equal(ours[i], theirs), i
    cut = (out == 0).all(dim=1) & (images != 0).any(dim=1)
    sides = cut.sum(dim=(1, 2))
    assert sides.max() == 16 * 16 and sides.min() >= 8 * 8  # 16 x 16 where not clipped, 8 x 8 in a corner


def test_devries_cutout_centres_cover_every_pixel_and_odd_lengths_follow_the_source():
    box = ra.Cutout(0.5, "devries").boxes(20_000, (32, 32), gen(0), CPU)
    # x = randint(32): x1 = clip(x - 8) takes 0..23, x2 = clip(x + 8) takes 8..32
    assert set(box[:, 0].tolist()) == set(range(0, 24)) and set(box[:, 2].tolist()) == set(range(8, 33))
    assert set(box[:, 1].tolist()) == set(range(0, 24)) and set(box[:, 3].tolist()) == set(range(8, 33))
    assert (box[:, 2] - box[:, 0]).max() == 16
    odd = ra.Cutout(15 / 32, "devries").boxes(100, (32, 32), gen(0), CPU)  # length 15: 2 * (15 // 2) = 14 wide
    assert (odd[:, 2] - odd[:, 0]).max() == 14


# How a run gets them ---------------------------------------------------------------------------------------
def test_the_settings_reach_the_runs_augmentation_in_ddcs_order():
    cfg = apply_overrides(RunConfig(), {"augment.autoaugment": "cifar10", "augment.cutout": "0.5",
                                        "augment.cutout_policy": "devries"})
    train = synthetic_set([6, 5, 4])
    augment, mix = augment_from_config(cfg, train)
    assert mix is None and augment == Augment(4, True, cutout=0.5, autoaugment="cifar10", cutout_policy="devries")
    images = train.images
    g = gen(9)
    x = random_flip(random_crop(images, 4, g), g)  # RandomCrop(32, padding=4), RandomHorizontalFlip
    x = aa.AutoAugment()(x, g)  # CIFAR10Policy
    x = ra.Cutout(0.5, "devries")(x, g)  # ToTensor, Cutout(n_holes=1, length=16), (Normalize per batch)
    assert torch.equal(augment(images, gen(9)), x)


def test_every_existing_augmentation_draws_as_before():
    """autoaugment none and no cutout_policy: the same draws and images as crop, flip, RandAugment, Cutout alone."""
    images = sample_images(6)
    for policy in ("fixmatch", "usb"):
        aug = Augment(crop_padding=4, randaugment=2, cutout=0.5, policy=policy)
        g = gen(4)
        x = random_flip(random_crop(images, 4, g), g)
        x = ra.RandAugment(2, None, policy)(x, g)
        x = ra.Cutout(0.5, policy)(x, g)
        assert torch.equal(aug(images, gen(4)), x)
        assert aug == replace(aug, autoaugment="none", cutout_policy=None)


def test_bad_settings_are_refused_with_their_name():
    for key, value in (("augment.autoaugment", "imagenet"), ("augment.cutout_policy", "grey")):
        with pytest.raises(LongtailError) as e:
            apply_overrides(RunConfig(), {key: value})
        assert key in e.value.problem and e.value.fix
    assert apply_overrides(RunConfig(), {"augment.cutout_policy": "none"}).augment.cutout_policy is None
    with pytest.raises(LongtailError, match="augment.autoaugment=cifar10 on a FixMatch run"):
        augment_from_config(RunConfig(augment=AugmentConfig(autoaugment="cifar10"),
                                      semi=SemiConfig(method="fixmatch")), synthetic_set([4, 4]))


def test_augment_is_active_with_autoaugment_alone():
    assert Augment(crop_padding=0, flip=False, autoaugment="cifar10").active
    assert not Augment(crop_padding=0, flip=False).active


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_images_with_a_cpu_generator_match_the_cpu():
    """The same draws on CUDA data; the bicubic shear in float64 gives the CPU's pixels, Rotate's sine and cosine
    may move a pixel (as RandAugment's, tests/test_augment_policies.py)."""
    images = sample_images(30)
    n = images.shape[0]
    for op in aa.OPS:
        for m in (3, 9):
            param = aa.parameter(op, torch.full((n,), aa.RANGES[op][m], dtype=torch.float64),
                                 torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).double(), (32, 32))
            cuda, cpu = aa.OP_FUNCTIONS[op](images.cuda(), param.cuda()), aa.OP_FUNCTIONS[op](images, param)
            assert cuda.device.type == "cuda"
            assert (cuda.cpu() != cpu).float().mean() <= (0.005 if op == "rotate" else 0.0), (op, m)
    aug = Augment(autoaugment="cifar10", cutout=0.5, cutout_policy="devries")
    cuda = aug(images.cuda(), gen(3))
    assert cuda.device.type == "cuda" and (cuda.cpu() != aug(images, gen(3))).float().mean() <= 0.005
