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
        # main_sam_weight.py: --rho 0.5, --adaptive True; crop scale (0.2, 1), 2-layer 2048-d projector
        assert (ssl.sam_rho, ssl.sam_adaptive, ssl.crop_min_scale, ssl.simsiam_dim, ssl.simsiam_proj_layers) == \
            (0.5, True, 0.2, 2048, 2)
        r32 = RECIPES[f"cifar10-lt-{method}-r32"].config
        assert r32.model.arch == "resnet32" and r32.ssl.probe_data == "longtailed" and r32.train.epochs == 800
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
