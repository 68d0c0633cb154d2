"""FastNet (longtail.models.fastnet): shapes, patch-whitening initialisation, determinism, a training step;
and the one-cycle schedule (longtail.schedule.onecycle_lr)."""

import pytest
import torch
import torch.nn.functional as F

from longtail import LongtailError
from longtail.models import MODELS, Classifier, FastNet, FlipTTA, init_whitening, make_model
from longtail.models.fastnet import FASTNET_WIDTHS, patch_statistics
from longtail.schedule import onecycle_lr

from conftest import synthetic_set


@pytest.mark.parametrize("arch", sorted(FASTNET_WIDTHS))
def test_registered_and_shapes(arch):
    assert arch in MODELS
    torch.manual_seed(0)
    model = make_model(arch, 10)
    assert isinstance(model, Classifier) and isinstance(model.backbone, FastNet)
    assert model.num_features == FASTNET_WIDTHS[arch][2]
    model.eval()
    for side in (32, 28):
        x = torch.randn(3, 3, side, side)
        assert model(x).shape == (3, 10)
        assert model.features(x).shape == (3, model.num_features)


def test_odd_sizes_channels_and_tiny_images():
    net = FastNet(1, (4, 8, 8)).eval()
    for h, w in ((8, 8), (28, 28), (20, 36), (3, 3)):
        assert net(torch.randn(2, 1, h, w)).shape == (2, 8)
    assert net.whiten.out_channels == 2 * 1 * 4


def test_parameter_counts_of_the_issue():
    # widths 16/64/64 ~ 0.13M and 32/128/128 ~ 0.50M parameters with a 10-class head
    assert sum(p.numel() for p in make_model("fastnet-s", 10).parameters()) == pytest.approx(0.13e6, rel=0.05)
    assert sum(p.numel() for p in make_model("fastnet-m", 10).parameters()) == pytest.approx(0.50e6, rel=0.05)


def test_the_five_and_ten_minute_recipes_differ_from_the_fast_ones_only_in_network_epochs_and_tta():
    from longtail.config import _flat
    from longtail.recipes import FAST_5MIN_EPOCHS, FAST_10MIN_EPOCHS, FAST_10MIN_TTA, get_recipe

    assert FASTNET_WIDTHS["fastnet-sm"] == (24, 96, 128)
    assert sum(p.numel() for p in make_model("fastnet-sm", 10).parameters()) == pytest.approx(0.37e6, rel=0.02)
    for ds in ("cifar10", "cifar100", "svhn"):
        fast, five = (_flat(get_recipe(f"{ds}-lt-fast-la{suffix}").config) for suffix in ("", "-5min"))
        changed = {k for k in fast if fast[k] != five[k]}
        assert changed == {"recipe", "model.arch", "train.epochs"}
        assert (five["model.arch"], five["train.epochs"], five["train.batch_size"]) == \
            ("fastnet-sm", FAST_5MIN_EPOCHS, 256)
        ten = _flat(get_recipe(f"{ds}-lt-fast-la-10min").config)
        # the 10-minute recipe trains as the fast one for longer (its training is the same run), evaluated with
        # airbench's level-2 test-time augmentation
        assert {k for k in fast if fast[k] != ten[k]} == {"recipe", "train.epochs", "model.tta"}
        assert (ten["model.arch"], ten["train.epochs"], ten["model.tta"]) == \
            ("fastnet-m", FAST_10MIN_EPOCHS, "flip-translate") and fast["model.tta"] == "flip"
        assert FAST_10MIN_TTA == "flip-translate"


def test_frozen_whitening_weight_and_batchnorm_scales():
    net = make_model("fastnet-s", 10).backbone
    assert not net.whiten.weight.requires_grad
    assert net.whiten.bias.requires_grad
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6
    assert all(not m.weight.requires_grad and m.bias.requires_grad for m in norms)


def _correlated_images(n=64, side=12, seed=0):
    """Float images with strongly correlated channels and neighbouring pixels, an offset and unequal scales."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, side + 1, side + 1, generator=g)
    smooth = (base[..., 1:, 1:] + base[..., :-1, 1:] + base[..., 1:, :-1] + base[..., :-1, :-1]) / 2
    noise = torch.randn(n, 3, side, side, generator=g) * 0.3
    return torch.cat([smooth * 2 + 1, smooth - 0.5, -smooth * 0.5], 1) + noise


def _whitened_covariance(layer, images):
    out = F.conv2d(images, layer.weight, layer.bias)  # (N, 2D, H', W')
    d = layer.out_channels // 2
    flat = out.permute(0, 2, 3, 1).reshape(-1, 2 * d).double()
    return flat[:, :d].mean(0), torch.cov(flat[:, :d].T), flat


def test_whitening_gives_identity_covariance_on_the_patches():
    images = _correlated_images()
    _, cov_before = patch_statistics(images, 2)
    assert (cov_before - torch.eye(12, dtype=torch.float64)).abs().max() > 0.5  # far from white before
    model = make_model("fastnet-s", 10)
    layer = init_whitening(model, images, eps=1e-6)
    assert layer is model.backbone.whiten
    assert not layer.weight.requires_grad
    mean, cov, flat = _whitened_covariance(layer, images)
    assert mean.abs().max() < 1e-3  # the bias centres the outputs
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=2e-3)
    d = 12
    assert torch.allclose(flat[:, d:], -flat[:, :d], atol=1e-4)  # both signs of every direction


def test_whitening_from_uint8_uses_the_normalisation_of_the_batches():
    train = synthetic_set([30, 10, 5], size=10)
    model = make_model("fastnet-s", 3)
    model.backbone.init_from_data(train.images, mean=train.mean, std=train.std, eps=1e-6)
    seen = (train.images.float() / 255 - 0.5) / 0.25  # what iterate_batches feeds the model (mean .5, std .25)
    mean, cov, _ = _whitened_covariance(model.backbone.whiten, seen)
    assert mean.abs().max() < 1e-3
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=5e-3)


def test_whitening_is_deterministic_and_subsamples_evenly():
    images = _correlated_images(n=40)
    a, b = make_model("fastnet-s", 2), make_model("fastnet-s", 2)
    init_whitening(a, images, max_images=10)  # 10 of the 40, evenly spaced from the first to the last
    init_whitening(b, images[torch.linspace(0, 39, 10).round().long()])
    assert torch.equal(a.backbone.whiten.weight, b.backbone.whiten.weight)
    assert torch.equal(a.backbone.whiten.bias, b.backbone.whiten.bias)
    init_whitening(b, images)
    assert not torch.equal(a.backbone.whiten.weight, b.backbone.whiten.weight)


def test_whitening_rejects_wrong_inputs():
    model = make_model("fastnet-s", 2)
    with pytest.raises(LongtailError):
        init_whitening(model, torch.randn(4, 1, 8, 8))
    with pytest.raises(LongtailError):
        init_whitening(make_model("tiny", 2), torch.randn(4, 3, 8, 8))


def test_identity_first_layer_without_data():
    net = FastNet(3, (4, 8, 8))
    w = net.whiten.weight.reshape(24, 12)
    assert torch.allclose(w[:12] * (1 + 5e-4) ** 0.5, torch.eye(12)) and torch.equal(w[12:], -w[:12])


def test_same_seed_same_model_and_outputs():
    x = torch.randn(4, 3, 32, 32)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        m = make_model("fastnet-s", 10)
        init_whitening(m, _correlated_images(n=16, side=32))
        outs.append((m.state_dict(), m(x)))
    assert all(torch.equal(outs[0][0][k], outs[1][0][k]) for k in outs[0][0])
    assert torch.equal(outs[0][1], outs[1][1])
    torch.manual_seed(8)
    assert not torch.equal(make_model("fastnet-s", 10)(x), outs[0][1])


def test_training_steps_reduce_the_loss():
    train = synthetic_set([24, 12, 6, 6], size=16)
    torch.manual_seed(0)
    model = make_model("fastnet-s", 4)
    model.backbone.init_from_data(train.images, mean=train.mean, std=train.std)
    x = (train.images.float() / 255 - 0.5) / 0.25
    frozen = model.backbone.whiten.weight.clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.2, momentum=0.85, nesterov=True)
    losses = []
    for _ in range(8):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), train.labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model.backbone.whiten.weight.grad is None and torch.equal(model.backbone.whiten.weight, frozen)
    assert losses[-1] < losses[0]


def test_flip_tta_averages_the_two_views():
    torch.manual_seed(0)
    model = make_model("fastnet-s", 5).eval()
    x = torch.randn(2, 3, 16, 16)
    tta = FlipTTA(model)
    assert torch.allclose(tta(x), (model(x) + model(x.flip(3))) / 2)
    assert torch.allclose(tta(x), tta(x.flip(3)), atol=1e-6)
    assert set(tta.state_dict()) == {"model." + k for k in model.state_dict()}


def test_onecycle_triangle():
    lr = [onecycle_lr(e, base_lr=2.0, epochs=10, warmup_epochs=2.5) for e in (0, 1.25, 2.5, 6.25, 10, 12, -1)]
    assert lr == pytest.approx([0.4, 1.2, 2.0, 1.0, 0.0, 0.0, 0.4])
    assert onecycle_lr(5, base_lr=1.0, epochs=10, warmup_epochs=0, start=0.0, end=0.1) == pytest.approx(0.55)
    assert onecycle_lr(0, base_lr=1.0, epochs=4, warmup_epochs=4) == pytest.approx(0.2)
    assert onecycle_lr(4, base_lr=1.0, epochs=4, warmup_epochs=4) == pytest.approx(1.0)
    steps = [onecycle_lr(i / 7, base_lr=1.0, epochs=3, warmup_epochs=0.7) for i in range(21)]
    peak = steps.index(max(steps))
    assert all(a < b for a, b in zip(steps[:peak], steps[1:peak + 1]))
    assert all(a > b for a, b in zip(steps[peak:], steps[peak + 1:]))


def test_fits_with_the_project_loop_in_channels_last():
    from longtail.data.augment import Augment
    from longtail.loop import fit
    from longtail.losses import make_loss
    from longtail.tasks import SupervisedTask

    train = synthetic_set([24, 12, 6, 3], size=12)
    torch.manual_seed(0)
    model = make_model("fastnet-s", 4)
    model.backbone.init_from_data(train.images, mean=train.mean, std=train.std)
    model = model.to(memory_format=torch.channels_last)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("whiten.weight", "norm1.weight"))}
    task = SupervisedTask(train, make_loss("logit-adjust", train.class_counts()), batch_size=16,
                          augment=Augment(crop_padding=2, flip=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.85, nesterov=True, weight_decay=5e-4)
    records = fit(model, task, opt, epochs=3, lr_at=lambda e: onecycle_lr(e, base_lr=0.1, epochs=3, warmup_epochs=1),
                  seed=0, device=torch.device("cpu"), progress=False)
    assert [r.steps for r in records] == [3, 3, 3]
    assert all(torch.isfinite(torch.tensor(r.train_loss)) for r in records)
    assert [r.lr for r in records] == pytest.approx([0.02, 0.1, 0.05])
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())  # frozen: untouched by SGD and weight decay


def test_pretraining_a_fastnet_sets_its_whitening_from_the_training_images_as_a_run_does():
    """Self-supervised pre-training of a FastNet (``longtail pretrain --set model.arch=fastnet-s``) initialises the
    frozen patch whitening from the training images, exactly as a supervised run does, so a backbone pre-trained
    there and fine-tuned here sees the same first layer."""
    from longtail.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from longtail.ssl.run import build_pretraining, resolve_ssl

    train = synthetic_set([30, 10, 5], size=10)
    cfg = RunConfig(data=DataConfig(dataset="synthetic"), model=ModelConfig(arch="fastnet-s"),
                    train=TrainConfig(batch_size=8, device="cpu", crop_padding=1))
    model, _, _ = build_pretraining("rotation", cfg, resolve_ssl("rotation", cfg, None), train, torch.device("cpu"),
                                    log=lambda s: None)
    expected = make_model("fastnet-s", 3).backbone.init_from_data(train.images, mean=train.mean, std=train.std)
    whiten = [m for m in model.modules() if isinstance(m, FastNet)][0].whiten
    assert torch.equal(whiten.weight, expected.whiten.weight) and torch.equal(whiten.bias, expected.whiten.bias)
    assert not torch.equal(whiten.weight, make_model("fastnet-s", 3).backbone.whiten.weight)  # not the identity
