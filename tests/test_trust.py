"""What longtail guarantees about its files (README, "What longtail guarantees"): a file it reads is data,
never code; a damaged checkpoint is noticed and the run is not lost; a run folder has one writer; a
diverged run keeps its last good checkpoint. The fault battery of issue 11."""

import errno
import json
import os
import pickle
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from longtail import LongtailError
from longtail.checkpoints import load_checkpoint, save_checkpoint
from longtail.data.registry import Splits
from longtail.experiment import evaluate_checkpoint, train_one
from longtail.runs import RunDir
from longtail.storage import LOCK_NAME, RunLock, digest, load_data_pickle, load_file

from conftest import synthetic_set
from test_loop_runs import tiny_config

SRC = Path(__file__).resolve().parents[1] / "src"


class Payload:
    """A pickle that, when unpickled with plain pickle, creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def splits():
    return Splits(synthetic_set([48, 24, 12, 6]), synthetic_set([10, 10, 10, 10], seed=1, name="test"))


def _weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


# data, never code -------------------------------------------------------------------------------------


def test_every_reader_refuses_a_payload_that_runs_code(tmp_path, splits):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "longtail-checkpoint", "model": {}, "x": Payload(marker)}, evil)
    with pytest.raises(LongtailError, match="refused to read .*evil.pt.*could run code"):
        load_file(evil)
    with pytest.raises(LongtailError, match="refused"):
        evaluate_checkpoint(evil)
    from longtail.data.pseudo_labels import load_pseudo_labels
    from longtail.decouple import decouple_run
    from longtail.ssl import load_pretrained_backbone

    with pytest.raises(LongtailError, match="refused"):
        decouple_run(evil, "tau-norm", out=tmp_path / "d", tau=1.0, splits=splits)
    (tmp_path / "pl").mkdir()
    torch.save({"format": "x", "labels": Payload(marker)}, tmp_path / "pl" / "pseudo_labels.pt")
    with pytest.raises(LongtailError, match="refused"):
        load_pseudo_labels(tmp_path / "pl")
    from longtail.models import make_model

    with pytest.raises(LongtailError, match="refused"):
        load_pretrained_backbone(make_model("tiny", 4), evil)
    assert not marker.exists()
    assert not (tmp_path / "d").exists()  # refused before anything was written


def test_a_replaced_last_checkpoint_does_not_run_code_on_resume(tmp_path, splits):
    cfg = tiny_config(epochs=3)
    train_one(cfg, tmp_path / "run", splits=splits, progress=False, stop_after=2)
    marker = tmp_path / "pwned"
    torch.save({"format": "longtail-checkpoint", "x": Payload(marker)}, tmp_path / "run" / "checkpoints" / "last.pt")
    logs = []
    train_one(cfg, tmp_path / "run", splits=splits, progress=False, log=logs.append)
    assert not marker.exists()
    assert any("refused" in m and "previous.pt (epoch 1)" in m for m in logs), logs


def test_data_pickles_are_read_without_running_code(tmp_path):
    import numpy as np

    good = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "batch_label": "x"}
    (tmp_path / "good").write_bytes(pickle.dumps(good, protocol=2))
    with open(tmp_path / "good", "rb") as f:
        assert load_data_pickle(f, encoding="latin1")["labels"] == [0, 1]
    marker = tmp_path / "pwned"
    (tmp_path / "bad").write_bytes(pickle.dumps({"data": Payload(marker)}, protocol=2))
    from longtail.data.cifar import _load_pickle

    with pytest.raises(LongtailError, match="posix.system|os.system"):
        _load_pickle(tmp_path / "bad")
    assert not marker.exists()


# damaged checkpoints ----------------------------------------------------------------------------------


def _overwrite(path: Path, offset_fraction: float, n: int = 256) -> None:
    data = bytearray(path.read_bytes())
    at = int(len(data) * offset_fraction)
    data[at:at + n] = bytes((i * 37 + 11) % 256 for i in range(n))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", [0.3, 0.5, 0.7])
def test_overwritten_bytes_are_noticed(tmp_path, splits, where):
    train_one(tiny_config(epochs=1), tmp_path / "run", splits=splits, progress=False)
    report = (tmp_path / "run" / "report.json").read_bytes()
    _overwrite(tmp_path / "run" / "checkpoints" / "last.pt", where)
    with pytest.raises(LongtailError, match=r"checkpoint .*last.pt is damaged"):
        evaluate_checkpoint(tmp_path / "run")
    assert (tmp_path / "run" / "report.json").read_bytes() == report  # not rewritten from damaged weights


def test_a_flipped_weight_fails_the_checksum(tmp_path, splits):
    """Damage that still unpickles (one weight changed) is caught by the checksum alone."""
    train_one(tiny_config(epochs=1), tmp_path / "run", splits=splits, progress=False)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    t = next(v for v in state["model"].values() if v.is_floating_point())
    t[(0,) * t.dim()] += 1.0
    torch.save(state, path)
    with pytest.raises(LongtailError, match="do not match their checksum"):
        load_checkpoint(path)
    assert digest({"a": torch.ones(2)}) != digest({"a": torch.tensor([1.0, 1.0 + 2 ** -20])})


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, splits):
    cfg = tiny_config(epochs=4)
    full = train_one(cfg, tmp_path / "full", splits=splits, progress=False)
    train_one(cfg, tmp_path / "cut", splits=splits, progress=False, stop_after=3)
    ckpts = tmp_path / "cut" / "checkpoints"
    assert load_checkpoint(ckpts / "previous.pt")["next_epoch"] == 2
    _overwrite(ckpts / "last.pt", 0.5)
    logs = []
    resumed = train_one(cfg, tmp_path / "cut", splits=splits, progress=False, log=logs.append)
    assert any("damaged" in m and "previous.pt (epoch 2)" in m for m in logs), logs
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["per_class"] == full["per_class"]


def test_nothing_usable_names_restart(tmp_path, splits):
    cfg = tiny_config(epochs=3)
    train_one(cfg, tmp_path / "run", splits=splits, progress=False, stop_after=2)
    for name in ("last.pt", "previous.pt"):
        _overwrite(tmp_path / "run" / "checkpoints" / name, 0.5)
    with pytest.raises(LongtailError) as e:
        train_one(cfg, tmp_path / "run", splits=splits, progress=False)
    assert "no usable checkpoint" in e.value.problem and "--restart" in e.value.fix


KILL_DURING_WRITE = """
import os, sys, torch
sys.path[:0] = [{src!r}, {tests!r}]
from longtail.data.registry import Splits
from longtail.experiment import train_one
from conftest import synthetic_set
from test_loop_runs import tiny_config
real_save, calls = torch.save, []
def dying_save(obj, f, *a, **k):
    calls.append(1)
    if len(calls) == 2:  # the second checkpoint: half written, then the process is killed
        f.write(b"PK\\x03\\x04" + b"x" * 1000); f.flush(); os._exit(9)
    return real_save(obj, f, *a, **k)
torch.save = dying_save
splits = Splits(synthetic_set([48, 24, 12, 6]), synthetic_set([10, 10, 10, 10], seed=1, name="test"))
train_one(tiny_config(epochs=3), {out!r}, splits=splits, progress=False)
"""


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_loses_nothing(tmp_path, splits):
    cfg = tiny_config(epochs=3)
    full = train_one(cfg, tmp_path / "full", splits=splits, progress=False)
    script = KILL_DURING_WRITE.format(src=str(SRC), tests=str(Path(__file__).parent), out=str(tmp_path / "cut"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr
    ckpts = tmp_path / "cut" / "checkpoints"
    assert list(ckpts.glob(".*.tmp")), "the killed write should have left its temporary file"
    assert load_checkpoint(ckpts / "last.pt")["next_epoch"] == 1  # the last complete one
    assert (tmp_path / "cut" / LOCK_NAME).is_file()  # the dead process's lock
    logs = []
    resumed = train_one(cfg, tmp_path / "cut", splits=splits, progress=False, log=logs.append)
    assert any("taking over the lock" in m for m in logs), logs
    assert not list(ckpts.glob(".*.tmp")) and not list((tmp_path / "cut").glob(".*.tmp"))
    assert not (tmp_path / "cut" / LOCK_NAME).exists()
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["per_class"] == full["per_class"]


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, splits, monkeypatch):
    cfg = tiny_config(epochs=3)
    train_one(cfg, tmp_path / "run", splits=splits, progress=False, stop_after=1)
    good = _weights(tmp_path / "run")
    import longtail.losses as losses

    real = losses._reduce
    monkeypatch.setattr(losses, "_reduce", lambda *a: real(*a) * float("nan"))
    with pytest.raises(LongtailError, match="training diverged in epoch 2: the mean training loss is nan"):
        train_one(cfg, tmp_path / "run", splits=splits, progress=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["next_epoch"] == 1
    for k in good:
        assert torch.equal(good[k], state["model"][k]), k
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(LongtailError, match="weight holds NaN"):
        save_checkpoint(tmp_path / "x.pt", config=cfg, model=model, optimizer=None, next_epoch=1, records=[])
    assert not (tmp_path / "x.pt").exists()


# one writer per run folder ----------------------------------------------------------------------------


def test_a_second_process_on_the_same_folder_stops_at_once(tmp_path, splits):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": "now"}))
        with pytest.raises(LongtailError, match=rf"in use by process {holder.pid} on {socket.gethostname()}"):
            train_one(tiny_config(epochs=1), run, splits=splits, progress=False)
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    logs = []  # the holder is gone now: its lock is stale and taken over
    train_one(tiny_config(epochs=1), run, splits=splits, progress=False, log=logs.append)
    assert any(f"process {holder.pid} that held it" in m for m in logs)
    assert not (run / LOCK_NAME).exists()


def test_a_lock_of_another_host_is_respected(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "then"}))
    with pytest.raises(LongtailError, match="in use by process 1 on elsewhere") as e:
        RunLock(tmp_path).acquire()
    assert LOCK_NAME in e.value.fix


@pytest.mark.parametrize("content", ["", "garbage", "{}", "5", '{"host": "elsewhere"}'])
def test_a_lock_file_that_names_no_process_says_so(tmp_path, content):
    """An empty or damaged lock file once read "in use by another process" (or "... since None") for ever."""
    (tmp_path / LOCK_NAME).write_text(content)
    with pytest.raises(LongtailError, match="has a lock file, .* that names no process") as e:
        RunLock(tmp_path).acquire()
    assert f"delete {tmp_path / LOCK_NAME}" in e.value.fix


def test_a_lock_is_reentrant_and_leaves_no_trace(tmp_path):
    with RunLock(tmp_path / "a" / "b"):
        with RunLock(tmp_path / "a" / "b"):
            assert (tmp_path / "a" / "b" / LOCK_NAME).is_file()
        assert (tmp_path / "a" / "b" / LOCK_NAME).is_file()
    assert not (tmp_path / "a").exists()  # folders the lock made, still empty, are removed


# the output folder ------------------------------------------------------------------------------------


def test_a_read_only_folder_is_an_error_before_any_work(tmp_path, splits, monkeypatch):
    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    trained = []
    import longtail.driver as driver

    monkeypatch.setattr(driver, "fit", lambda *a, **k: trained.append(1))
    with pytest.raises(LongtailError, match="cannot write .*Read-only file system") as e:
        train_one(tiny_config(epochs=1), tmp_path / "run", splits=splits, progress=False)
    assert "--out" in e.value.fix and not trained
    assert not (tmp_path / "run").exists()


def test_out_that_is_a_file_or_under_one(tmp_path, splits):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(LongtailError, match="is a file, not a folder"):
        train_one(tiny_config(epochs=1), tmp_path / "f", splits=splits, progress=False)
    with pytest.raises(LongtailError, match="which is a file"):
        train_one(tiny_config(epochs=1), tmp_path / "f" / "run", splits=splits, progress=False)
    assert (tmp_path / "f").read_text() == "mine"


def test_files_honour_the_umask(tmp_path, splits):
    old = os.umask(0o027)
    try:
        train_one(tiny_config(epochs=1), tmp_path / "run", splits=splits, progress=False)
    finally:
        os.umask(old)
    for name in ("checkpoints/last.pt", "report.json", "config.json", "metrics.jsonl"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o640, name


def test_restart_clears_a_run_folder_and_only_a_run_folder(tmp_path, splits):
    from longtail.runs import clear_run_folder, is_run_folder

    train_one(tiny_config(epochs=1), tmp_path / "run", splits=splits, progress=False)
    assert is_run_folder(tmp_path / "run")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    assert not is_run_folder(tmp_path / "mine")
    with pytest.raises(LongtailError, match="not a longtail run folder"):
        clear_run_folder(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"
    again = train_one(tiny_config(epochs=2), tmp_path / "run", splits=splits, progress=False, restart=True)
    assert again["epoch"] == 2 and len(RunDir(tmp_path / "run").metrics.read_text().splitlines()) == 2


@pytest.mark.parametrize("argv", [
    ["evaluate", "{ckpt}", "--device", "cpu"],
    ["decouple", "{ckpt}", "--method", "tau-norm", "--tau", "1", "--out", "{tmp}/d", "--device", "cpu"],
    ["pseudo-label", "{ckpt}", "--pool", "darp", "--out", "{tmp}/pl", "--device", "cpu"],
    ["train", "quickstart", "--epochs", "1", "--out", "{tmp}/t", "--init-from", "{ckpt}", "--quiet"],
], ids=["evaluate", "decouple", "pseudo-label", "init-from"])
def test_every_command_refuses_a_checkpoint_that_runs_code(tmp_path, capsys, argv):
    from longtail.cli import main

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    torch.save({"format": "longtail-checkpoint", "config": {}, "model": {"w": Payload(marker)}}, ckpt)
    code = main([a.format(ckpt=ckpt, tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and "refused to read" in err and "could run code" in err and "Traceback" not in err, err
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]  # nothing written
