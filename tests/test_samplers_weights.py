"""Samplers (class frequencies, permutation, determinism) and per-class weights (schemes, DRW)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longtail.counts import ClassCounts
from longtail.errors import LongtailError
from longtail.samplers import SAMPLERS, ClassWeighted, InstanceBalanced, make_sampler
from longtail.weights import (
    SCHEMES,
    ConstantWeighting,
    DeferredReweighting,
    class_weights,
    make_weighting,
)

# Class 3 is empty; class 4 has four examples.
COUNTS = (400, 100, 25, 0, 4)
NUM_CLASSES = len(COUNTS)


def make_labels(counts=COUNTS, seed: int = 0) -> torch.Tensor:
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def class_freq(labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.bincount(labels[idx], minlength=NUM_CLASSES).double() / len(idx)


# samplers: the distribution each one promises -------------------------------------------------

DRAWS = 100_000  # frequency standard error <= 0.0016, so a 0.01 tolerance is > 6 sigma


def test_class_balanced_frequencies_are_uniform_over_nonempty_classes():
    labels = make_labels()
    idx = make_sampler("class-balanced", labels, NUM_CLASSES, DRAWS).epoch_indices(gen())
    freq = class_freq(labels, idx)
    expected = torch.tensor([0.25, 0.25, 0.25, 0.0, 0.25], dtype=torch.float64)
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)


def test_class_balanced_is_uniform_within_a_class():
    labels = make_labels()
    idx = make_sampler("class-balanced", labels, NUM_CLASSES, DRAWS).epoch_indices(gen())
    members = torch.nonzero(labels == 4).squeeze(1)
    hits = torch.stack([(idx == m).sum() for m in members]).double()
    torch.testing.assert_close(hits / hits.sum(), torch.full((4,), 0.25, dtype=torch.float64), atol=0.015, rtol=0)


def test_sqrt_frequencies_follow_sqrt_counts():
    labels = make_labels()
    idx = make_sampler("sqrt", labels, NUM_CLASSES, DRAWS).epoch_indices(gen())
    sqrt_n = torch.tensor(COUNTS, dtype=torch.float64).sqrt()  # 20, 10, 5, 0, 2
    torch.testing.assert_close(class_freq(labels, idx), sqrt_n / sqrt_n.sum(), atol=0.01, rtol=0)


def test_instance_sampler_is_a_permutation_with_natural_frequencies():
    labels = make_labels()
    idx = make_sampler("instance", labels, NUM_CLASSES).epoch_indices(gen())
    assert torch.equal(idx.sort().values, torch.arange(len(labels)))
    torch.testing.assert_close(class_freq(labels, idx), torch.tensor(COUNTS, dtype=torch.float64) / len(labels))


def test_instance_sampler_longer_than_the_data_chains_permutations():
    labels = make_labels()
    n = len(labels)
    idx = InstanceBalanced(labels, num_samples=2 * n + 3).epoch_indices(gen())
    seen = torch.bincount(idx, minlength=n)
    assert len(idx) == 2 * n + 3 and seen.min() == 2 and seen.max() == 3


def test_class_weighted_with_custom_probabilities():
    labels = make_labels()
    idx = ClassWeighted(labels, NUM_CLASSES, torch.tensor([3.0, 0.0, 0.0, 5.0, 1.0]), num_samples=DRAWS).epoch_indices(
        gen()
    )
    # class 3 is empty, so its weight goes to the others: (3, 0, 0, 0, 1) / 4
    expected = torch.tensor([0.75, 0.0, 0.0, 0.0, 0.25], dtype=torch.float64)
    torch.testing.assert_close(class_freq(labels, idx), expected, atol=0.01, rtol=0)


# samplers: the contract every registered one keeps --------------------------------------------


@pytest.fixture(params=sorted(SAMPLERS))
def sampler_name(request) -> str:
    return request.param


@pytest.mark.parametrize("num_samples", [None, 1, 37, 5000])
def test_length_dtype_and_range(sampler_name, num_samples):
    labels = make_labels()
    idx = make_sampler(sampler_name, labels, NUM_CLASSES, num_samples).epoch_indices(gen())
    assert idx.dtype == torch.int64 and idx.dim() == 1
    assert len(idx) == (len(labels) if num_samples is None else num_samples)
    assert idx.min() >= 0 and idx.max() < len(labels)
    assert not (labels[idx] == 3).any()  # the empty class is never drawn


def test_same_seed_same_epoch(sampler_name):
    labels = make_labels()
    sampler = make_sampler(sampler_name, labels, NUM_CLASSES)
    assert torch.equal(sampler.epoch_indices(gen(7)), sampler.epoch_indices(gen(7)))
    assert not torch.equal(sampler.epoch_indices(gen(7)), sampler.epoch_indices(gen(8)))


def test_successive_epochs_differ(sampler_name):
    sampler = make_sampler(sampler_name, make_labels(), NUM_CLASSES)
    g = gen(3)
    assert not torch.equal(sampler.epoch_indices(g), sampler.epoch_indices(g))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cpu_generator_with_cuda_labels(sampler_name):
    labels = make_labels()
    on_cpu = make_sampler(sampler_name, labels, NUM_CLASSES).epoch_indices(gen(5))
    on_gpu = make_sampler(sampler_name, labels.cuda(), NUM_CLASSES).epoch_indices(gen(5))
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), on_cpu)  # the seed, not the data's device, decides the epoch
    cuda_gen = torch.Generator(device="cuda").manual_seed(5)
    assert make_sampler(sampler_name, labels.cuda(), NUM_CLASSES).epoch_indices(cuda_gen).device.type == "cuda"


def test_to_moves_the_indices(sampler_name):
    sampler = make_sampler(sampler_name, make_labels(), NUM_CLASSES)
    expected = sampler.epoch_indices(gen(4))
    assert torch.equal(sampler.to("cpu").epoch_indices(gen(4)), expected)
    moved = sampler.to("meta")  # a device with no data: checks every held tensor moves
    # class_probs stays on the CPU: it is moved to the generator's device at each draw.
    held = [t for k, t in vars(moved).items() if torch.is_tensor(t) and k != "class_probs"]
    assert moved is sampler and held and all(t.device.type == "meta" for t in held)


def test_unknown_sampler_lists_the_valid_names():
    with pytest.raises(LongtailError) as err:
        make_sampler("balanced", make_labels(), NUM_CLASSES)
    assert all(n in err.value.fix for n in SAMPLERS)


def test_bad_labels_are_reported():
    with pytest.raises(LongtailError, match="0..4"):
        make_sampler("class-balanced", torch.tensor([0, 5]), NUM_CLASSES)
    with pytest.raises(LongtailError):
        make_sampler("instance", torch.tensor([], dtype=torch.long), NUM_CLASSES)
    with pytest.raises(LongtailError):
        make_sampler("sqrt", make_labels(), NUM_CLASSES, num_samples=0)


# weights --------------------------------------------------------------------------------------

CIFAR10_LT = ClassCounts.from_profile(5000, 10, 100)
WEIGHTED = [s for s in SCHEMES if s != "none"]


@pytest.mark.parametrize("scheme", WEIGHTED)
def test_weights_sum_to_num_classes_and_favour_rare_classes(scheme):
    w = class_weights(scheme, CIFAR10_LT)
    assert w.shape == (10,) and w.dtype == torch.float32
    assert w.sum().item() == pytest.approx(10.0, rel=1e-6)
    assert (w[1:] > w[:-1]).all()  # counts strictly decrease, so weights strictly increase


def test_none_scheme_is_no_weights():
    assert class_weights("none", CIFAR10_LT) is None


def test_hand_values():
    torch.testing.assert_close(class_weights("inverse", ClassCounts((30, 10))), torch.tensor([0.5, 1.5]))
    # 1/sqrt: (1/10, 1/5) -> x 2 / (3/10)
    torch.testing.assert_close(class_weights("sqrt-inverse", ClassCounts((100, 25))), torch.tensor([2 / 3, 4 / 3]))
    # beta 0.5: (0.5 / 0.5, 0.5 / 0.75) = (1, 2/3) -> x 2 / (5/3)
    torch.testing.assert_close(
        class_weights("class-balanced", ClassCounts((1, 2)), beta=0.5), torch.tensor([1.2, 0.8])
    )


def test_class_balanced_matches_the_reference_formula():
    beta, n = 0.9999, np.array(CIFAR10_LT.counts, dtype=np.float64)
    ref = (1.0 - beta) / (1.0 - np.power(beta, n))
    ref = ref / ref.sum() * len(n)
    torch.testing.assert_close(class_weights("class-balanced", CIFAR10_LT), torch.tensor(ref, dtype=torch.float32))


def test_class_balanced_interpolates_uniform_and_inverse():
    for beta in (0.0, 1e-9):
        torch.testing.assert_close(class_weights("class-balanced", CIFAR10_LT, beta=beta), torch.ones(10))
    near_one = class_weights("class-balanced", CIFAR10_LT, beta=1 - 1e-9)
    torch.testing.assert_close(near_one, class_weights("inverse", CIFAR10_LT), rtol=1e-3, atol=0)
    # in between, the spread of the weights grows with beta
    spreads = [class_weights("class-balanced", CIFAR10_LT, beta=b).max().item() for b in (0.9, 0.99, 0.999, 0.9999)]
    assert spreads == sorted(spreads) and spreads[0] < spreads[-1]


@pytest.mark.parametrize("beta", [-0.1, 1.0, 1.5])
def test_class_balanced_rejects_beta_outside_0_1(beta):
    with pytest.raises(LongtailError, match="beta"):
        class_weights("class-balanced", CIFAR10_LT, beta=beta)


@pytest.mark.parametrize("scheme", WEIGHTED)
def test_zero_count_class_is_reported(scheme):
    with pytest.raises(LongtailError, match="class\\(es\\) 1 have no training examples"):
        class_weights(scheme, ClassCounts((10, 0, 3)))


def test_unknown_scheme_lists_the_valid_ones():
    for build in (
        lambda: class_weights("effective-number", CIFAR10_LT),
        lambda: make_weighting("effective-number", CIFAR10_LT),
        lambda: DeferredReweighting(CIFAR10_LT, "effective-number"),
    ):
        with pytest.raises(LongtailError) as err:
            build()
        assert all(s in err.value.fix for s in SCHEMES)


def test_deferred_reweighting_switches_on_at_start_epoch():
    drw = DeferredReweighting(CIFAR10_LT)  # reference: plain until epoch 160 of 200
    expected = class_weights("class-balanced", CIFAR10_LT)
    assert drw.weight_at(0) is None and drw.weight_at(159) is None
    for epoch in (160, 161, 199):
        torch.testing.assert_close(drw.weight_at(epoch), expected)
    assert DeferredReweighting(CIFAR10_LT, "inverse", start_epoch=0).weight_at(0) is not None


def test_make_weighting():
    constant = make_weighting("sqrt-inverse", CIFAR10_LT)
    assert isinstance(constant, ConstantWeighting)
    torch.testing.assert_close(constant.weight_at(0), class_weights("sqrt-inverse", CIFAR10_LT))
    torch.testing.assert_close(constant.weight_at(199), constant.weight_at(0))
    assert make_weighting("none", CIFAR10_LT).weight_at(5) is None
    drw = make_weighting("class-balanced", CIFAR10_LT, start_epoch=3, beta=0.999)
    assert isinstance(drw, DeferredReweighting) and drw.weight_at(2) is None
    torch.testing.assert_close(drw.weight_at(3), class_weights("class-balanced", CIFAR10_LT, beta=0.999))


def test_the_effective_number_sampler_takes_train_cb_beta():
    """SAMPLER_PARAMS declares the effective-number sampler's beta; the run passes train.cb_beta to it (default
    0.9999, the source's fixed value) and to no other sampler."""
    from longtail.config import RunConfig, TrainConfig
    from longtail.experiment import build_task
    from longtail.samplers import SAMPLER_PARAMS, make_sampler

    from conftest import synthetic_set

    labels = torch.cat([torch.zeros(500, dtype=torch.long), torch.ones(5, dtype=torch.long)])
    assert SAMPLER_PARAMS == {"effective-number": ("beta",)}
    assert make_sampler("effective-number", labels, 2).beta == 0.9999
    assert make_sampler("effective-number", labels, 2, beta=0.99).beta == 0.99
    assert not hasattr(make_sampler("class-balanced", labels, 2, beta=0.5), "beta")
    train = synthetic_set([40, 20, 10, 5])
    cfg = RunConfig(train=TrainConfig(sampler="effective-number", cb_beta=0.999, device="cpu"))
    task = build_task(cfg, train, train.class_counts())
    assert task.sampler.beta == 0.999
