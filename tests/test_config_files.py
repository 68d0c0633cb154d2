"""Configurations as files (issue 16): --show-config prints TOML with the schedule in the run's own epochs,
`longtail train --config FILE` runs from it (or from a run folder's config.json), unknown keys get did-you-mean."""

from __future__ import annotations

import json
import tomllib

import pytest

from longtail.cli import main
from longtail.config import (
    MOVED_SETTINGS,
    RunConfig,
    apply_overrides,
    config_differences,
    config_from_file,
    config_to_toml,
    migrate_sections,
    override_keys,
)
from longtail.errors import LongtailError
from longtail.recipes import RECIPES, get_recipe
from longtail.runs import RunDir
from longtail.schedule import describe_schedule


def _recipe_config(name):
    return RECIPES[name].config if name in RECIPES else None


def test_a_deferred_weighting_past_any_runs_end_warns():
    """drw_start is in 200-epoch units: past 200 the weighting never starts (a finished run's config with it still
    reads back: the warning comes where the weighting is made)."""
    from longtail.counts import ClassCounts
    from longtail.weights import weighting_from_config

    cfg = apply_overrides(RunConfig(), {"train.weighting": "class-balanced", "train.drw_start": 500})
    with pytest.warns(UserWarning, match="train.drw_start=500 is past the end of any run"):
        weighting_from_config(cfg.train, ClassCounts((50, 5)))
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_reads_back_from_its_toml(name, tmp_path):
    cfg = RECIPES[name].config
    (tmp_path / "c.toml").write_text(config_to_toml(cfg))
    assert config_from_file(tmp_path / "c.toml") == cfg
    # read as `train --config` reads it (left-out keys from the recipe it names): the same
    assert config_from_file(tmp_path / "c.toml", _recipe_config) == cfg


def test_a_partial_file_starts_from_the_recipe_it_names(tmp_path, capsys):
    """A file of a few settings that names a recipe keeps the recipe's other settings (it once ran on the global
    defaults: a file naming cifar10-lt-ldam-drw trained plain cross-entropy); a name that is no recipe is a label."""
    (tmp_path / "p.toml").write_text('recipe = "cifar10-lt-ldam-drw"\n[train]\nepochs = 10\n')
    assert main(["train", "--config", str(tmp_path / "p.toml"), "--show-config"]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    ldam = RECIPES["cifar10-lt-ldam-drw"].config
    assert shown["loss"]["name"] == "ldam" and shown["model"]["head"] == ldam.model.head == "cosine"
    assert shown["train"]["drw_start"] == ldam.train.drw_start and shown["train"]["epochs"] == 10
    cfg = config_from_file(tmp_path / "p.toml", _recipe_config)
    assert cfg == apply_overrides(ldam, {"train.epochs": 10})
    # what --show-config leaves out reads back the same from the recipe: a method turned off whose settings the
    # recipe sets (SAM's here) keeps them in the file
    argv = ["train", "cifar10-lt-vs-adrw-tla", "--set", "optim.name=sgd", "--set", "optim.sam_rho=none", "--set",
            "optim.sam_rho_late=none", "--set", "optim.sam_bn_stats=first"]
    assert main([*argv, "--show-config"]) == 0
    (tmp_path / "sgd.toml").write_text(capsys.readouterr().out)
    shown = config_from_file(tmp_path / "sgd.toml", _recipe_config)
    assert (shown.optim.name, shown.optim.sam_rho, shown.optim.sam_rho_late) == ("sgd", None, None)
    assert shown == apply_overrides(RECIPES["cifar10-lt-vs-adrw-tla"].config, {
        "optim.name": "sgd", "optim.sam_rho": "none", "optim.sam_rho_late": "none", "optim.sam_bn_stats": "first"})
    (tmp_path / "mine.toml").write_text('recipe = "my-run"\n[train]\nepochs = 10\n')
    assert config_from_file(tmp_path / "mine.toml", _recipe_config) == apply_overrides(
        RunConfig(recipe="my-run"), {"train.epochs": 10})


def test_show_config_gives_the_schedule_in_the_runs_own_epochs(capsys):
    assert main(["train", "cifar10-lt-ldam-drw", "--epochs", "30", "--show-config"]) == 0
    out = capsys.readouterr().out
    comments = [line for line in out.splitlines() if line.startswith("#")]
    assert any("x0.01 from epoch 25" in c and "x0.0001 from epoch 28" in c and "of 30 epochs" in c for c in comments)
    assert any("deferred re-weighting (class-balanced) from epoch 25" in c for c in comments)
    d = tomllib.loads(out)  # the comments leave it valid TOML
    assert d["train"]["epochs"] == 30 and d["train"]["milestones"] == [160.0, 180.0]
    lines = describe_schedule(get_recipe("cifar10-lt-ldam-drw").config)
    assert "linear warm-up over epochs 1-4, the full rate from epoch 5, x0.01 from epoch 161" in lines[0]


def test_train_from_a_file_and_from_a_run_folder(tmp_path, capsys):
    assert main(["train", "quickstart", "--epochs", "2", "--show-config"]) == 0
    (tmp_path / "q.toml").write_text(capsys.readouterr().out)
    out = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "q.toml"), "--out", str(out), "--quiet"]) == 0
    first = json.loads((out / "report.json").read_text())
    assert first["recipe"] == "quickstart" and first["epoch"] == 2
    # the run folder's saved config is itself a valid --config (and the folder too), with options on top
    again = tmp_path / "again"
    assert main(["train", "--config", str(out / "config.json"), "--out", str(again), "--quiet"]) == 0
    assert json.loads((again / "report.json").read_text())["top1"] == first["top1"]  # same seed, same result
    assert config_from_file(out) == config_from_file(out / "config.json")
    capsys.readouterr()  # the runs' tables
    assert main(["train", "--config", str(out), "--epochs", "3", "--show-config"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["train"]["epochs"] == 3


def test_bad_files_say_what_and_how(tmp_path, capsys):
    (tmp_path / "typo.toml").write_text('recipe = "x"\n[train]\nepohcs = 3\n')
    with pytest.raises(LongtailError, match="unknown setting 'train.epohcs'") as e:
        config_from_file(tmp_path / "typo.toml")
    assert "did you mean train.epochs" in e.value.fix and "typo.toml" in e.value.problem
    (tmp_path / "bad.toml").write_text("[train\nepochs = 3\n")
    with pytest.raises(LongtailError, match="is not valid TOML"):
        config_from_file(tmp_path / "bad.toml")
    (tmp_path / "deep.toml").write_text("[train.more]\nx = 1\n")
    with pytest.raises(LongtailError, match="one level deep"):
        config_from_file(tmp_path / "deep.toml")
    (tmp_path / "range.toml").write_text("[train]\nlr = -1\n")
    with pytest.raises(LongtailError, match="train.lr"):
        config_from_file(tmp_path / "range.toml")
    with pytest.raises(LongtailError, match="cannot read the configuration file"):
        config_from_file(tmp_path / "absent.toml")
    assert main(["train", "quickstart", "--config", str(tmp_path / "typo.toml")]) == 2
    assert "both a recipe" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "needs a recipe or a configuration file" in capsys.readouterr().err


def test_a_file_keeps_what_it_does_not_name_at_the_defaults(tmp_path):
    (tmp_path / "short.toml").write_text('recipe = "mine"\nseed = 3\n[loss]\nname = "focal"\ngamma = 2.0\n')
    cfg = config_from_file(tmp_path / "short.toml")
    assert cfg.recipe == "mine" and cfg.seed == 3 and cfg.loss.params == {"gamma": 2.0}
    assert cfg.train == apply_overrides(cfg, {}).train and cfg.train.epochs == 200


def test_show_config_leaves_out_the_settings_of_methods_the_run_does_not_use_and_reads_back(tmp_path):
    """Issue 12: a recipe shows only what it uses. The left-out settings keep their defaults, so the printed
    file reads back to the same configuration; a setting a user changed is never left out."""
    import tomllib

    from longtail.cli import show_config
    from longtail.config import unused_settings
    from longtail.recipes import get_recipe

    for name, hidden, shown in (
            ("cifar10-lt-ce", ["ssl.moco_queue", "semi.mu", "glmc.mix_alpha", "data.darp_n1",
                               "augment.mix_alpha", "optim.sam_rho", "train.cb_beta"], ["train.lr", "augment.mix"]),
            ("cifar10-semi-darp-fixmatch", ["ssl.moco_queue", "glmc.mix_alpha"],
             ["semi.mu", "data.darp_n1", "augment.policy", "augment.randaugment_magnitude"]),
            ("cifar10-lt-cb-focal", ["semi.mu"], ["train.cb_beta"])):
        cfg = get_recipe(name).config
        text = show_config(cfg)
        d = tomllib.loads(text)
        keys = {f"{sec}.{k}" for sec, t in d.items() if isinstance(t, dict) for k in t}
        assert not keys & set(hidden) and set(shown) <= keys, name
        assert set(unused_settings(cfg)) & keys == set()
        (tmp_path / "c.toml").write_text(text)
        assert config_from_file(tmp_path / "c.toml") == cfg, name
    changed = apply_overrides(get_recipe("cifar10-lt-ce").config, {"semi.mu": "3", "ssl.moco_queue": "64"})
    d = tomllib.loads(show_config(changed))
    assert d["semi"]["mu"] == 3 and d["ssl"] == {"moco_queue": 64}
    pre = get_recipe("cifar10-lt-rotation-ssp").config
    assert "ssl" in tomllib.loads(show_config(pre, pretrain=True))


def test_a_pretraining_config_shows_only_its_own_methods_ssl_settings():
    """Pre-training methods declare their ssl settings (``config.PRETEXT_SETTINGS``); every ssl setting belongs to
    some method, and ``longtail pretrain METHOD --show-config`` leaves out the others' while they keep defaults."""
    import dataclasses
    import tomllib

    from longtail.cli import main
    from longtail.config import PRETEXT_SETTINGS, SSLConfig, unused_settings
    from longtail.recipes import get_recipe
    from longtail.ssl.config import METHODS

    assert set(PRETEXT_SETTINGS) == set(METHODS)
    for f in dataclasses.fields(SSLConfig):
        assert any(f"ssl.{f.name}".startswith(p) for ps in PRETEXT_SETTINGS.values() for p in ps), f.name
    cfg = get_recipe("cifar10-lt-rotation-ssp").config
    hidden = set(unused_settings(cfg, pretrain="rotation"))
    assert {"ssl.moco_queue", "ssl.simsiam_dim", "ssl.sam_rho", "ssl.crop_min_scale"} <= hidden
    assert not {"ssl.rotations", "ssl.knn_k", "ssl.probe_epochs"} & hidden
    assert "ssl.sam_rho" not in unused_settings(cfg, pretrain="simsiam-rwsam")
    assert "ssl.crop_min_scale" not in unused_settings(cfg, pretrain="moco")
    changed = apply_overrides(cfg, {"ssl.moco_queue": "64"})  # a changed setting is always shown
    assert "ssl.moco_queue" not in unused_settings(changed, pretrain="rotation")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["pretrain", "cifar10-lt-rotation-ssp", "--show-config"]) == 0
    ssl = tomllib.loads(buf.getvalue())["ssl"]
    assert "rotations" in ssl and "moco_queue" not in ssl and "simsiam_dim" not in ssl


def test_settings_that_moved_to_their_methods_sections_still_load_from_older_runs(tmp_path):
    """Up to 0.2, FixMatch's, GLMC's, MFW's and the pseudo-label knobs sat flat in ``train``: an older run folder's
    config.json (or a TOML saved then) gives the same config now, resuming it finds no difference, and ``--set``
    with an old name says where the setting lives now."""
    old = {"recipe": "old-run", "seed": 1,
           "train": {"epochs": 7, "semi": "fixmatch", "fixmatch_mu": 2, "fixmatch_alignment": "la",
                     "fixmatch_full_batches": True, "pseudo_weight": 0.5, "labeled_fraction": 0.25,
                     "mfw_strength": 0.3, "mfw_lam_min": 0.6, "glmc_contrast_weight": 1.0, "glmc_proj_dim": 64}}
    cfg = RunConfig.from_dict(old)
    assert cfg.train.epochs == 7 and cfg.seed == 1
    assert (cfg.semi.method, cfg.semi.mu, cfg.semi.alignment, cfg.semi.full_batches) == ("fixmatch", 2, "la", True)
    assert (cfg.semi.pseudo_weight, cfg.semi.labeled_fraction) == (0.5, 0.25)
    assert (cfg.mfw.strength, cfg.mfw.lam_min, cfg.glmc.contrast_weight, cfg.glmc.proj_dim) == (0.3, 0.6, 1.0, 64)
    (tmp_path / "config.json").write_text(json.dumps({"command": "train", "config": old}))
    assert config_from_file(tmp_path) == cfg
    assert RunDir(tmp_path).existing_config() == cfg  # what resuming compares: no difference, no refusal
    full_old = cfg.to_dict()  # the whole config as 0.2 wrote it: the moved settings flat in train
    for key, new in MOVED_SETTINGS.items():
        sec, _, name = new.partition(".")
        full_old["train"][key.partition(".")[2]] = full_old[sec].pop(name)
    assert full_old.pop("glmc") == {} and full_old.pop("mfw") == {}
    assert all(k.startswith("acr_") for k in full_old.pop("semi"))  # ACR came after the move
    assert all(line.startswith("semi.acr_") and "(absent) (run folder)" in line
               for line in config_differences(full_old, cfg))
    assert migrate_sections(cfg.to_dict()) == cfg.to_dict()  # a current config is left alone
    for key, new in MOVED_SETTINGS.items():
        with pytest.raises(LongtailError, match=f"{key} has moved: it is now {new}"):
            apply_overrides(RunConfig(), {key: "1"})
        assert new in {k for k in override_keys()}
