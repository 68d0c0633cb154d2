import pytest
import torch

from longtail import LongtailError
from longtail.data.augment import Augment, iterate_batches, normalize, random_crop, random_flip
from longtail.data.imageset import ImageSet
from longtail.models import CosineHead, make_model

from conftest import synthetic_set


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).reshape(2, 3, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(padded[i, :, dy:dy + 6, dx:dx + 6], out[i])]
        assert found, "each crop must be a window of the padded image"


def test_random_crop_offsets_cover_all_positions():
    x = torch.zeros(4000, 1, 3, 3, dtype=torch.uint8)
    x[:, :, 1, 1] = 255  # a single bright centre pixel; its position after cropping reveals the offset
    out = random_crop(x, 1, torch.Generator().manual_seed(0))
    positions = out[:, 0].flatten(1).float().argmax(1)
    moved = out[:, 0].flatten(1).max(1).values > 0
    counts = torch.bincount(positions[moved], minlength=9)
    assert (counts > 300).all()  # all 9 placements of the 3x3 window occur (each ~1/9)


def test_flip_is_half_and_seeded():
    x = torch.arange(1000 * 4, dtype=torch.float32).reshape(1000, 1, 1, 4).to(torch.uint8)
    a = random_flip(x, torch.Generator().manual_seed(3))
    b = random_flip(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    flipped = (a != x).any(dim=(1, 2, 3)).float().mean()
    assert 0.45 < flipped < 0.55


def test_batches_cover_the_order_and_normalise():
    data = synthetic_set([5, 3, 2])
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    batches = list(iterate_batches(data, order, 4, augment=Augment(), generator=torch.Generator().manual_seed(0)))
    assert [len(b.labels) for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([b.index for b in batches]), order)
    assert torch.equal(torch.cat([b.labels for b in batches]), data.labels[order])
    assert batches[0].images.dtype == torch.float32
    x = normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert torch.allclose(x, torch.ones_like(x))


def test_imageset_rejects_bad_labels():
    with pytest.raises(LongtailError, match="out of range"):
        ImageSet(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 3]), ("a", "b"))
    with pytest.raises(LongtailError, match="labels"):
        ImageSet(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0]), ("a", "b"))


def test_resnet32_shape_and_size():
    m = make_model("resnet32", 10)
    assert sum(p.numel() for p in m.parameters()) == 464_154  # 0.46 M, as in He et al. 2016
    x = torch.randn(2, 3, 32, 32)
    f = m.features(x)
    assert f.shape == (2, 64)
    assert torch.allclose(m.forward_head(f), m(x))
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert len(convs) == 31  # 1 stem + 3 stages x 5 blocks x 2; shortcuts have no parameters


def test_cosine_head_is_bounded_and_reset_head():
    m = make_model("tiny", 4, head="cosine")
    out = m(torch.randn(8, 3, 8, 8))
    assert out.abs().max() <= 1 + 1e-5
    m.reset_head(CosineHead(m.num_features, 7))
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 7)
    with pytest.raises(LongtailError, match="unknown model"):
        make_model("resnet9000", 10)
