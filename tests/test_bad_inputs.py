"""A battery of bad inputs, across every command: each one is refused cleanly.

For every case, ``longtail.cli.main(argv)`` (called in-process):

(a) exits with status 2 (a ``LongtailError``; an argparse usage error, ``SystemExit(2)``, counts the same,
    and is a minority of the cases),
(b) says what is wrong on stderr, in a message specific to the case (the dotted setting, the path, ...),
    followed by a line starting with ``  fix: `` (argparse errors print their ``usage:`` lines first),
(c) prints no traceback,
(d) leaves its output folder (and any run folder it was pointed at) exactly as it was: the same paths,
    the same bytes, the same modification times; a folder that was absent stays absent,

and a pickle that would run code when loaded (``__reduce__`` -> ``os.system("touch MARKER")``) is never run.

Each case is a small setup function (registered with ``@case``) that writes what it needs under its own
folder and returns the command line, the paths to watch and the message pattern. Cases that need a real
run folder copy one tiny run (``quickstart``, 1 epoch, CPU) that is trained once per module.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail.cli import main
from longtail.data import download as download_mod

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 20  # images per fake CIFAR batch file


# ----------------------------------------------------------------------------- helpers
class RunsCode:
    """An object whose unpickling runs a shell command: it touches ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_code_pickle(path: Path, marker: Path, payload: Callable[[RunsCode], object] = lambda evil: evil) -> Path:
    """``torch.save`` a payload holding a :class:`RunsCode`; loading it with a plain ``torch.load`` runs it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload(RunsCode(marker)), path)
    assert path.is_file() and not marker.exists()
    return path


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official CIFAR files are protocol-2 pickles


def write_fake_cifar10(root: Path, labels_of: Callable[[int, int], list[int]] | None = None) -> Path:
    """The official ``cifar-10-batches-py`` layout under ``root`` with PER_BATCH images per file.

    ``labels_of(file_index, n)``: the labels of one file (default: 0..9 in turn). Returns the layout folder."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        labels = labels_of(i, PER_BATCH) if labels_of else [j % 10 for j in range(PER_BATCH)]
        _dump(folder / name, {
            "batch_label": name,
            "labels": [int(v) for v in labels],
            "data": rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
            "filenames": [f"img_{j}.png" for j in range(PER_BATCH)],
        })
    _dump(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_cases_per_batch": PER_BATCH, "num_vis": 3072})
    return folder


def snapshot(path: Path):
    """Every path under ``path`` with, for files, their bytes and modification time; None when absent.

    Folders are recorded by name only: a lock file made and removed again changes a folder's mtime, not what
    it holds."""
    if not os.path.lexists(path):
        return None
    if not path.is_dir():
        st = path.stat()
        return ("file", path.read_bytes(), st.st_mtime_ns)
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        d = Path(dirpath)
        for n in dirnames:
            out[str((d / n).relative_to(path))] = ("dir",)
        for n in filenames:
            p = d / n
            st = p.stat()
            out[str(p.relative_to(path))] = ("file", p.read_bytes(), st.st_mtime_ns)
    return out


def describe_change(before, after) -> str:
    if before is None or after is None or not isinstance(before, dict) or not isinstance(after, dict):
        return f"{'absent' if before is None else 'present'} before, {'absent' if after is None else 'present'} after"
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added {added}, removed {removed}, changed {changed}"


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    argv: list[str]
    pattern: str  # re.search on stderr: the problem, specific to the case
    watch: list[Path] = field(default_factory=list)  # must be unchanged (or stay absent)
    marker: Path | None = None  # a code-running pickle's marker: must never exist


@dataclass
class Ctx:
    tmp: Path  # this case's own folder
    trained_run: Path  # the module's tiny run: never passed directly, copy it with run_copy()

    @property
    def out(self) -> Path:
        """A fresh --out folder that does not exist yet."""
        return self.tmp / "out"

    def run_copy(self, name: str = "run") -> Path:
        dst = self.tmp / name
        shutil.copytree(self.trained_run, dst, copy_function=shutil.copy2)
        return dst

    def train(self, *extra: str, recipe: str = "quickstart") -> Case:
        """A ``train`` command line into a fresh --out (pattern to fill in)."""
        return Case(["train", recipe, "--epochs", "1", "--out", str(self.out), "--quiet", *extra], "",
                    watch=[self.out])


CASES: dict[str, Callable[[Ctx], Case]] = {}


def case(fn: Callable[[Ctx], Case]) -> Callable[[Ctx], Case]:
    CASES[fn.__name__] = fn
    return fn


def _bad(c: Ctx, pattern: str, *extra: str) -> Case:
    k = c.train(*extra)
    k.pattern = pattern
    return k


# --- settings -----------------------------------------------------------------------------------
@case
def epochs_zero(c):
    # --epochs 1 of the helper first, then --epochs 0: argparse keeps the last
    return _bad(c, r"train\.epochs.*\[1, 100000\].*got 0", "--epochs", "0")


@case
def epochs_negative(c):
    return _bad(c, r"train\.epochs.*got -1", "--epochs", "-1")


@case
def batch_size_zero(c):
    return _bad(c, r"train\.batch_size.*got 0", "--batch-size", "0")


@case
def batch_size_negative(c):
    return _bad(c, r"train\.batch_size.*got -5", "--batch-size", "-5")


@case
def imbalance_ratio_nan(c):
    return _bad(c, r"data\.imbalance_ratio.*nan", "--imbalance-ratio", "nan")


@case
def imbalance_ratio_below_one(c):
    return _bad(c, r"data\.imbalance_ratio.*0\.5", "--imbalance-ratio", "0.5")


@case
def lr_nan(c):
    return _bad(c, r"train\.lr.*nan", "--lr", "nan")


@case
def lr_negative(c):
    return _bad(c, r"train\.lr.*-1", "--lr", "-1")


@case
def lr_inf(c):
    return _bad(c, r"train\.lr.*inf", "--lr", "inf")


@case
def momentum_too_large(c):
    return _bad(c, r"train\.momentum.*1\.5", "--set", "train.momentum=1.5")


@case
def unknown_loss(c):
    return _bad(c, r"loss\.name.*nosuch", "--set", "loss.name=nosuch")


@case
def unknown_sampler(c):
    return _bad(c, r"train\.sampler.*nosuch", "--set", "train.sampler=nosuch")


@case
def misspelt_setting_suggests(c):
    # the problem names the key, the fix suggests the setting meant
    return _bad(c, r"unknown setting 'train\.gama'(.|\n)*fix:.*did you mean .*loss\.gamma", "--set", "train.gama=2")


@case
def misspelt_loss_parameter_suggests(c):
    # a loss's own parameter: the fix names the loss's parameters and the one meant
    return _bad(c, r"'focal' loss has no parameter 'gama'(.|\n)*fix:.*did you mean loss\.gamma",
                "--set", "loss.name=focal", "--set", "loss.gama=2")


@case
def unknown_section(c):
    return _bad(c, r"unknown setting 'foo\.bar'.*section 'foo'", "--set", "foo.bar=1")


@case
def setting_wrong_type(c):
    return _bad(c, r"train\.epochs='many'", "--set", "train.epochs=many")


@case
def set_without_equals(c):
    return _bad(c, r"--set 'noequals' is not KEY=VALUE", "--set", "noequals")


@case
def repeated_seeds(c):
    return _bad(c, r"--seeds repeats a seed: 0 0", "--seeds", "0", "0")


@case
def val_per_class_negative(c):
    return _bad(c, r"data\.val_per_class.*-1", "--val-per-class", "-1")


@case
def device_tpu(c):  # argparse: --device has choices
    return _bad(c, r"--device.*invalid choice: 'tpu'", "--device", "tpu")


@case
def unknown_recipe_suggests(c):
    out = c.out
    return Case(["train", "cifar10-lt-cee", "--out", str(out)],
                r"unknown recipe 'cifar10-lt-cee'(.|\n)*cifar10-lt-ce\b", watch=[out])


@case
def train_of_a_pretraining_recipe(c):
    out = c.out
    return Case(["train", "cifar10-lt-rotation-ssp", "--out", str(out)],
                r"cifar10-lt-rotation-ssp is a pre-training recipe(.|\n)*longtail pretrain", watch=[out])


@case
def pretrain_of_a_training_recipe(c):
    out = c.out
    return Case(["pretrain", "quickstart", "--out", str(out)],
                r"quickstart is not a pre-training recipe(.|\n)*longtail train quickstart", watch=[out])


@case
def pretrain_with_two_seeds(c):
    out = c.out
    return Case(["pretrain", "rotation", "--dataset", "digits", "--epochs", "1", "--seeds", "0", "1",
                 "--out", str(out), "--quiet"], r"pre-training takes one seed", watch=[out])


@case
def pretrain_unknown_method(c):
    out = c.out
    return Case(["pretrain", "rotaton", "--dataset", "digits", "--out", str(out)],
                r"unknown recipe 'rotaton'", watch=[out])


@case
def pretrain_bad_ssl_setting(c):
    out = c.out
    return Case(["pretrain", "rotation", "--dataset", "digits", "--epochs", "1", "--out", str(out), "--quiet",
                 "--set", "ssl.hue=0.9"], r"ssl\.hue.*0\.9", watch=[out])


@case
def unknown_profile(c):
    return _bad(c, r"data\.profile.*zigzag", "--set", "data.profile=zigzag")


@case
def unknown_schedule(c):
    return _bad(c, r"train\.schedule.*linear", "--set", "train.schedule=linear")


@case
def unknown_engine(c):
    return _bad(c, r"train\.engine.*warp", "--set", "train.engine=warp")


@case
def quickstart_epochs_zero(c):
    out = c.out
    return Case(["quickstart", "--epochs", "0", "--out", str(out), "--quiet"], r"train\.epochs.*got 0", watch=[out])


# --- data -----------------------------------------------------------------------------------------
def _cifar(c: Ctx, root: Path, pattern: str, *extra: str) -> Case:
    out = c.out
    return Case(["train", "cifar10-lt-ce", "--data-root", str(root), "--no-download", "--epochs", "1",
                 "--set", "data.n_max=5", "--imbalance-ratio", "5", "--device", "cpu", "--out", str(out), "--quiet",
                 *extra], pattern, watch=[out, root])


@case
def missing_data_folder(c):
    root = c.tmp / "empty-data"
    root.mkdir()
    return _cifar(c, root,
                  re.escape(str(root)) + r".*cifar-10-batches-py|CIFAR data not found.*" + re.escape(str(root)))


@case
def truncated_cifar_pickle(c):
    root = c.tmp / "data"
    folder = write_fake_cifar10(root)
    f = folder / "data_batch_3"
    f.write_bytes(f.read_bytes()[:1000])
    return _cifar(c, root, re.escape(str(f)) + r".*(unreadable|truncated)")


@case
def cifar_label_out_of_range(c):
    root = c.tmp / "data"
    folder = write_fake_cifar10(root, lambda i, n: [10 if (i == 1 and j == 3) else j % 10 for j in range(n)])
    return _cifar(c, root, re.escape(str(folder / "data_batch_2")) + r".*label")


@case
def cifar_class_without_examples(c):
    root = c.tmp / "data"
    write_fake_cifar10(root, lambda i, n: [j % 9 for j in range(n)])  # no image of class 9 (truck)
    return _cifar(c, root, r"class (9|truck)\b.*(0 images|no training examples)")


@case
def data_root_is_a_file(c):
    root = c.tmp / "data.tar"
    root.write_bytes(b"not a folder")
    out = c.out
    # downloads are allowed here: the package must notice the file before reaching for the network
    # (the module's _no_network fixture turns any download attempt into a failure)
    return Case(["train", "cifar10-lt-ce", "--data-root", str(root), "--epochs", "1", "--device", "cpu",
                 "--out", str(out), "--quiet"], re.escape(str(root)) + " is a file, not a folder", watch=[out, root])


# --- output ---------------------------------------------------------------------------------------
@case
def out_is_a_file(c):
    f = c.tmp / "results.txt"
    f.write_text("my notes\n")
    return Case(["train", "quickstart", "--epochs", "1", "--out", str(f), "--quiet"],
                re.escape(str(f)) + r".*(is a file|not a folder)", watch=[f])


@case
def out_under_a_file(c):
    f = c.tmp / "results.txt"
    f.write_text("my notes\n")
    out = f / "run"
    return Case(["train", "quickstart", "--epochs", "1", "--out", str(out), "--quiet"],
                re.escape(str(out)) + r".*" + re.escape(str(f)) + r".*file", watch=[f])


@case
def restart_of_a_foreign_folder(c):
    folder = c.tmp / "my-folder"
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\documentclass{article}\n")
    return Case(["train", "quickstart", "--epochs", "1", "--out", str(folder), "--restart", "--quiet"],
                r"--restart would delete " + re.escape(str(folder)) + r".*not a longtail run folder", watch=[folder])


@case
def quickstart_into_a_foreign_folder(c):  # quickstart always restarts: it must not delete a user's folder
    folder = c.tmp / "my-folder"
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\documentclass{article}\n")
    return Case(["quickstart", "--epochs", "1", "--out", str(folder), "--quiet"],
                re.escape(str(folder)) + r".*not a longtail run folder", watch=[folder])


@case
def restart_with_bad_settings(c):
    run = c.run_copy()
    return Case(["train", "quickstart", "--epochs", "1", "--out", str(run), "--restart", "--quiet",
                 "--lr", "nan"], r"train\.lr.*nan", watch=[run])


@case
def resume_with_other_settings(c):
    run = c.run_copy()
    return Case(["train", "quickstart", "--epochs", "1", "--out", str(run), "--quiet", "--lr", "0.01"],
                re.escape(str(run)) + r".*other settings.*train\.lr: 0\.05 \(run folder\) vs 0\.01 \(now\)",
                watch=[run])


# --- checkpoints ----------------------------------------------------------------------------------
def _evaluate(target: Path, pattern: str, watch: Path, marker: Path | None = None) -> Case:
    return Case(["evaluate", str(target), "--device", "cpu"], pattern, watch=[watch], marker=marker)


@case
def evaluate_missing_path(c):
    p = c.tmp / "no-such-run"
    return _evaluate(p, re.escape(str(p)) + r".*does not exist", p)


@case
def evaluate_folder_without_checkpoints(c):
    d = c.tmp / "not-a-run"
    d.mkdir()
    (d / "notes.txt").write_text("hello\n")
    return _evaluate(d, re.escape(str(d)) + r".*no checkpoints", d)


@case
def evaluate_garbage_checkpoint(c):
    d = c.tmp / "ckpts"
    d.mkdir()
    f = d / "model.pt"
    f.write_bytes(os.urandom(3000))
    return _evaluate(f, re.escape(str(f)) + r".*(damaged|not a PyTorch file)", d)


@case
def evaluate_foreign_checkpoint(c):
    d = c.tmp / "ckpts"
    d.mkdir()
    f = d / "weights.pt"
    torch.save({"weights": 1}, f)
    return _evaluate(f, re.escape(str(f)) + r".*not a longtail checkpoint", d)


@case
def evaluate_code_running_checkpoint(c):
    d = c.tmp / "ckpts"
    marker = c.tmp / "PWNED-evaluate"
    f = write_code_pickle(d / "evil.pt", marker, lambda evil: {"format": "longtail-checkpoint", "model": evil})
    return _evaluate(f, r"refused to read " + re.escape(str(f)), d, marker)


@case
def evaluate_code_running_last_pt_in_run_folder(c):
    run = c.run_copy()
    marker = c.tmp / "PWNED-evaluate-run"
    ckpt = run / "checkpoints" / "last.pt"
    ckpt.unlink()
    write_code_pickle(ckpt, marker, lambda evil: {"format": "longtail-checkpoint", "model": evil})
    return _evaluate(run, r"refused to read " + re.escape(str(ckpt)), run, marker)


@case
def decouple_unknown_method(c):  # argparse: --method has choices
    run = c.run_copy()
    out = c.out
    return Case(["decouple", str(run), "--method", "nosuch", "--out", str(out)],
                r"--method.*invalid choice: 'nosuch'", watch=[run, out])


@case
def decouple_missing_run(c):
    p = c.tmp / "no-such-run"
    out = c.out
    return Case(["decouple", str(p), "--method", "crt", "--out", str(out), "--device", "cpu"],
                re.escape(str(p)) + r".*does not exist", watch=[p, out])


@case
def decouple_tau_for_crt(c):
    run = c.run_copy()
    out = c.out
    return Case(["decouple", str(run), "--method", "crt", "--tau", "1", "--out", str(out), "--device", "cpu"],
                r"crt has no tau", watch=[run, out])


@case
def decouple_epochs_zero(c):
    run = c.run_copy()
    out = c.out
    return Case(["decouple", str(run), "--method", "crt", "--epochs", "0", "--out", str(out), "--device", "cpu",
                 "--quiet"], r"--epochs must be >= 1, got 0", watch=[run, out])


@case
def decouple_garbage_checkpoint(c):
    d = c.tmp / "ckpts"
    d.mkdir()
    f = d / "model.pt"
    f.write_bytes(b"\x80\x02garbage" * 50)
    out = c.out
    return Case(["decouple", str(f), "--method", "tau-norm", "--tau", "1", "--out", str(out), "--device", "cpu"],
                re.escape(str(f)) + r".*(damaged|not a PyTorch file)", watch=[d, out])


@case
def pseudo_label_bad_pool(c):
    run = c.run_copy()
    out = c.out
    return Case(["pseudo-label", str(run), "--pool", "nosuch:rho_u=10", "--out", str(out), "--device", "cpu"],
                r"unknown unlabeled pool 'nosuch:rho_u=10'", watch=[run, out])


@case
def pseudo_label_bad_pool_setting(c):
    run = c.run_copy()
    out = c.out
    return Case(["pseudo-label", str(run), "--pool", "unused:rho=10", "--out", str(out), "--device", "cpu"],
                r"'rho=10'.*unused:rho=10(.|\n)*fix:.*rho_u", watch=[run, out])


@case
def pseudo_label_threshold_out_of_range(c):
    run = c.run_copy()
    out = c.out
    # a pool the quickstart run has room for (a few unused digits per class), so the threshold is what is wrong
    return Case(["pseudo-label", str(run), "--pool", "unused:rho_u=1,factor=0.1", "--threshold", "1.5",
                 "--out", str(out), "--device", "cpu"], r"threshold.*1\.5", watch=[run, out])


@case
def pseudo_label_garbage_checkpoint(c):
    d = c.tmp / "ckpts"
    d.mkdir()
    f = d / "model.pt"
    f.write_bytes(os.urandom(2000))
    out = c.out
    return Case(["pseudo-label", str(f), "--pool", "unused:rho_u=10,factor=1", "--out", str(out), "--device", "cpu"],
                re.escape(str(f)) + r".*(damaged|not a PyTorch file)", watch=[d, out])


@case
def compare_mismatched_names(c):
    run = c.run_copy()
    out = c.out
    return Case(["compare", str(run), str(run), "--names", "only-one", "--out", str(out)],
                r"1 names for 2 runs", watch=[run, out])


@case
def compare_missing_run(c):
    run = c.run_copy()
    missing = c.tmp / "no-such-run"
    out = c.out
    return Case(["compare", str(run), str(missing), "--out", str(out)], re.escape(str(missing)),
                watch=[run, missing, out])


@case
def compare_folder_without_report(c):
    run = c.run_copy()
    (run / "report.json").unlink()
    out = c.out
    return Case(["compare", str(run), "--out", str(out)], re.escape(str(run)) + r" has no report\.json",
                watch=[run, out])


@case
def train_on_code_running_pseudo_labels(c):
    d = c.tmp / "labels"
    marker = c.tmp / "PWNED-pseudo"
    f = write_code_pickle(d / "pseudo_labels.pt", marker,
                          lambda evil: {"format": "longtail-pseudo-labels", "labels": evil})
    k = _bad(c, r"refused to read " + re.escape(str(f)), "--set", f"data.pseudo_labels={d}")
    k.watch.append(d)
    k.marker = marker
    return k


@case
def train_from_missing_pseudo_labels(c):
    d = c.tmp / "no-labels"
    d.mkdir()
    k = _bad(c, r"no pseudo-labels at " + re.escape(str(d)), "--set", f"data.pseudo_labels={d}")
    k.watch.append(d)
    return k


@case
def init_from_code_running_file(c):
    marker = c.tmp / "PWNED-init"
    f = write_code_pickle(c.tmp / "backbone" / "weights.pt", marker, lambda evil: {"model": evil})
    k = _bad(c, r"refused to read " + re.escape(str(f)), "--init-from", str(f))
    k.watch.append(f.parent)
    k.marker = marker
    return k


# --- found by the audit of 2026-12-01 (twelfth session) -------------------------------------------
@case
def huge_epochs(c):  # it once hung: per-epoch schedules are lists
    return _bad(c, r"train\.epochs must be .*\[1, 100000\], got 1000000000", "--epochs", "1000000000")


@case
def cifar_labels_not_integers(c):
    root = c.tmp / "data"
    folder = write_fake_cifar10(root)
    d = pickle.load(open(folder / "data_batch_3", "rb"))
    d["labels"] = ["cat"] * len(d["labels"])
    _dump(folder / "data_batch_3", d)
    return _cifar(c, root, re.escape(str(folder / "data_batch_3")) + r".*labels should be integers")


def _own_data(c: Ctx, kind: str, pattern: str) -> Case:
    return Case(["train", "folder-fast-la", "--set", f"data.dataset={kind}", "--data-root", str(c.tmp / "own"),
                 "--epochs", "1", "--device", "cpu", "--out", str(c.out), "--quiet"], pattern,
                watch=[c.out, c.tmp / "own"])


def _csv_data(c: Ctx, train_rows: list[str], *, encoding: str = "utf-8", bom: bool = False) -> None:
    from imagefiles import write_images

    own = c.tmp / "own"
    write_images(own, "img", [3, 3], ["a", "b"])
    files = sorted(p.relative_to(own).as_posix() for p in (own / "img").rglob("*") if p.is_file())
    lines = [row.format(*files) for row in train_rows]
    (own / "train.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + "\n".join(lines).encode(encoding))
    (own / "test.csv").write_text("\n".join(f"{f},{k % 2}" for k, f in enumerate(files)))


@case
def csv_in_latin1(c):  # a raw UnicodeDecodeError once
    _csv_data(c, ["path,label", "{0},0", "{1},1", "{2},0", "{3},1 é"], encoding="latin-1")
    return _own_data(c, "csv", re.escape(str(c.tmp / "own" / "train.csv")) + r" is not UTF-8 text.*0xe9")


@case
def csv_labels_mix_integers_and_a_float(c):  # "0.0" once became a class of its own, silently
    _csv_data(c, ["{0},0", "{1},1", "{2},0.0", "{3},1"])
    return _own_data(c, "csv", r"train\.csv: the labels mix integers and a decimal number \('0\.0' in row 3")


@case
def csv_with_a_header_of_other_names(c):  # the header row once read as an image that does not exist, no more said
    _csv_data(c, ["img,cls", "{0},a", "{1},b", "{2},a"])
    return _own_data(c, "csv", r"image .*img \(listed in .*train\.csv\) does not exist\n.*fix: if the first row "
                     r"of train\.csv is a header, name its columns path,label")


@case
def csv_of_one_class(c):
    _csv_data(c, ["{0},a", "{1},a", "{2},a"])
    return _own_data(c, "csv", r"every image has the label 'a'.*two classes")


@case
def image_folder_nested_a_level_too_deep(c):  # it once trained one class and reported 100 %
    from imagefiles import write_images

    own = c.tmp / "own"
    write_images(own / "train", "all", [3, 3], ["cat", "dog"])
    write_images(own, "test", [2, 2], ["cat", "dog"])
    return _own_data(c, "folder", re.escape(str(own / "train")) + r" has one class folder, 'all' \(its images sit "
                     r"in the sub-folders cat, dog\)")


@case
def imbalance_ratio_on_an_image_folder(c):  # it was once ignored, and recorded in config.json as if used
    from imagefiles import write_images

    own = c.tmp / "own"
    write_images(own, "train", [4, 2], ["cat", "dog"])
    write_images(own, "test", [2, 2], ["cat", "dog"])
    k = _own_data(c, "folder", r"data\.imbalance_ratio=2\.0 cut\(s\) a long-tailed subset.*data\.dataset=folder")
    k.argv += ["--imbalance-ratio", "2"]
    return k


@case
def image_folder_with_a_broken_link(c):
    from imagefiles import write_images

    own = c.tmp / "own"
    write_images(own, "train", [3, 3], ["cat", "dog"])
    write_images(own, "test", [2, 2], ["cat", "dog"])
    (own / "train" / "dog" / "gone.JPEG").symlink_to(c.tmp / "nowhere.JPEG")
    k = _own_data(c, "folder", re.escape(str(own / "train" / "dog" / "gone.JPEG")) + r" is a link to an image "
                  "that does not exist")
    k.watch = [c.out]  # a snapshot cannot stat the broken link
    return k


@case
def seeds_into_a_single_runs_folder(c):  # the seeds once trained beside it and rewrote its report
    run = c.run_copy()
    return Case(["train", "quickstart", "--epochs", "1", "--seeds", "0", "1", "--out", str(run), "--quiet"],
                re.escape(str(run)) + r" holds the run of one seed, and --seeds asks for several", watch=[run])


@case
def one_run_into_a_seeds_folder(c):
    run = c.run_copy()
    seeds = c.tmp / "seeds"
    (seeds / "seed-0").mkdir(parents=True)
    shutil.copy2(run / "config.json", seeds / "seed-0" / "config.json")
    return Case(["train", "quickstart", "--epochs", "1", "--out", str(seeds), "--quiet"],
                re.escape(str(seeds)) + r" holds the runs of several seeds \(seed-0\)", watch=[seeds])


@case
def compare_out_is_a_file(c):  # a raw FileExistsError once
    run = c.run_copy()
    f = c.tmp / "table.md"
    f.write_text("mine")
    return Case(["compare", str(run), "--out", str(f / "sub")], re.escape(str(f)) + r" is a file, not a folder",
                watch=[run, f])


@case
def decouple_a_decoupled_run(c):  # its head adjustment was once dropped, silently
    run = c.run_copy()
    assert main(["decouple", str(run), "--method", "logit-adjust", "--tau", "1", "--device", "cpu"]) == 0
    out = run / "decouple-logit-adjust"
    return Case(["decouple", str(out), "--method", "tau-norm", "--tau", "1", "--device", "cpu"],
                re.escape(str(out)) + r" is the output of `longtail decouple` \(logit-adjust\).*\n.*fix: decouple the "
                "run it came from", watch=[run])


@case
def resume_a_run_whose_config_json_is_damaged(c):  # it once said "not a longtail run folder"
    run = c.run_copy()
    (run / "config.json").write_text("{ half a json")
    return Case(["train", "quickstart", "--epochs", "1", "--out", str(run), "--quiet"],
                re.escape(str(run)) + r" holds a checkpoint but its config\.json is missing or damaged", watch=[run])


@case
def pretrain_recipe_with_another_dataset(c):
    return Case(["pretrain", "cifar10-lt-rotation-ssp", "--dataset", "digits", "--epochs", "1", "--out", str(c.out),
                 "--quiet"], r"--dataset digits goes with a method name; the recipe cifar10-lt-rotation-ssp "
                "pre-trains on cifar10", watch=[c.out])


@case
def evaluate_a_pretraining_run(c):  # it once blamed a shape mismatch of the head
    pre = c.tmp / "pre"
    assert main(["pretrain", "rotation", "--dataset", "digits", "--epochs", "1", "--out", str(pre), "--quiet",
                 "--set", "ssl.probe_epochs=1"]) == 0
    return Case(["evaluate", str(pre), "--device", "cpu"],
                r"is a pre-training run \(rotation\).*\n.*fix: train a classifier from it first.*--init-from "
                + re.escape(str(pre)), watch=[pre])


@case
def evaluate_a_damaged_last_checkpoint_names_the_previous(c):
    run = c.run_copy()
    last = run / "checkpoints" / "last.pt"
    shutil.copy2(last, run / "checkpoints" / "previous.pt")
    last.write_bytes(last.read_bytes()[:2000])  # truncated
    return Case(["evaluate", str(run), "--device", "cpu"],
                re.escape(str(last)) + r".*\n.*fix: .*the one it replaced, " + re.escape(str(run / "checkpoints" /
                                                                                        "previous.pt")),
                watch=[run])


# ----------------------------------------------------------------------------- the battery
@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """No case may download: any attempt fails the case (it would show as a traceback)."""
    def refuse(url, *args, **kwargs):
        raise AssertionError(f"a bad-input case tried to download {url}")

    monkeypatch.setattr(download_mod, "urlopen", refuse)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One tiny finished run (quickstart, 1 epoch, CPU), for the cases that need a real run folder."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "quickstart", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "report.json").is_file()
    return out


NEEDS_RUN = {"restart_with_bad_settings", "resume_with_other_settings", "evaluate_code_running_last_pt_in_run_folder",
             "decouple_unknown_method", "decouple_tau_for_crt", "decouple_epochs_zero", "pseudo_label_bad_pool",
             "pseudo_label_bad_pool_setting", "pseudo_label_threshold_out_of_range", "compare_mismatched_names",
             "compare_missing_run", "compare_folder_without_report", "seeds_into_a_single_runs_folder",
             "one_run_into_a_seeds_folder", "compare_out_is_a_file", "decouple_a_decoupled_run",
             "evaluate_a_damaged_last_checkpoint_names_the_previous", "resume_a_run_whose_config_json_is_damaged"}


#: the cases that argparse refuses (SystemExit 2 with a usage line); every other one is a LongtailError
ARGPARSE = {"device_tpu", "decouple_unknown_method"}


def test_battery_is_large_and_mostly_longtail_errors():
    assert len(CASES) >= 40
    assert ARGPARSE <= set(CASES) and len(ARGPARSE) * 4 < len(CASES)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in NEEDS_RUN else n for n in CASES])
def test_bad_input_is_refused_cleanly(name, tmp_path, request, capsys, monkeypatch):
    trained = request.getfixturevalue("trained_run") if name in NEEDS_RUN else tmp_path / "no-trained-run"
    work = tmp_path / "case"
    work.mkdir()
    monkeypatch.chdir(work)  # a default output folder (runs/...) would land here, never in the repository
    k = CASES[name](Ctx(work, trained))
    before = [snapshot(p) for p in k.watch]
    capsys.readouterr()

    try:
        code = main(k.argv)
    except SystemExit as e:  # argparse
        code = e.code
        assert name in ARGPARSE, f"unexpected argparse exit {e.code} for {name}: {capsys.readouterr().err}"
    out, err = capsys.readouterr()

    assert code == 2, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in err, err
    assert re.search(k.pattern, err), f"pattern {k.pattern!r} not in stderr:\n{err}"
    if name in ARGPARSE:
        assert err.startswith("usage: ") and "\nlongtail: error: " in err, err
    else:
        assert err.startswith("longtail: error: "), err
    assert any(line.startswith("  fix: ") for line in err.splitlines()), err
    if k.marker is not None:
        assert not k.marker.exists(), "a pickle ran code"
    for p, b in zip(k.watch, before):
        a = snapshot(p)
        assert a == b, f"{p} changed: {describe_change(b, a)}"
    assert not (work / "runs").exists(), "a default runs/ folder was written"


@pytest.mark.slow
def test_resume_from_a_code_running_last_checkpoint_never_runs_it(trained_run, tmp_path, capsys):
    """checkpoints/last.pt replaced by a pickle that runs code, then the same command again: longtail may
    fall back to an earlier checkpoint or stop, but it never runs the payload."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, copy_function=shutil.copy2)
    marker = tmp_path / "PWNED-resume"
    last = run / "checkpoints" / "last.pt"
    last.unlink()
    write_code_pickle(last, marker, lambda evil: {"format": "longtail-checkpoint", "model": evil})
    try:
        main(["train", "quickstart", "--epochs", "1", "--out", str(run), "--quiet"])
    except SystemExit:
        pass
    err = capsys.readouterr().err
    assert not marker.exists(), "resuming ran the checkpoint's code"
    assert "Traceback" not in err, err


def test_the_code_running_pickles_are_live(tmp_path):
    """The payload the cases use does run under a plain ``torch.load`` (so its marker staying absent means
    something)."""
    marker = tmp_path / "PWNED-plain-load"
    f = write_code_pickle(tmp_path / "evil.pt", marker, lambda evil: {"format": "longtail-checkpoint", "model": evil})
    torch.load(f, weights_only=False)
    assert marker.exists()
