"""The command line, end to end, on the built-in digits set (no download)."""

import json
import subprocess
import sys

import pytest

from longtail.cli import main


def test_recipes_lists_names_first(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert {"quickstart", "cifar10-lt-ce", "cifar100-lt-ce"} <= set(names)


def test_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "quickstart", "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "| quickstart |" in text and "few" in text
    report = json.loads((out / "report.json").read_text())
    assert len(report["train_counts"]) == 10 and report["train_counts"][0] == 140
    (out / "report.json").unlink()
    assert main(["evaluate", str(out), "--device", "cpu"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["per_class"] == report["per_class"]


def test_evaluate_with_another_tta_leaves_the_report(tmp_path, capsys):
    """``evaluate --tta MODE`` evaluates the run as if trained with ``model.tta=MODE``: printed, the report untouched;
    the run's own mode gives the report's numbers."""
    from longtail.experiment import evaluate_checkpoint

    out = tmp_path / "run"
    assert main(["train", "quickstart", "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    before = (out / "report.json").read_text()
    capsys.readouterr()
    assert main(["evaluate", str(out), "--device", "cpu", "--tta", "flip-translate"]) == 0
    assert "model.tta=flip-translate" in capsys.readouterr().out
    assert (out / "report.json").read_text() == before
    report = json.loads(before)
    same = evaluate_checkpoint(out, device="cpu", write=False, tta="none")  # quickstart evaluates without TTA
    assert same["per_class"] == report["per_class"] and same["tta"] == "none"
    moved = evaluate_checkpoint(out, device="cpu", write=False, tta="flip-translate")
    assert moved["tta"] == "flip-translate" and moved["nll"] != report["nll"]


def test_unknown_recipe_is_a_clear_error(capsys):
    assert main(["train", "cifar10-lt-cee"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'cifar10-lt-cee'" in err and "cifar10-lt-ce" in err and "fix:" in err


def test_unknown_setting_and_option(capsys):
    assert main(["train", "quickstart", "--set", "train.epoch=3"]) == 2
    assert "unknown setting" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "quickstart", "--epoch-count", "3"])
    assert e.value.code == 2


def test_missing_data_folder(tmp_path, capsys):
    code = main(["train", "cifar10-lt-ce", "--data-root", str(tmp_path / "nowhere"), "--no-download",
                 "--epochs", "1", "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "fix:" in err and "Traceback" not in err


@pytest.mark.slow
def test_python_dash_m(tmp_path):
    r = subprocess.run([sys.executable, "-m", "longtail", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("longtail ")


@pytest.mark.slow
def test_two_stage_recipe_and_compare(tmp_path, capsys, monkeypatch):
    """A recipe with a decoupling step trains, then re-balances, for each seed; compare reads both."""
    from dataclasses import replace

    import longtail.recipes as rec

    base = rec.RECIPES["quickstart"]
    two = replace(base, name="quick-crt", decouple="crt",
                  config=replace(base.config, recipe="quick-crt",
                                 data=replace(base.config.data, val_per_class=3)))
    monkeypatch.setitem(rec.RECIPES, "quick-crt", two)
    out = tmp_path / "crt"
    assert main(["train", "quick-crt", "--epochs", "1", "--seeds", "0", "1", "--out", str(out), "--quiet"]) == 0
    for s in (0, 1):
        assert (out / f"seed-{s}" / "decouple-crt" / "report.json").is_file()
    agg = json.loads((out / "decouple-crt" / "report.json").read_text())
    assert len(agg["aggregate"]["top1"]["values"]) == 2
    capsys.readouterr()
    assert main(["compare", str(out), str(out / "decouple-crt"), "--names", "ce", "crt",
                 "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "| ce |" in text and "| crt |" in text
    assert (tmp_path / "cmp" / "comparison.png").is_file()
    assert main(["decouple", str(out / "seed-0"), "--method", "tau-norm", "--out", str(tmp_path / "tn"),
                 "--quiet"]) == 0
    assert "tau =" in capsys.readouterr().out


def test_pseudo_label_pipeline_on_digits(tmp_path, capsys):
    """base run -> pseudo-label the images the long-tailed subset left out -> retrain on both."""
    base, labels, semi = tmp_path / "base", tmp_path / "pl", tmp_path / "semi"
    small = ["--set", "data.n_max=60", "--imbalance-ratio", "10"]  # leaves unused images of every digit for the pool
    assert main(["train", "quickstart", "--epochs", "1", "--out", str(base), "--quiet", *small]) == 0
    assert main(["pseudo-label", str(base), "--pool", "unused:rho_u=10,factor=1", "--out", str(labels),
                 "--device", "cpu"]) == 0
    saved = json.loads((labels / "pseudo_labels.json").read_text())
    assert (labels / "pseudo_labels.md").is_file()
    assert main(["train", "quickstart", "--epochs", "1", "--out", str(semi), "--quiet", *small,
                 "--set", f"data.pseudo_labels={labels}"]) == 0
    base_n = sum(json.loads((base / "report.json").read_text())["train_counts"])
    semi_report = json.loads((semi / "report.json").read_text())
    assert sum(semi_report["train_counts"]) > base_n  # pseudo-labeled images were trained on
    assert "semi" in semi_report
    assert saved  # the label file records the pool


def test_stacked_seeds_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "stacked"
    assert main(["train", "quickstart", "--epochs", "1", "--seeds", "0", "1", "--stack-seeds", "on",
                 "--out", str(out), "--quiet"]) == 0
    agg = json.loads((out / "report.json").read_text())["aggregate"]
    assert len(agg["top1"]["values"]) == 2
    assert (out / "seed-1" / "checkpoints" / "last.pt").is_file()


def test_pretrain_then_fine_tune(tmp_path, capsys):
    """`longtail pretrain` writes a backbone that `train --init-from` loads, reporting the count."""
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    assert main(["pretrain", "rotation", "--dataset", "digits", "--epochs", "1", "--out", str(pre), "--quiet",
                 "--set", "model.arch=resnet8", "--set", "data.imbalance_ratio=100", "--set", "train.batch_size=64",
                 "--set", "ssl.probe_epochs=2"]) == 0
    report = json.loads((pre / "report.json").read_text())
    assert "knn" in report and "rotation_test_accuracy" in report
    capsys.readouterr()
    assert main(["train", "quickstart", "--epochs", "1", "--out", str(fine), "--quiet", "--init-from", str(pre)]) == 0
    assert "loaded" in capsys.readouterr().out
    assert main(["train", "cifar10-lt-rotation-ssp"]) == 2  # a pre-training recipe is not trained by `train`
    assert "longtail pretrain" in capsys.readouterr().err


def test_init_from_a_mismatched_run_fails_clearly(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "quickstart", "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    code = main(["train", "quickstart", "--epochs", "1", "--out", str(tmp_path / "b"), "--quiet",
                 "--init-from", str(run), "--set", "model.arch=resnet20"])
    assert code == 2
    assert "fix:" in capsys.readouterr().err


def test_the_command_line_answers_help_without_loading_pytorch():
    """README: `longtail --help` answers without loading PyTorch (the package's top level imports it lazily)."""
    import subprocess
    import sys

    code = ("import sys, longtail.cli\n"
            "assert 'torch' not in sys.modules, 'importing the command line loaded torch'\n"
            "from longtail import ClassCounts\n"
            "assert 'torch' in sys.modules and ClassCounts.__module__ == 'longtail.counts'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    out = subprocess.run([sys.executable, "-m", "longtail", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage" in out.stdout.lower()


def test_quickstart_with_a_data_root_trains_the_fast_recipe_on_cifar10(tmp_path, monkeypatch, capsys):
    """Issue 15: `longtail quickstart --data-root DIR` is a first result on real data (the fast recipe on
    CIFAR-10-LT, nothing downloaded); without CIFAR-10 there it says where it looked and what to do."""
    import longtail.cli as cli

    assert main(["quickstart", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"no CIFAR-10 at {tmp_path / 'cifar-10-batches-py'}" in err and "without --data-root" in err
    (tmp_path / "cifar-10-batches-py").mkdir()
    seen = {}

    def fake_train(recipe, base, args, out):
        seen.update(recipe=recipe.name, out=out, overrides=cli.overrides_from_args(args))
        return {}

    monkeypatch.setattr(cli, "_train", fake_train)
    assert main(["quickstart", "--data-root", str(tmp_path), "--device", "cpu"]) == 0
    assert seen["recipe"] == "cifar10-lt-fast-la" and seen["out"] == "runs/quickstart-cifar10"
    assert seen["overrides"] == {"data.root": str(tmp_path), "train.device": "cpu", "data.download": False}
    # the layout folder itself, as `train --data-root` takes it
    assert main(["quickstart", "--data-root", str(tmp_path / "cifar-10-batches-py"), "--device", "cpu"]) == 0
    assert seen["overrides"]["data.root"] == str(tmp_path)
    assert main(["quickstart", "--device", "cpu"]) == 2  # the digits run on the CPU; --device goes with --data-root
    assert main(["quickstart", "--out", str(tmp_path / "q")]) == 0
    assert seen["recipe"] == "quickstart" and seen["out"] == str(tmp_path / "q")
    assert "longtail quickstart --data-root DIR" in capsys.readouterr().out
