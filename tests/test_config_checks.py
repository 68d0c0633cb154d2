"""Settings are checked once, when a RunConfig is built: dotted name, bad value and a fix."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from longtail import config as config_module
from longtail.config import (
    DataConfig,
    LossConfig,
    ModelConfig,
    RunConfig,
    SSLConfig,
    TrainConfig,
    apply_overrides,
    config_differences,
    config_from_file,
    config_to_toml,
    override_keys,
)
from longtail.errors import LongtailError

# (dotted key, value as --set gives it): each must be refused, naming the key.
BAD_SETTINGS = [
    ("train.epochs", "0"),
    ("train.epochs", "-3"),
    ("train.batch_size", "0"),
    ("train.lr", "0"),
    ("train.lr", "nan"),
    ("train.lr", "inf"),
    ("train.momentum", "1"),
    ("train.momentum", "-0.1"),
    ("train.weight_decay", "-1e-4"),
    ("train.weight_decay", "nan"),
    ("train.warmup_epochs", "-1"),
    ("train.milestones", "160,nan"),
    ("train.milestones", "-5,180"),
    ("train.drw_start", "-1"),
    ("train.epochs", "1000000000"),  # per-epoch schedules are lists: a huge count hung --show-config
    ("train.cb_beta", "1"),
    ("train.crop_padding", "-1"),
    ("train.checkpoint_every", "0"),
    ("train.eval_every", "-1"),
    ("semi.pseudo_weight", "nan"),
    ("semi.labeled_fraction", "0"),
    ("semi.labeled_fraction", "1.5"),
    ("mfw.strength", "-0.5"),
    ("mfw.lam_min", "1.1"),
    ("semi.threshold", "1.01"),
    ("semi.mu", "0"),
    ("semi.lambda_u", "-1"),
    ("semi.la_tau", "nan"),
    ("train.schedule", "linear"),
    ("train.sampler", "balanced"),
    ("train.weighting", "effective-number"),
    ("train.device", "gpu"),
    ("train.device", "cuda:x"),
    ("train.amp", "fp16"),
    ("train.channels_last", "yes"),
    ("train.compile", "fast"),
    ("train.engine", "graphs"),
    ("semi.method", "mixmatch"),
    ("semi.alignment", "dal"),
    ("data.imbalance_ratio", "nan"),
    ("data.imbalance_ratio", "0.5"),
    ("data.imbalance_ratio", "inf"),
    ("data.n_max", "0"),
    ("data.val_per_class", "-1"),
    ("data.profile", "linear"),
    ("data.protocol", "ssl"),
    ("data.on_bad_image", "ignore"),
    ("data.darp_n1", "0"),
    ("data.darp_m1", "-1"),
    ("data.darp_gamma_l", "0.5"),
    ("data.darp_gamma_u", "nan"),
    ("data.pseudo_threshold", "1.5"),
    ("data.image_size", "0"),
    ("data.num_workers", "-1"),
    ("model.head", "mlp"),
    ("loss.name", "cross-entropy"),
    ("ssl.crop_min_scale", "0"),
    ("ssl.jitter_prob", "nan"),
    ("ssl.hue", "0.7"),
    ("ssl.blur_prob", "2"),
    ("ssl.moco_queue", "0"),
    ("ssl.moco_momentum", "1.5"),
    ("ssl.moco_temperature", "0"),
    ("ssl.sam_rho", "-0.1"),
    ("ssl.rw_weights", "density"),
    ("ssl.kde_bandwidth", "0"),
    ("ssl.knn_k", "0"),
    ("ssl.probe_lr", "nan"),
    ("seed", "-1"),
]


# (loss, its parameter, bad value): a loss's own parameters are checked as the other settings are.
BAD_LOSS_PARAMS = [
    ("focal", "loss.gamma", "-1"),
    ("ldam", "loss.max_margin", "-0.5"),
    ("ldam", "loss.scale", "0"),
    ("logit-adjust", "loss.tau", "nan"),
    ("cdt", "loss.gamma", "-0.2"),
]


@pytest.mark.parametrize("key,value", BAD_SETTINGS + [(k, v) for _, k, v in BAD_LOSS_PARAMS],
                         ids=[f"{k}={v}" for k, v in BAD_SETTINGS] + [f"{n}-{k}={v}" for n, k, v in BAD_LOSS_PARAMS])
def test_bad_setting_is_refused_with_its_name_and_a_fix(key, value):
    loss = next((n for n, k, v in BAD_LOSS_PARAMS if (k, v) == (key, value)), None)
    with pytest.raises(LongtailError) as e:
        apply_overrides(RunConfig(), {key: value} if loss is None else {"loss.name": loss, key: value})
    problem = e.value.problem
    assert key in problem
    assert _shows_value(problem, value), problem
    assert e.value.fix


def _shows_value(problem: str, value: str) -> bool:
    """The problem names the bad value: a name quoted, a number (list) after "got"."""
    if problem.startswith("unknown"):
        return repr(value) in problem
    got = problem.rpartition("got ")[2]
    return [repr(float(v)) for v in got.split(",")] == [repr(float(v)) for v in value.split(",")]


@pytest.mark.parametrize("build", [
    lambda: TrainConfig(epochs=0),
    lambda: TrainConfig(lr=float("nan")),
    lambda: DataConfig(imbalance_ratio=float("nan")),
    lambda: LossConfig(name="focall"),
    lambda: ModelConfig(head="cos"),
    lambda: SSLConfig(moco_temperature=-1.0),
    lambda: RunConfig(seed=-2),
])
def test_python_api_gets_the_same_checks(build):
    with pytest.raises(LongtailError) as e:
        build()
    assert e.value.fix


def test_nan_imbalance_ratio_is_refused_before_the_counts():
    # formerly a traceback deep in counts.profile_counts
    with pytest.raises(LongtailError, match=r"data\.imbalance_ratio must be .*got nan") as e:
        apply_overrides(RunConfig(), {"data.imbalance_ratio": "nan"})
    assert "--imbalance-ratio" in e.value.fix


def test_fix_names_the_command_line_option():
    with pytest.raises(LongtailError) as e:
        apply_overrides(RunConfig(), {"train.epochs": "0"})
    assert e.value.problem == "train.epochs must be a finite number in [1, 100000], got 0"
    assert "--epochs" in e.value.fix
    with pytest.raises(LongtailError) as e:
        apply_overrides(RunConfig(), {"train.momentum": "1"})
    assert "--set train.momentum=" in e.value.fix and "[0, 1)" in e.value.fix
    with pytest.raises(LongtailError) as e:
        apply_overrides(RunConfig(), {"train.sampler": "balanced"})
    assert "instance, class-balanced, class-aware, sqrt" in e.value.fix


@pytest.mark.parametrize("section,field,value", [
    ("train", "epochs", "10"),
    ("train", "lr", "0.1"),
    ("train", "flip", "yes"),
    ("train", "milestones", [160, "x"]),
    ("data", "imbalance_ratio", "100"),
    ("data", "n_max", 1.5),
    ("loss", "name", 3),
    ("model", "head", 3),
])
def test_wrong_types_from_a_json_config_are_named(section, field, value):
    d = RunConfig().to_dict()
    d[section][field] = value
    with pytest.raises(LongtailError) as e:
        RunConfig.from_dict(d)
    assert f"{section}.{field} must be" in e.value.problem or f"unknown {section}.{field}" in e.value.problem
    assert e.value.fix


def test_sections_must_be_sections():
    with pytest.raises(LongtailError, match="train must be a TrainConfig"):
        RunConfig(train={"epochs": 3})  # type: ignore[arg-type]


def test_valid_edge_values_are_accepted():
    cfg = apply_overrides(RunConfig(), {
        "train.epochs": "1", "train.momentum": "0", "train.cb_beta": "0", "train.warmup_epochs": "0",
        "semi.labeled_fraction": "1", "semi.threshold": "0", "mfw.lam_min": "1",
        "train.device": "cuda:1", "train.drw_start": "none", "train.milestones": "", "train.eval_every": "0",
        "data.imbalance_ratio": "1", "data.n_max": "1", "data.num_workers": "0", "data.pseudo_threshold": "1",
        "ssl.blur_prob": "0", "ssl.hue": "0.5", "seed": "0",
    })
    assert cfg.train.device == "cuda:1" and cfg.train.milestones == () and cfg.data.imbalance_ratio == 1.0
    assert apply_overrides(RunConfig(), {"loss.name": "ldam", "loss.max_margin": "0"}).loss.params["max_margin"] == 0
    assert apply_overrides(RunConfig(), {"loss.name": "logit-adjust", "loss.tau": "-1"}).loss.params["tau"] == -1
    # ints where floats are declared, and a path object for a path, as the Python API may pass them
    d = DataConfig(imbalance_ratio=10, darp_gamma_l=10, root=Path("/tmp/x"))  # type: ignore[arg-type]
    assert d.root == "/tmp/x" and isinstance(d.root, str)
    assert TrainConfig(milestones=[100, 150]).milestones == (100, 150)  # type: ignore[arg-type]


def test_name_lists_mirror_the_registries():
    from longtail.counts import PROFILES
    from longtail.data.files import BAD_IMAGE_POLICIES
    from longtail.data.normalization import NORMALIZATIONS
    from longtail.data.pools import DARP_ORDERS
    from longtail.data.semi import PROTOCOLS
    from longtail.graphs import COMPILE_MODES, ENGINES
    from longtail.losses import LOSSES
    from longtail.models.fastnet import TTA_MODES
    from longtail.models.heads import HEADS
    from longtail.samplers import SAMPLERS
    from longtail.schedule import SCHEDULES
    from longtail.semi.fixmatch import ALIGNMENTS
    from longtail.weights import SCHEMES

    assert config_module.SAMPLERS == tuple(SAMPLERS)
    assert config_module.WEIGHTINGS == tuple(SCHEMES)
    assert config_module.LOSSES == tuple(LOSSES)  # LOSSES follows LOSS_PARAMS: every declared loss has a class
    assert config_module.HEADS == tuple(HEADS)
    assert config_module.PROFILES == tuple(PROFILES)
    assert config_module.PROTOCOLS == tuple(PROTOCOLS)
    assert config_module.BAD_IMAGE_POLICIES == tuple(BAD_IMAGE_POLICIES)
    assert config_module.ENGINES == tuple(ENGINES)
    assert config_module.COMPILE_MODES == tuple(COMPILE_MODES)
    assert config_module.ALIGNMENTS == tuple(ALIGNMENTS)
    assert config_module.NORMALIZATIONS == tuple(NORMALIZATIONS)
    assert config_module.DARP_ORDERS == tuple(DARP_ORDERS)
    assert config_module.SCHEDULES == tuple(SCHEDULES)
    assert config_module.TTA_MODES == tuple(TTA_MODES)


def test_config_imports_only_errors_and_the_standard_library():
    import ast

    tree = ast.parse(Path(config_module.__file__).read_text())
    relative = {(n.module, n.level) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert relative == {("errors", 1)}
    absolute = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    absolute |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and not n.level and n.module}
    assert absolute <= {"__future__", "dataclasses", "difflib", "json", "math", "numbers", "os", "re", "tomllib",
                        "typing"}


def test_every_recipe_builds_and_round_trips():
    from longtail.recipes import RECIPES

    assert RECIPES
    for name, recipe in RECIPES.items():
        cfg = recipe.config
        assert isinstance(cfg, RunConfig), name
        again = RunConfig.from_dict(cfg.to_dict())
        assert again == cfg, name
        assert config_differences(cfg, again) == [], name


def test_pretraining_defaults_build():
    from longtail.ssl import METHODS, default_config

    for method in METHODS:
        for dataset in ("cifar10", "imagenet-lt"):
            cfg = default_config(method, dataset)
            assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_setting_suggests_the_nearest():
    with pytest.raises(LongtailError) as e:
        apply_overrides(RunConfig(), {"train.epoch": "3"})
    assert "unknown setting 'train.epoch'" in e.value.problem
    assert "did you mean train.epochs" in e.value.fix
    assert "--show-config" in e.value.fix
    assert len(e.value.fix) < 300  # not the list of every key
    with pytest.raises(LongtailError) as e:
        apply_overrides(RunConfig(), {"train.gamma": "2"})
    assert "did you mean loss.gamma" in e.value.fix
    assert e.value.fix.index("loss.gamma") < e.value.fix.index("data.darp_gamma_l")
    with pytest.raises(LongtailError) as e:
        apply_overrides(RunConfig(), {"epochs": "3"})
    assert "did you mean train.epochs" in e.value.fix


def test_unknown_setting_named_as_other_libraries_name_it_suggests_ours_first():
    from longtail.config import SETTING_SYNONYMS, override_keys

    assert set(SETTING_SYNONYMS.values()) <= set(override_keys())  # every suggestion is a real setting
    for key, ours in [("train.optimizer", "optim.name"), ("train.wd", "train.weight_decay"),
                      ("model.network", "model.arch"), ("train.criterion", "loss.name")]:
        with pytest.raises(LongtailError) as e:
            apply_overrides(RunConfig(), {key: "1"})
        assert e.value.fix.startswith(f"did you mean {ours}"), (key, e.value.fix)


def test_unknown_section_is_named():
    with pytest.raises(LongtailError) as e:
        apply_overrides(RunConfig(), {"foo.bar": "1"})
    assert "no section 'foo'" in e.value.problem and "--show-config" in e.value.fix
    with pytest.raises(LongtailError) as e:
        apply_overrides(RunConfig(), {"optimizer.lr": "1"})
    assert "no section 'optimizer'" in e.value.problem and "train.lr" in e.value.fix
    with pytest.raises(LongtailError) as e:  # a section that exists, a key it does not have
        apply_overrides(RunConfig(), {"optim.lr": "1"})
    assert "train.lr" in e.value.fix


def test_overrides_still_apply_one_field_at_a_time():
    cfg = apply_overrides(RunConfig(), {"train.epochs": "7", "loss.name": "cdt", "loss.gamma": "0.2",
                                        "semi.method": "fixmatch", "data.protocol": "darp", "seed": "3"})
    assert (cfg.train.epochs, cfg.loss.name, cfg.loss.params, cfg.seed) == (7, "cdt", {"gamma": 0.2}, 3)
    with pytest.raises(LongtailError, match="not a valid int") as e:
        apply_overrides(RunConfig(), {"seed": "x"})
    assert e.value.fix


def test_config_differences():
    a = RunConfig()
    b = apply_overrides(a, {"train.lr": "0.05", "loss.name": "focal", "train.milestones": "100,150"})
    assert config_differences(a, a) == []
    lines = config_differences(a, b)
    assert lines == [
        "loss.name: ce (run folder) vs focal (now)",
        "loss.gamma: (absent) (run folder) vs 1.0 (now)",
        "train.lr: 0.1 (run folder) vs 0.05 (now)",
        "train.milestones: 160.0,180.0 (run folder) vs 100.0,150.0 (now)",
    ]
    assert config_differences(b, a, labels=("old", "new"))[2] == "train.lr: 0.05 (old) vs 0.1 (new)"
    # an old run folder's config.json, as read back (lists, an extra or a missing key)
    d = a.to_dict()
    d["train"]["milestones"] = list(d["train"]["milestones"])
    assert config_differences(d, a) == []
    del d["train"]["lr"]
    d["train"]["old_knob"] = 1
    assert config_differences(d, a) == ["train.old_knob: 1 (run folder) vs (absent) (now)",
                                        "train.lr: (absent) (run folder) vs 0.1 (now)"]
    assert config_differences(a, replace(a, data=replace(a.data, download=False))) == [
        "data.download: true (run folder) vs false (now)"]


def test_the_toml_config_lists_every_setting_once_by_section_and_reads_back(tmp_path):
    import tomllib

    cfg = apply_overrides(RunConfig(recipe="r"), {"train.lr": "0.05", "data.n_max": "50", "loss.name": "ldam"})
    text = config_to_toml(cfg, comments=["a comment"])
    assert text.startswith("# a comment\n")
    d = tomllib.loads(text)
    keys = [k for sec, t in d.items() if isinstance(t, dict) for k in (f"{sec}.{name}" for name in t)]
    assert keys == [k for k in override_keys(cfg) if k != "seed"]
    assert d["loss"] == {"name": "ldam", "max_margin": 0.5, "scale": 30.0}
    assert d["train"]["lr"] == 0.05 and d["data"]["n_max"] == 50 and d["train"]["drw_start"] == "none"
    assert d["train"]["milestones"] == [160.0, 180.0] and d["train"]["flip"] is True
    assert list(d) == ["recipe", "seed", "data", "model", "loss", "train", "ssl", "augment", "optim", "semi", "glmc",
                       "mfw"]
    (tmp_path / "c.toml").write_text(text)
    assert config_from_file(tmp_path / "c.toml") == cfg


def test_nan_is_never_in_range():
    for key in ("train.lr", "train.momentum", "data.imbalance_ratio", "ssl.sam_rho"):
        with pytest.raises(LongtailError):
            apply_overrides(RunConfig(), {key: str(math.nan)})
    with pytest.raises(LongtailError, match="loss.gamma"):
        apply_overrides(RunConfig(), {"loss.name": "focal", "loss.gamma": str(math.nan)})
