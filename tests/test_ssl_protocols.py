"""Pre-training recipes as their sources run them (issue 13, items 7 and 9): the CIFAR ResNet-18, the balanced-probe
evaluation of Liu et al. (ICLR 2022), the SimSiam recipes on their protocol, MoCo's CIFAR-10 demo defaults."""

import json
from dataclasses import replace

import pytest
import torch

from longtail import LongtailError
from longtail.config import DataConfig, ModelConfig, RunConfig, SSLConfig, TrainConfig
from longtail.data.registry import Splits
from longtail.models import make_backbone, make_model
from longtail.models.resnet18_cifar import RESNET18_CIFAR_PARAMETERS
from longtail.recipes import RECIPES
from longtail.runs import RunDir
from longtail.ssl import MoCo, default_config, default_ssl, linear_probe, pretrain_run
from longtail.ssl import evaluate as ssl_evaluate
from longtail.ssl.run import PretrainStage, balanced_probe_set

from conftest import synthetic_set

pytestmark = pytest.mark.usefixtures("one_thread")


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# the CIFAR ResNet-18
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["resnet18-cifar", "resnet18-cifar-tv"])
def test_cifar_resnet18_has_the_source_parameter_count(arch):
    # Liu et al.'s cifar/simsiam/resnet_cifar.py ResNet18(low_dim=10) (kuangliu's): 11,173,962 parameters, of which
    # fc is 512 x 10 + 10; MoCo's demo (torchvision resnet18, 3x3 conv1) has the same backbone: torchvision's
    # 11,689,512 - fc 513,000 - conv1 7x7x3x64 + 3x3x3x64 = 11,168,832.
    assert RESNET18_CIFAR_PARAMETERS == 11_689_512 - 513_000 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64 == 11_168_832
    backbone = make_backbone(arch)
    assert count(backbone) == RESNET18_CIFAR_PARAMETERS
    assert count(make_model(arch, 10)) == 11_173_962
    assert backbone(torch.zeros(2, 3, 32, 32)).shape == (2, 512) and backbone.out_features == 512
    assert make_backbone(arch, 1)(torch.zeros(2, 1, 8, 8)).shape == (2, 512)  # small / one-channel images too


def test_the_two_spellings_compute_the_same_network():
    """kuangliu's layout (shortcut) and torchvision's (downsample) hold the same tensors in the same order."""
    liu, tv = make_backbone("resnet18-cifar"), make_backbone("resnet18-cifar-tv")
    assert "layer2.0.shortcut.0.weight" in liu.state_dict() and "layer2.0.downsample.0.weight" in tv.state_dict()
    assert tv.conv1.kernel_size == (3, 3) and tv.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in tv.modules())
    a, b = liu.state_dict(), tv.state_dict()
    assert [v.shape for v in a.values()] == [v.shape for v in b.values()]
    tv.load_state_dict(dict(zip(b, a.values())))
    liu.eval()
    tv.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(liu(x), tv(x), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# MoCo's CIFAR-10 demo
# ---------------------------------------------------------------------------------------------
def test_moco_cifar_defaults_are_the_demos():
    # facebookresearch/moco colab/moco_cifar10_demo.ipynb (commit f736491), cell "Set arguments":
    #   parser.add_argument('-a', '--arch', default='resnet18')
    #   parser.add_argument('--lr', '--learning-rate', default=0.06, ...)       # "0.06 for batch 512"
    #   parser.add_argument('--batch-size', default=512, ...); parser.add_argument('--wd', default=5e-4, ...)
    #   parser.add_argument('--moco-dim', default=128, ...); parser.add_argument('--moco-k', default=4096, ...)
    #   parser.add_argument('--moco-m', default=0.99, ...); parser.add_argument('--moco-t', default=0.1, ...)
    #   parser.add_argument('--bn-splits', default=8, ...)
    #   parser.add_argument('--knn-k', default=200, ...); parser.add_argument('--knn-t', default=0.1, ...)
    #   args.epochs = 200; args.cos = True
    # cell "Define data loaders": transforms.RandomResizedCrop(32) -> torchvision's default scale=(0.08, 1.0)
    # cell "Define base encoder": resnet_arch(num_classes=feature_dim) keeps resnet18's fc (512 -> 128): no MLP head
    for method in ("moco", "moco-rwsam"):
        for dataset in ("cifar10", "cifar100"):
            ssl = default_ssl(method, dataset)
            assert (ssl.moco_dim, ssl.moco_queue, ssl.moco_momentum, ssl.moco_temperature) == (128, 4096, 0.99, 0.1)
            assert (ssl.moco_bn_splits, ssl.knn_k, ssl.knn_temperature) == (8, 200, 0.1)
            assert ssl.moco_hidden == 0 and ssl.crop_min_scale == 0.08 and not ssl.blur_prob
            cfg = default_config(method, dataset)
            t = cfg.train
            assert cfg.model.arch == "resnet18-cifar-tv"
            assert (t.epochs, t.batch_size, t.lr, t.weight_decay, t.momentum) == (200, 512, 0.06, 5e-4, 0.9)
            assert t.schedule == "cosine" and t.warmup_epochs == 0
    # ImageNet-LT keeps MoCo v2's settings (the seed's pretrain_moco.py)
    big = default_ssl("moco", "imagenet-lt")
    assert (big.moco_hidden, big.moco_queue, big.moco_momentum, big.moco_temperature) == (2048, 65536, 0.999, 0.2)
    assert big.crop_min_scale == 0.2 and default_config("moco", "imagenet-lt").model.arch == "resnet50"
    # SimSiam on CIFAR keeps its own settings
    assert default_ssl("simsiam").crop_min_scale == 0.2 and default_ssl("simsiam").moco_hidden == 512


def test_moco_linear_head_is_the_demos_encoder():
    """hidden 0: the query encoder is resnet18 with its fc 512 -> 128, 11,234,496 parameters as the demo's encoder_q."""
    model = MoCo(make_backbone("resnet18-cifar-tv"), dim=128, hidden=0, queue_size=64, bn_splits=8)
    assert [type(m) for m in model.projector] == [torch.nn.Linear]
    assert count(model.backbone) + count(model.projector) == RESNET18_CIFAR_PARAMETERS + 512 * 128 + 128
    q = model.query(torch.randn(16, 3, 32, 32))
    assert q.shape == (16, 128) and torch.allclose(q.norm(dim=1), torch.ones(16))
    with pytest.raises(LongtailError):
        SSLConfig(moco_hidden=-1)


# ---------------------------------------------------------------------------------------------
# the balanced probe
# ---------------------------------------------------------------------------------------------
def test_step_schedule_probe_on_raw_features():
    """main_lincls.py's probe: lr 30, x0.1 at 60 % / 80 % of the epochs, features as they are."""
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 3 + 1  # not standardised
    train_labels, test_labels = torch.arange(4).repeat(10), torch.arange(4).repeat(5)
    train = centres[train_labels] + 0.1 * torch.randn(40, 4, generator=g)
    test = centres[test_labels] + 0.1 * torch.randn(20, 4, generator=g)
    logits = linear_probe(train, train_labels, test, 4, epochs=20, lr=30.0, batch_size=8, schedule="step",
                          standardize=False)
    assert (logits.argmax(dim=1) == test_labels).all()
    with pytest.raises(ValueError):
        linear_probe(train, train_labels, test, 4, epochs=1, schedule="linear")


def tiny_run(dataset="synthetic", **ssl) -> tuple[RunConfig, SSLConfig]:
    cfg = RunConfig(recipe="probe-test", data=DataConfig(dataset=dataset, imbalance_ratio=10.0),
                    model=ModelConfig(arch="tiny"),
                    train=TrainConfig(epochs=1, batch_size=16, lr=0.05, device="cpu", checkpoint_every=1,
                                      schedule="cosine", warmup_epochs=0.0))
    return cfg, SSLConfig(simsiam_dim=32, simsiam_pred_hidden=8, probe_epochs=2, knn_k=5, **ssl)


@pytest.fixture
def probe_sizes(monkeypatch):
    """The number of rows the probes and the k-NN are trained on, as representation_report passes them."""
    seen: dict[str, list[int]] = {"probe": [], "knn": []}
    probe, knn = ssl_evaluate.linear_probe, ssl_evaluate.knn_probabilities

    def spy_probe(train_features, *a, **kw):
        seen["probe"].append(train_features.shape[0])
        return probe(train_features, *a, **kw)

    def spy_knn(train_features, *a, **kw):
        seen["knn"].append(train_features.shape[0])
        return knn(train_features, *a, **kw)

    monkeypatch.setattr(ssl_evaluate, "linear_probe", spy_probe)
    monkeypatch.setattr(ssl_evaluate, "knn_probabilities", spy_knn)
    return seen


@pytest.mark.parametrize("probe_data", ["longtailed", "balanced"])
def test_the_probes_learn_from_the_set_probe_data_names(tmp_path, probe_sizes, probe_data):
    train, test = synthetic_set([32, 16, 8, 4]), synthetic_set([6, 6, 6, 6], seed=1, name="test")
    balanced = synthetic_set([20, 20, 20, 20], seed=2, name="balanced")
    cfg, ssl = tiny_run(probe_data=probe_data)
    pretrain_run("simsiam", cfg, tmp_path / "run", ssl=ssl, splits=Splits(train, test), progress=False,
                 probe_set=balanced, log=lambda _: None)
    size = 80 if probe_data == "balanced" else 60
    assert probe_sizes == {"probe": [size, size], "knn": [size]}
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["probe_data"] == probe_data and saved["probe_train_size"] == size
    assert saved["train_counts"] == [32, 16, 8, 4]  # shot groups: still the long-tailed counts
    page = (tmp_path / "run" / "report.md").read_text()
    assert f"ssl.probe_data={probe_data}" in page
    assert ("balanced training set of the same source (80 images, 20 a class)" in page) == (probe_data == "balanced")


@pytest.mark.slow
def test_balanced_probe_data_is_the_sources_balanced_set(tmp_path, probe_sizes):
    """From the config: n_max images of every class of the source (digits: 140; CIFAR-10: all 5,000)."""
    cfg, ssl = tiny_run("digits", probe_data="balanced")
    whole = balanced_probe_set(cfg.data)
    assert tuple(whole.class_counts().counts) == (140,) * 10
    pretrain_run("rotation", replace(cfg, ssl=ssl), tmp_path / "digits", progress=False, log=lambda _: None)
    assert probe_sizes["probe"] == [1400, 1400] and probe_sizes["knn"] == [1400]
    report = json.loads((tmp_path / "digits" / "report.json").read_text())
    assert report["probe_train_size"] == 1400 and report["train_size"] < 1400


def test_balanced_probe_data_needs_a_balanced_source(tmp_path):
    cfg, ssl = tiny_run("imagenet-lt", probe_data="balanced")
    with pytest.raises(LongtailError, match="probe_data=balanced"):
        PretrainStage("moco", cfg, ssl, RunDir(tmp_path / "x"))


# ---------------------------------------------------------------------------------------------
# the recipes
# ---------------------------------------------------------------------------------------------
def test_simsiam_recipes_follow_liu_et_al():
    for method in ("simsiam", "simsiam-rwsam"):
        liu = RECIPES[f"cifar10-lt-{method}"]
        cfg, ssl = liu.config, liu.config.ssl
        assert liu.pretrain == method and cfg.model.arch == "resnet18-cifar"
        # README: --arch resnet18 --learning_rate 0.06 --epochs 1600 --weight_decay 5e-4 --momentum 0.9 --batch_size 512
        t = cfg.train
        assert (t.epochs, t.batch_size, t.lr, t.weight_decay, t.momentum, t.schedule) == \
            (1600, 512, 0.06, 5e-4, 0.9, "cosine")
        # main_lincls.py: --epochs 100, -b 256, --lr 30, --schedule 60 80, --wd 0, on the balanced CIFAR-10
        assert (ssl.probe_data, ssl.probe_epochs, ssl.probe_batch_size, ssl.probe_lr) == ("balanced", 100, 256, 30.0)
        assert ssl.probe_schedule == "step" and not ssl.probe_standardize
        # main_lincls.py: RandomResizedCrop(32, scale=(0.8, 1)) + flip every epoch, the model in eval mode
        assert ssl.probe_augment
        # lines 260-273: that crop BICUBIC; the test images Resize(int(32 * 8 / 7), BICUBIC) and CenterCrop(32)
        assert (ssl.probe_interpolation, ssl.probe_test_resize) == ("bicubic", 36)
        # main_sam_weight.py: --rho 0.5, --adaptive True; crop scale (0.2, 1), 2-layer 2048-d projector
        assert (ssl.sam_rho, ssl.sam_adaptive, ssl.crop_min_scale, ssl.simsiam_dim, ssl.simsiam_proj_layers) == \
            (0.5, True, 0.2, 2048, 2)
        r32 = RECIPES[f"cifar10-lt-{method}-r32"].config
        assert r32.model.arch == "resnet32" and r32.ssl.probe_data == "longtailed" and r32.train.epochs == 800
        assert not r32.ssl.probe_augment
        assert (r32.ssl.probe_interpolation, r32.ssl.probe_test_resize) == ("bilinear", 0)
    assert "14.4" in RECIPES["cifar10-lt-simsiam-rwsam"].published
    assert RECIPES["cifar10-lt-moco"].config == replace(default_config("moco", "cifar10"), recipe="cifar10-lt-moco")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10-lt-simsiam", "cifar10-lt-simsiam-rwsam", "cifar10-lt-moco"])
def test_protocol_recipes_build_and_take_one_step(name):
    from test_recipes_smoke import pretrain_step

    recipe = RECIPES[name]
    cfg = replace(recipe.config, train=replace(recipe.config.train, device="cpu", batch_size=8))
    pretrain_step(recipe, cfg, Splits(synthetic_set([6, 4, 3, 2] + [1] * 6, size=32),
                                      synthetic_set([1] * 10, size=32, seed=1)))


def test_a_run_folder_from_before_the_probe_settings_resumes(tmp_path):
    cfg, ssl = tiny_run()
    out = tmp_path / "old"
    pretrain_run("simsiam", cfg, out, ssl=ssl, splits=Splits(synthetic_set([8, 4]), synthetic_set([2, 2], seed=1)),
                 progress=False, stop_after=1, log=lambda _: None)
    saved = json.loads((out / "config.json").read_text())
    for key in ("probe_data", "probe_schedule", "probe_standardize"):
        del saved["pretrain"]["ssl"][key]
        saved.get("ssl", {}).pop(key, None)
    (out / "config.json").write_text(json.dumps(saved))
    stage = PretrainStage("simsiam", cfg, ssl, RunDir(out))
    assert stage.same(stage.members[0])()
    assert not PretrainStage("simsiam", cfg, replace(ssl, probe_schedule="step"), RunDir(out)).same(stage.members[0])()


def test_sam_bn_stats_both_lets_the_descent_pass_update_batchnorm():
    """Liu et al.'s rwSAM code runs both SAM passes in train mode (ssl.sam_bn_stats=both); first freezes the
    running statistics in the descent pass (davda54/sam). The Liu recipe uses both."""
    from longtail.data.augment import Augment
    from longtail.models import make_model
    from longtail.recipes import get_recipe
    from longtail.ssl.tasks import RotationTask

    from conftest import synthetic_set

    assert get_recipe("cifar10-lt-simsiam-rwsam").config.ssl.sam_bn_stats == "both"
    assert get_recipe("cifar10-lt-simsiam-rwsam-r32").config.ssl.sam_bn_stats == "first"
    train = synthetic_set([8, 8], size=8)
    model = make_model("resnet8", 4)
    task = RotationTask(train, batch_size=8, augment=Augment(crop_padding=0, flip=False), mode="all")
    batch = next(iter(task.batches(0, torch.Generator().manual_seed(0))))
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    model.train()
    for freeze, changes in ((True, False), (False, True)):
        task.freeze_bn_in_descent = freeze
        task.set_phase("descent")
        before = bn.running_mean.clone()
        task.loss(model, batch)
        assert (not torch.equal(before, bn.running_mean)) == changes
    task.set_phase("plain")


# ---------------------------------------------------------------------------------------------
# the augmented probe (ssl.probe_augment; Liu et al.'s main_lincls.py, commit 9783c43, lines 260-267 and 350)
# ---------------------------------------------------------------------------------------------
def _linear_probe_before(train_features, train_labels, test_features, num_classes, *, balanced=False, epochs=100,
                         lr=0.1, batch_size=256, weight_decay=0.0, seed=0, schedule="cosine", standardize=True):
    """``linear_probe`` as it was before ``probe_augment`` (verbatim but for the checks), the reference of the
    default path."""
    import torch.nn.functional as F

    from longtail.counts import ClassCounts
    from longtail.weights import class_weights

    dev = train_features.device
    mean, std = train_features.mean(dim=0), train_features.std(dim=0).clamp_min(1e-6)
    if not standardize:
        mean, std = torch.zeros_like(mean), torch.ones_like(std)
    x = (train_features - mean) / std
    y = train_labels.to(dev).long()
    weight = None
    if balanced:
        weight = class_weights("inverse", ClassCounts.from_labels(y, num_classes)).to(dev)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = torch.nn.Linear(x.shape[1], num_classes).to(dev)
    opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = -(-x.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    milestones = (round(0.6 * epochs), round(0.8 * epochs))
    with torch.enable_grad():
        for epoch in range(epochs):
            if schedule == "step":
                for group in opt.param_groups:
                    group["lr"] = lr * 0.1 ** sum(epoch >= m for m in milestones)
            order = torch.randperm(x.shape[0], generator=g).to(dev)
            for start in range(0, x.shape[0], batch_size):
                idx = order[start:start + batch_size]
                loss = F.cross_entropy(layer(x[idx]), y[idx], weight=weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if schedule == "cosine":
                    sched.step()
    with torch.no_grad():
        return layer((test_features.to(dev) - mean) / std).float()


def _tiny_backbone(seed=0):
    torch.manual_seed(seed)
    return make_model("tiny", 1, in_channels=3).backbone


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("schedule,standardize", [("cosine", True), ("step", False)])
def test_the_default_probe_is_unchanged(schedule, standardize):
    """probe_augment=false: linear_probe, and the report's two probes, give bit for bit what they gave before."""
    g = torch.Generator().manual_seed(3)
    train_labels = torch.tensor([0] * 20 + [1] * 8 + [2] * 4)
    train, test = torch.randn(32, 6, generator=g) + train_labels[:, None], torch.randn(12, 6, generator=g)
    for balanced in (False, True):
        kw = dict(balanced=balanced, epochs=7, lr=0.5, batch_size=5, seed=4, schedule=schedule, standardize=standardize)
        assert torch.equal(linear_probe(train, train_labels, test, 3, **kw),
                           _linear_probe_before(train, train_labels, test, 3, **kw))
    # the report: its probes on the backbone's un-augmented features, as before
    from longtail.loop import extract_features
    from longtail.metrics import summarize

    data, test_set = synthetic_set([12, 6, 3]), synthetic_set([4, 4, 4], seed=1, name="test")
    backbone = _tiny_backbone()
    report = ssl_evaluate.representation_report(backbone, data, test_set, torch.device("cpu"), probe_epochs=3,
                                                probe_batch_size=4, seed=5, knn_k=3, probe_schedule=schedule,
                                                probe_standardize=standardize)
    f_train, f_test = (extract_features(backbone, d, torch.device("cpu")) for d in (data, test_set))
    for name, balanced in (("linear_probe", False), ("linear_probe_balanced", True)):
        logits = _linear_probe_before(f_train, data.labels, f_test, 3, balanced=balanced, epochs=3, lr=0.1,
                                      batch_size=4, seed=5, schedule=schedule, standardize=standardize)
        assert report[name] == summarize(logits, test_set.labels, data.class_counts(), class_names=test_set.class_names)


def test_probes_side_by_side_are_each_probe_alone():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 9 + [1] * 3)
    train, test = torch.randn(12, 4, generator=g), torch.randn(5, 4, generator=g)
    views = [torch.randn(12, 4, generator=g) for _ in range(3)]
    kw = dict(epochs=3, lr=0.3, batch_size=5, seed=2, epoch_features=lambda e: views[e])
    both = ssl_evaluate.linear_probes(train, labels, test, 2, balanced=(False, True), **kw)
    assert [torch.equal(a, linear_probe(train, labels, test, 2, balanced=b, **kw)) for a, b in
            zip(both, (False, True))] == [True, True]
    assert not torch.equal(both[0], linear_probe(train, labels, test, 2, epochs=3, lr=0.3, batch_size=5, seed=2))
    with pytest.raises(ValueError, match="shape"):
        linear_probe(train, labels, test, 2, epochs=1, epoch_features=lambda e: views[0][:5])


def test_augmented_features_are_seeded_and_leave_the_backbone_alone():
    data, cpu = synthetic_set([10, 6], size=8), torch.device("cpu")
    backbone = _tiny_backbone()
    backbone.train()  # the caller's mode: restored, and BatchNorm's statistics untouched all the same
    before = _state(backbone)
    gen = ssl_evaluate.probe_generator
    a = ssl_evaluate.augmented_features(backbone, data, gen(7, 0, cpu), cpu, batch_size=6)
    b = ssl_evaluate.augmented_features(backbone, data, gen(7, 0, cpu), cpu, batch_size=6)
    assert backbone.training and all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert a.shape == (16, backbone.out_features) and not a.requires_grad
    assert torch.equal(a, b)  # the same (seed, epoch): the same views
    assert not torch.equal(a, ssl_evaluate.augmented_features(backbone, data, gen(7, 1, cpu), cpu, batch_size=6))
    assert not torch.equal(a, ssl_evaluate.augmented_features(backbone, data, gen(8, 0, cpu), cpu, batch_size=6))
    from longtail.loop import epoch_generator, extract_features

    plain = extract_features(backbone, data, cpu)
    assert not torch.allclose(a, plain, atol=1e-4)
    # a stream apart from the pre-training loop's generator of the same (seed, epoch)
    assert not torch.equal(torch.rand(4, generator=gen(7, 0, cpu)), torch.rand(4, generator=epoch_generator(7, 0, cpu)))
    # with the crop the identity (scale 1, aspect 1: min_scale 1 draws s = 1) and no mirror, they are the plain features
    monkey = pytest.MonkeyPatch()
    try:
        monkey.setattr(ssl_evaluate, "random_resized_crop", lambda x, g, **kw: x)
        same = ssl_evaluate.augmented_features(backbone, data, gen(7, 0, cpu), cpu, batch_size=6)
    finally:
        monkey.undo()
    assert torch.allclose(same, plain, atol=1e-5)


@pytest.fixture
def probe_crops(monkeypatch):
    """The rows that pass through the probe's crop, and the test features the probes are scored on."""
    seen: dict[str, list] = {"crop": [], "test": []}
    crop, probes = ssl_evaluate.random_resized_crop, ssl_evaluate.linear_probes

    def spy_crop(x, generator, **kw):
        seen["crop"].append((x.shape[0], kw))
        return crop(x, generator, **kw)

    def spy_probes(train_features, train_labels, test_features, *a, **kw):
        seen["test"].append(test_features)
        return probes(train_features, train_labels, test_features, *a, **kw)

    monkeypatch.setattr(ssl_evaluate, "random_resized_crop", spy_crop)
    monkeypatch.setattr(ssl_evaluate, "linear_probes", spy_probes)
    return seen


def test_the_augmented_report_is_seeded_and_augments_only_the_probe_training_images(probe_crops):
    from longtail.loop import extract_features

    data, test_set, cpu = synthetic_set([12, 6, 3]), synthetic_set([4, 4, 4], seed=1, name="test"), torch.device("cpu")
    backbone = _tiny_backbone()
    before = _state(backbone)
    kw = dict(probe_epochs=3, probe_batch_size=4, knn_k=3, probe_schedule="step", probe_standardize=False)
    first = ssl_evaluate.representation_report(backbone, data, test_set, cpu, seed=5, probe_augment=True, **kw)
    # three probe epochs over the 21 training images, one crop of 0.8-1 of the area each, both probes at once
    assert probe_crops["crop"] == [(21, {"min_scale": 0.8, "flip": True, "interpolation": "bilinear"})] * 3
    assert all(torch.equal(t, extract_features(backbone, test_set, cpu)) for t in probe_crops["test"])
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    again = ssl_evaluate.representation_report(backbone, data, test_set, cpu, seed=5, probe_augment=True, **kw)
    assert again == first
    plain = ssl_evaluate.representation_report(backbone, data, test_set, cpu, seed=5, **kw)
    assert plain["knn"] == first["knn"]  # the k-NN: un-augmented features
    assert len(probe_crops["crop"]) == 6  # the plain report crops nothing


def test_augmented_probe_logits_depend_on_the_seed_and_differ_from_the_plain_probe():
    data, test_set, cpu = synthetic_set([12, 6, 3]), synthetic_set([4, 4, 4], seed=1, name="test"), torch.device("cpu")
    backbone = _tiny_backbone()
    from longtail.loop import extract_features

    f_train, f_test = extract_features(backbone, data, cpu), extract_features(backbone, test_set, cpu)

    def probe(seed, augment):
        views = ((lambda e: ssl_evaluate.augmented_features(backbone, data, ssl_evaluate.probe_generator(seed, e, cpu),
                                                            cpu)) if augment else None)
        return ssl_evaluate.linear_probes(f_train, data.labels, f_test, 3, epochs=3, batch_size=4, seed=seed,
                                          epoch_features=views)

    a = probe(5, True)
    assert all(torch.equal(x, y) for x, y in zip(a, probe(5, True)))
    assert not any(torch.equal(x, y) for x, y in zip(a, probe(5, False)))
    assert not any(torch.equal(x, y) for x, y in zip(a, probe(6, True)))


@pytest.mark.parametrize("probe_data", ["longtailed", "balanced"])
def test_pretrain_with_an_augmented_probe(tmp_path, probe_crops, probe_data):
    train, test = synthetic_set([32, 16, 8, 4]), synthetic_set([6, 6, 6, 6], seed=1, name="test")
    balanced = synthetic_set([20, 20, 20, 20], seed=2, name="balanced")
    cfg, ssl = tiny_run(probe_data=probe_data, probe_augment=True)
    pretrain_run("simsiam", cfg, tmp_path / "run", ssl=ssl, splits=Splits(train, test), progress=False,
                 probe_set=balanced, log=lambda _: None)
    size = 80 if probe_data == "balanced" else 60
    assert [rows for rows, _ in probe_crops["crop"]] == [size] * ssl.probe_epochs
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["probe_augment"] is True and saved["ssl"]["probe_augment"] is True
    assert "augmented afresh every epoch" in saved["evaluation"]
    assert "ssl.probe_augment=true" in (tmp_path / "run" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# the probe's bicubic crop and the test images' resize (ssl.probe_interpolation, ssl.probe_test_resize;
# main_lincls.py at 9783c43, lines 260-273), against torchvision + Pillow as main_lincls.py runs them
# ---------------------------------------------------------------------------------------------
def _test_images(n=6, height=32, width=32):
    """Random 8-bit images and smooth ones (the kernel's overshoot is clamped on the first, rare on the second)."""
    g = torch.Generator().manual_seed(11)
    rough = torch.randint(0, 256, (n, 3, height, width), generator=g, dtype=torch.uint8)
    smooth = torch.nn.functional.avg_pool2d(rough.float(), 5, 1, 2).round().to(torch.uint8)
    return torch.cat([rough, smooth])


def _pil(image):
    from PIL import Image

    return Image.fromarray(image.permute(1, 2, 0).numpy())


def _tensor(pil_image):
    import numpy as np

    return torch.from_numpy(np.array(pil_image)).permute(2, 0, 1).float()


def _assert_pil_levels(ours, reference):
    """``ours`` (floats in [0, 1]) against Pillow's 8-bit result: at most one level apart, nearly always equal (the
    implementation follows Pillow's fixed-point arithmetic; equal on every image here when written)."""
    diff = (ours * 255 - reference).abs()
    assert diff.max() <= 1 + 1e-3
    assert (diff > 1e-3).float().mean() <= 1e-3


def test_pil_bicubic_kernel_is_not_torchs():
    """PIL's bicubic has a = -0.5 (Resample.c, bicubic_filter); torch's grid_sample bicubic has a = -0.75."""
    from longtail.ssl.augment import PIL_BICUBIC_A, _cubic

    impulse = torch.zeros(1, 1, 1, 9)
    impulse[..., 4] = 1.0
    x = (4.5 + 0.5) / 9 * 2 - 1  # half a pixel right of the impulse, align_corners=False
    torch_value = torch.nn.functional.grid_sample(impulse, torch.tensor([[[[x, 0.0]]]]), mode="bicubic",
                                                  align_corners=False).item()
    assert PIL_BICUBIC_A == -0.5
    assert torch_value == pytest.approx(_cubic(torch.tensor(0.5), -0.75).item()) == pytest.approx(0.59375)
    assert _cubic(torch.tensor(0.5)).item() == pytest.approx(0.5625)


def test_bicubic_crop_is_pils_resize_of_the_crop():
    pytest.importorskip("PIL")
    from PIL import Image

    from longtail.ssl.augment import bicubic_resample, bicubic_weights

    images = _test_images()
    x, b = images.float() / 255, images.shape[0]

    def side(lo, hi, size, out):
        return bicubic_weights(torch.full((b,), float(lo)), torch.full((b,), float(hi)), size, out)

    # the whole image at its own size: the identity, bit for bit
    assert torch.equal(bicubic_resample(x, side(0, 32, 32, 32), side(0, 32, 32, 32)), x)
    # whole-pixel boxes (left, top, right, bottom) as RandomResizedCrop draws them: PIL's crop, then resize
    for box in [(0, 0, 32, 32), (3, 2, 30, 29), (5, 0, 31, 27), (0, 4, 26, 32), (7, 6, 32, 32), (2, 3, 28, 31)]:
        left, top, right, bottom = box
        ours = bicubic_resample(x, side(top, bottom, 32, 32), side(left, right, 32, 32))
        reference = torch.stack([_tensor(_pil(im).crop(box).resize((32, 32), Image.BICUBIC)) for im in images])
        _assert_pil_levels(ours, reference)
    # a different box for every image of the batch, non-square images, another output size
    tall = _test_images(3, 40, 28)
    boxes = [(2, 3, 27, 39), (0, 0, 28, 40), (5, 1, 20, 30), (1, 7, 26, 33), (0, 2, 24, 36), (3, 3, 28, 38)]
    lo_y, hi_y = torch.tensor([float(bx[1]) for bx in boxes]), torch.tensor([float(bx[3]) for bx in boxes])
    lo_x, hi_x = torch.tensor([float(bx[0]) for bx in boxes]), torch.tensor([float(bx[2]) for bx in boxes])
    ours = bicubic_resample(tall.float() / 255, bicubic_weights(lo_y, hi_y, 40, 44),
                            bicubic_weights(lo_x, hi_x, 28, 30))
    reference = torch.stack([_tensor(_pil(im).crop(bx).resize((30, 44), Image.BICUBIC)) for im, bx in zip(tall, boxes)])
    _assert_pil_levels(ours, reference)


def test_bicubic_random_resized_crop_is_torchvisions_on_the_drawn_boxes():
    """The same draws as the bilinear crop, a whole-pixel box from them (transcribed here), then torchvision's
    resized_crop + hflip of the PIL image with BICUBIC, as main_lincls.py's RandomResizedCrop + RandomHorizontalFlip."""
    import math

    tv = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode

    from longtail.ssl.augment import random_resized_crop

    images = _test_images()
    n = images.shape[0]
    ours = random_resized_crop(images.float() / 255, torch.Generator().manual_seed(3), min_scale=0.8,
                               interpolation="bicubic")
    g = torch.Generator().manual_seed(3)
    s, log_r, ux, uy, coin = (torch.rand(n, generator=g) for _ in range(5))
    s, log_r = 0.8 + 0.2 * s, math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * log_r
    ux, uy = 2 * ux - 1, 2 * uy - 1
    reference = []
    for i in range(n):
        w = int((torch.sqrt(s[i] * log_r[i].exp()).clamp(max=1.0) * 32).round())
        h = int((torch.sqrt(s[i] / log_r[i].exp()).clamp(max=1.0) * 32).round())
        left = min(int((ux[i] + 1) / 2 * (32 - w + 1)), 32 - w)  # uniform over 0 .. 32 - w
        top = min(int((uy[i] + 1) / 2 * (32 - h + 1)), 32 - h)
        image = tv.resized_crop(_pil(images[i]), top, left, h, w, [32, 32], InterpolationMode.BICUBIC)
        reference.append(_tensor(tv.hflip(image) if coin[i] < 0.5 else image))
    _assert_pil_levels(ours, torch.stack(reference))
    # the same draws: on the smooth images the bilinear crop of the same seed is close, another seed's is not
    smooth = images[n // 2:].float() / 255
    bicubic = random_resized_crop(smooth, torch.Generator().manual_seed(3), min_scale=0.8, interpolation="bicubic")
    gap = [(random_resized_crop(smooth, torch.Generator().manual_seed(seed), min_scale=0.8) - bicubic).abs().mean()
           for seed in (3, 4)]
    assert gap[0] < 0.025 < gap[1]
    with pytest.raises(ValueError, match="interpolation"):
        random_resized_crop(images.float() / 255, g, interpolation="nearest")


def _random_resized_crop_before(x, generator, *, min_scale=0.2, flip=True, size=None):
    """``random_resized_crop`` as it was before ``interpolation`` (verbatim), the reference of the default."""
    import math

    from longtail.ssl.augment import _coin, _uniform

    b, _, h, w = x.shape
    out_h, out_w = size or (h, w)
    dev = x.device
    s = _uniform(min_scale, 1.0, (b,), generator, dev)
    log_r = _uniform(math.log(3 / 4), math.log(4 / 3), (b,), generator, dev)
    fw = (s * log_r.exp()).sqrt().clamp(max=1.0)
    fh = (s / log_r.exp()).sqrt().clamp(max=1.0)
    cx = _uniform(-1.0, 1.0, (b,), generator, dev) * (1 - fw)
    cy = _uniform(-1.0, 1.0, (b,), generator, dev) * (1 - fh)
    sign = torch.where(_coin(0.5, b, generator, dev), -1.0, 1.0) if flip else torch.ones(b, device=dev)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = fw * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = fh
    theta[:, 1, 2] = cy
    grid = torch.nn.functional.affine_grid(theta, [b, x.shape[1], out_h, out_w], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@pytest.mark.parametrize("flip,size", [(True, None), (False, None), (True, (12, 20))])
def test_the_default_crop_is_unchanged(flip, size):
    from longtail.ssl.augment import random_resized_crop

    x = _test_images().float() / 255
    for min_scale in (0.2, 0.8):
        ours = random_resized_crop(x, torch.Generator().manual_seed(4), min_scale=min_scale, flip=flip, size=size)
        assert torch.equal(ours, _random_resized_crop_before(x, torch.Generator().manual_seed(4), min_scale=min_scale,
                                                             flip=flip, size=size))


def test_resize_center_crop_is_torchvisions_resize_and_center_crop():
    pytest.importorskip("PIL")
    import torchvision.transforms as T

    from longtail.ssl.augment import resize_center_crop

    # main_lincls.py, line 269-270: Resize(int(32 * (8 / 7)), interpolation=BICUBIC), CenterCrop(32), on PIL images
    liu = T.Compose([T.Resize(int(32 * (8 / 7)), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32)])
    images = _test_images()
    ours = resize_center_crop(images.float() / 255, 36)
    assert ours.shape == images.shape
    _assert_pil_levels(ours, torch.stack([_tensor(liu(_pil(im))) for im in images]))
    # non-square: the shorter side to 36, the longer in proportion, an odd margin (rounded as CenterCrop)
    tall = _test_images(3, 40, 28)
    other = T.Compose([T.Resize(36, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop((45, 27))])
    _assert_pil_levels(resize_center_crop(tall.float() / 255, 36, (45, 27)),
                       torch.stack([_tensor(other(_pil(im))) for im in tall]))
    with pytest.raises(ValueError, match="does not fit"):
        resize_center_crop(images.float() / 255, 30)


def test_scored_features_resize_only_when_asked():
    from longtail.loop import extract_features
    from longtail.ssl.augment import resize_center_crop

    data, cpu = synthetic_set([6, 4], size=8), torch.device("cpu")
    backbone = _tiny_backbone()
    backbone.train()
    before = _state(backbone)
    assert torch.equal(ssl_evaluate.scored_features(backbone, data, cpu), extract_features(backbone, data, cpu))
    resized = ssl_evaluate.scored_features(backbone, data, cpu, resize=9, batch_size=4)
    assert backbone.training and all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    backbone.eval()
    m, s = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = backbone((resize_center_crop(data.images.float() / 255, 9) - m) / s)
    assert torch.allclose(resized, expected, atol=1e-5)
    assert not torch.allclose(resized, extract_features(backbone, data, cpu), atol=1e-4)


def test_the_report_scores_resized_test_images_and_crops_bicubically(probe_crops, monkeypatch):
    data, test_set, cpu = synthetic_set([12, 6, 3]), synthetic_set([4, 4, 4], seed=1, name="test"), torch.device("cpu")
    knn_tests = []
    knn = ssl_evaluate.knn_probabilities

    def spy_knn(train_features, train_labels, test_features, *a, **kw):
        knn_tests.append(test_features)
        return knn(train_features, train_labels, test_features, *a, **kw)

    monkeypatch.setattr(ssl_evaluate, "knn_probabilities", spy_knn)
    backbone = _tiny_backbone()
    kw = dict(probe_epochs=2, probe_batch_size=4, knn_k=3, probe_schedule="step", probe_standardize=False, seed=5,
              probe_augment=True)
    report = ssl_evaluate.representation_report(backbone, data, test_set, cpu, probe_interpolation="bicubic",
                                                probe_test_resize=9, **kw)
    assert probe_crops["crop"] == [(21, {"min_scale": 0.8, "flip": True, "interpolation": "bicubic"})] * 2
    resized = ssl_evaluate.scored_features(backbone, test_set, cpu, resize=9)
    assert torch.equal(probe_crops["test"][0], resized) and torch.equal(knn_tests[0], resized)
    assert report["linear_probe"]["top1"] >= 0
    from longtail.loop import extract_features

    ssl_evaluate.representation_report(backbone, data, test_set, cpu, **kw)  # the defaults: the test images as they are
    as_they_are = extract_features(backbone, test_set, cpu)
    assert torch.equal(knn_tests[1], as_they_are) and not torch.equal(as_they_are, resized)


def test_the_new_probe_settings_are_checked():
    from longtail.config import PROBE_INTERPOLATIONS
    from longtail.ssl.augment import INTERPOLATIONS

    assert PROBE_INTERPOLATIONS == INTERPOLATIONS
    assert SSLConfig().probe_interpolation == "bilinear" and SSLConfig().probe_test_resize == 0
    with pytest.raises(LongtailError, match="probe_interpolation"):
        SSLConfig(probe_interpolation="nearest")
    with pytest.raises(LongtailError, match="probe_test_resize"):
        SSLConfig(probe_test_resize=-1)


def test_a_test_resize_smaller_than_the_images_stops_before_training(tmp_path):
    cfg, ssl = tiny_run(probe_test_resize=6)  # 8 px images
    with pytest.raises(LongtailError, match="probe_test_resize=6"):
        pretrain_run("simsiam", cfg, tmp_path / "run", ssl=ssl, progress=False, log=lambda _: None,
                     splits=Splits(synthetic_set([8, 4]), synthetic_set([2, 2], seed=1)))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_pretrain_with_liu_et_al_test_images(tmp_path, probe_crops):
    train, test = synthetic_set([32, 16, 8, 4]), synthetic_set([6, 6, 6, 6], seed=1, name="test")
    cfg, ssl = tiny_run(probe_augment=True, probe_interpolation="bicubic", probe_test_resize=9)
    pretrain_run("simsiam", cfg, tmp_path / "run", ssl=ssl, splits=Splits(train, test), progress=False,
                 log=lambda _: None)
    assert [kw["interpolation"] for _, kw in probe_crops["crop"]] == ["bicubic"] * ssl.probe_epochs
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert (saved["probe_interpolation"], saved["probe_test_resize"]) == ("bicubic", 9)
    assert "resized crop (bicubic)" in saved["evaluation"] and "resized to 9 px" in saved["evaluation"]
    assert "ssl.probe_test_resize=9" in (tmp_path / "run" / "report.md").read_text()
