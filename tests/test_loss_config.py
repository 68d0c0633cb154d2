"""The loss registry: one declaration of each loss's parameters (config.LOSS_PARAMS), checked by the
config, set with ``--set loss.NAME=VALUE``, old (0.1) configs still load, recipes build the same losses."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from longtail.cli import main
from longtail.config import LOSS_PARAMS, LossConfig, RunConfig, apply_overrides, config_differences
from longtail.counts import ClassCounts
from longtail.errors import LongtailError
from longtail.losses import LOSSES, Loss, loss_from_config, make_loss
from longtail.recipes import RECIPES
from longtail.runs import RunDir

SKEWED = ClassCounts((500, 100, 20, 5))

# A loss section exactly as version 0.1 wrote it into config.json and every checkpoint.
V01_FIELDS = {"focal_gamma": 1.0, "ldam_max_margin": 0.5, "ldam_scale": 30.0, "tau": 1.0, "cdt_gamma": 0.0}


def v01_config(**loss) -> dict:
    d = RunConfig().to_dict()
    d["loss"] = {"name": "ce", **V01_FIELDS, **loss}
    return d


# the registry ------------------------------------------------------------------------------------


def test_every_declared_loss_has_a_class_whose_parameters_match():
    assert list(LOSSES) == list(LOSS_PARAMS)
    for name, cls in LOSSES.items():
        assert issubclass(cls, Loss) and cls.name == name
        sig = inspect.signature(cls.__init__).parameters.values()
        kw = {p.name: p.default for p in sig if p.kind is inspect.Parameter.KEYWORD_ONLY}
        declared = {p.name: p.default for p in LOSS_PARAMS[name]}
        assert list(kw) == list(declared), name
        for param, default in declared.items():  # the class's own default, if any, is the declared one
            assert kw[param] == (inspect.Parameter.empty if default is None else default), (name, param)


def test_a_subclass_without_its_own_name_is_not_registered():
    class Variant(LOSSES["focal"]):  # type: ignore[misc, valid-type]
        pass

    assert LOSSES["focal"] is not Variant and make_loss("focal", SKEWED).__class__ is LOSSES["focal"]


def test_loss_config_holds_only_its_loss_parameters_with_defaults():
    assert LossConfig().params == {}
    assert LossConfig("focal").params == {"gamma": 1.0}
    assert LossConfig("ldam", {"scale": 16}).params == {"max_margin": 0.5, "scale": 16.0}
    assert isinstance(LossConfig("ldam", {"scale": 16}).params["scale"], float)
    with pytest.raises(LongtailError, match="needs loss.gamma") as e:
        LossConfig("cdt")  # no default: Ye et al. tune it
    assert "--set loss.gamma=0.2" in e.value.fix
    with pytest.raises(LongtailError, match="loss.gamma must be a number") as e:
        LossConfig("focal", {"gamma": True})
    with pytest.raises(LongtailError, match="loss.params must be a table"):
        LossConfig("focal", [("gamma", 1.0)])  # type: ignore[arg-type]


def test_make_loss_fills_and_checks_the_declared_parameters():
    assert make_loss("ldam", SKEWED).scale == 30.0
    with pytest.raises(LongtailError, match="loss.scale must be a finite number > 0, got 0"):
        make_loss("ldam", SKEWED, scale=0)
    with pytest.raises(LongtailError, match="no parameter 'tau'") as e:
        make_loss("ldam", SKEWED, tau=1.0)
    assert "loss.max_margin, loss.scale" in e.value.fix and "logit-adjust" in e.value.fix


# --set loss.NAME=VALUE ---------------------------------------------------------------------------


def test_set_a_parameter_of_the_current_loss():
    cfg = apply_overrides(RECIPES["cifar10-lt-focal"].config, {"loss.gamma": "2"})
    assert cfg.loss == LossConfig("focal", {"gamma": 2.0})
    assert repr(loss_from_config(cfg.loss, SKEWED)) == "Focal(gamma=2.0)"


def test_unknown_parameter_names_the_valid_ones_and_a_close_one():
    with pytest.raises(LongtailError) as e:
        apply_overrides(RECIPES["cifar10-lt-focal"].config, {"loss.gama": "2"})
    assert "'focal' loss has no parameter 'gama'" in e.value.problem and "loss.gama" in e.value.problem
    assert "did you mean loss.gamma?" in e.value.fix and "its parameters are loss.gamma" in e.value.fix
    with pytest.raises(LongtailError) as e:  # a parameter of another loss: say which
        apply_overrides(RunConfig(), {"loss.tau": "2"})
    assert "'ce' loss has no parameter 'tau'" in e.value.problem
    assert "no parameters" in e.value.fix and "--set loss.name=logit-adjust" in e.value.fix


def test_changing_the_loss_resets_its_parameters_unless_set():
    ldam = RECIPES["cifar10-lt-ldam-drw"].config
    assert ldam.loss.params == {"max_margin": 0.5, "scale": 30.0}
    assert apply_overrides(ldam, {"loss.name": "focal"}).loss == LossConfig("focal", {"gamma": 1.0})
    # the parameter may come before or after the name: they are applied together
    for order in ({"loss.gamma": "0.3", "loss.name": "cdt"}, {"loss.name": "cdt", "loss.gamma": "0.3"}):
        assert apply_overrides(ldam, order).loss == LossConfig("cdt", {"gamma": 0.3})
    # the same name keeps the parameters already set
    kept = apply_overrides(apply_overrides(ldam, {"loss.scale": "16"}), {"loss.name": "ldam"})
    assert kept.loss.params == {"max_margin": 0.5, "scale": 16.0}
    with pytest.raises(LongtailError, match="needs loss.gamma"):
        apply_overrides(ldam, {"loss.name": "cdt"})


def test_show_config_lists_only_the_losss_parameters(capsys):
    assert main(["train", "cifar10-lt-ldam-drw", "--show-config", "--set", "loss.scale=16"]) == 0
    import tomllib

    out = capsys.readouterr().out
    assert tomllib.loads(out)["loss"] == {"name": "ldam", "max_margin": 0.5, "scale": 16.0}
    assert main(["train", "cifar10-lt-focal", "--set", "loss.gama=2"]) == 2
    assert "did you mean loss.gamma" in capsys.readouterr().err


# configs and run folders of version 0.1 -----------------------------------------------------------


@pytest.mark.parametrize("name,params", [
    ("ce", {}),
    ("focal", {"gamma": 2.0}),
    ("ldam", {"max_margin": 0.3, "scale": 16.0}),
    ("balanced-softmax", {}),
    ("logit-adjust", {"tau": 1.5}),
    ("cdt", {"gamma": 0.2}),
])
def test_a_v01_config_loads_with_its_losss_parameters(name, params):
    old = {"ce": {}, "focal": {"focal_gamma": 2.0}, "ldam": {"ldam_max_margin": 0.3, "ldam_scale": 16.0},
           "balanced-softmax": {}, "logit-adjust": {"tau": 1.5}, "cdt": {"cdt_gamma": 0.2}}[name]
    cfg = RunConfig.from_dict(v01_config(name=name, **old))
    assert cfg.loss == LossConfig(name, params)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # and it is written back in the new form
    assert config_differences(v01_config(name=name, **old), cfg) == []  # resuming an old run: no difference


def test_a_v01_run_folder_resumes_and_tells_a_real_difference(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"config": v01_config(name="focal", focal_gamma=2.0)}))
    cfg = RunDir(tmp_path).existing_config()
    assert cfg is not None and cfg.loss == LossConfig("focal", {"gamma": 2.0})
    now = apply_overrides(cfg, {"loss.gamma": "1"})
    assert config_differences(json.loads((tmp_path / "config.json").read_text())["config"], now) == [
        "loss.gamma: 2.0 (run folder) vs 1.0 (now)"]


def test_a_config_with_both_forms_does_not_fit():
    d = RunConfig().to_dict()
    d["loss"]["focal_gamma"] = 1.0  # old field next to params: not a 0.1 config, not this version's
    with pytest.raises(LongtailError, match="does not fit this version"):
        RunConfig.from_dict(d)


# recipes build the losses they built before the registry ------------------------------------------

# Every recipe's (loss, parameters) as 0.1's flat LossConfig and experiment.loss_params gave them.
BEFORE = {
    "cifar10-lt-focal": ("focal", {"gamma": 1.0}), "cifar100-lt-focal": ("focal", {"gamma": 1.0}),
    "cifar10-lt-cb-focal": ("focal", {"gamma": 1.0}), "cifar100-lt-cb-focal": ("focal", {"gamma": 1.0}),
    "cifar10-lt-balanced-softmax": ("balanced-softmax", {}), "cifar100-lt-balanced-softmax": ("balanced-softmax", {}),
    "folder-balanced-softmax": ("balanced-softmax", {}),
    "cifar10-lt-logit-adjust": ("logit-adjust", {"tau": 1.0}),
    "cifar100-lt-logit-adjust": ("logit-adjust", {"tau": 1.0}),
    **{f"{ds}-lt-fast-la{s}": ("logit-adjust", {"tau": 1.0}) for ds in ("cifar10", "cifar100", "svhn")
       for s in ("", "-5min", "-10min")},  # newer
    "folder-fast-la": ("logit-adjust", {"tau": 1.0}),  # newer
    "folder-finetune-linear": ("logit-adjust", {"tau": 1.0}), "folder-finetune-full": ("logit-adjust", {"tau": 1.0}),
    "cifar10-lt-cdt": ("cdt", {"gamma": 0.2}), "cifar100-lt-cdt": ("cdt", {"gamma": 0.2}),
    "cifar10-lt-vs-adrw-tla": ("vs-tla", {"gamma": 0.05, "tau": 1.0, "late_tau": 1.0}),  # newer
    "cifar100-lt-vs-adrw-tla": ("vs-tla", {"gamma": 0.05, "tau": 1.0, "late_tau": 0.75}),  # newer
    "cifar10-lt-best": ("vs-tla", {"gamma": 0.05, "tau": 1.0, "late_tau": 1.0}),  # the -vs-adrw-tla recipes, from SSP
    "cifar100-lt-best": ("vs-tla", {"gamma": 0.05, "tau": 1.0, "late_tau": 0.75}),
    **{r: ("ldam", {"max_margin": 0.5, "scale": 30.0}) for r in (
        "cifar10-lt-ldam-drw", "cifar100-lt-ldam-drw", "svhn-lt-ldam-drw", "cifar10-lt-ldam-drw-rotation-ssp",
        "cifar100-lt-ldam-drw-rotation-ssp")},
}  # every other recipe: ("ce", {})


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_builds_the_same_loss_as_before(recipe):
    name, params = BEFORE.get(recipe, ("ce", {}))
    cfg = RECIPES[recipe].config
    assert (cfg.loss.name, cfg.loss.params) == (name, params)
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randint(0, 4, (8,), generator=g)
    new, old = loss_from_config(cfg.loss, SKEWED), LOSSES[name](SKEWED, **params)
    assert repr(new) == repr(old)
    torch.testing.assert_close(new(logits, targets), old(logits, targets))
