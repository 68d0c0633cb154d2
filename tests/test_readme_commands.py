"""The README's shell commands run, in the order a new user meets them, at tiny settings (issue 16).

Every line of every ```bash block of README.md becomes a command. ``pip install`` and ``python -m pytest``
lines are what CI runs itself (checked against ``.ci/run``); every ``longtail ...`` and ``bash scripts/...``
line runs, in README order, in one working folder, so the run folders one command writes are what the next
one reads. The data are fakes in the official layouts at the README's own paths (``../shared/data`` next to
the working folder, ``data`` (the default ``data.root``), ``my_photos``, ``resnet50.pth``); the only
placeholder substituted is ``DIR``. Each kind of command gets the same tiny options (``TINY``), appended
only where the README's command does not set that option itself, so the README's own options stay as
written. A README line of any other kind fails the test: a new command cannot slip by untested.

Speed: a fresh ``longtail`` process spends most of a tiny run importing PyTorch, torch._dynamo (which
``torch.optim`` loads) and matplotlib, 10-15 s of CPU each, and the README runs ``longtail`` 30-odd times
(the scripts included). So by default ``longtail`` on the commands' PATH is a small client of a fork server
that has imported those once: each command still runs in its own process (forked from the server, its own
cwd, environment, argv, stdin/stdout/stderr, exit status), from ``longtail.cli.main`` as the console script
does. ``LONGTAIL_README_FRESH=1`` runs every command through the installed ``longtail`` script instead.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imagefiles import write_images

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"

#: placeholders the README writes for "your folder": what they stand for in the test's working folder
PLACEHOLDERS = {"DIR": "../shared/data"}

#: options of a training run: one epoch on the CPU, never a download, a long-tailed subset of at most 10
#: images a class (rho 10 keeps at least one image in every class), the DARP protocol's sizes alike, and
#: image-file data sets at 32 px decoded in the main process
TRAIN_TINY = ["--epochs", "1", "--device", "cpu", "--no-download", "--imbalance-ratio", "10",
              "--set", "data.n_max=10", "--set", "data.darp_n1=10", "--set", "data.darp_m1=20",
              "--set", "data.darp_gamma_l=10", "--set", "data.darp_gamma_u=10",
              "--set", "data.image_size=32", "--set", "data.num_workers=0"]

#: command kind -> the options appended to each command of that kind (an option the README's command
#: already gives, or a ``--set KEY`` it already sets, is not appended)
TINY: dict[str, list[str]] = {
    "quickstart": ["--epochs", "1"],
    "recipes": [],
    "train": TRAIN_TINY,
    "pretrain": TRAIN_TINY + ["--set", "ssl.probe_epochs=1"],
    "evaluate": ["--device", "cpu"],
    "decouple": ["--epochs", "1", "--device", "cpu"],
    "pseudo-label": ["--device", "cpu"],
    "compare": [],
    "tune": TRAIN_TINY,
    "script": TRAIN_TINY,  # the scripts pass their further options to each of their training commands
}

#: what each script leaves under its OUT folder: run folders (report.json with a top1) and other files
SCRIPT_OUTPUTS: dict[str, tuple[list[str], list[str]]] = {
    "scripts/semi_pseudo.sh": (["base", "semi"], ["pseudo-labels/pseudo_labels.json", "comparison/comparison.md"]),
    "scripts/darp_protocol.sh": (["supervised", "pseudo", "fixmatch", "fixmatch-da", "fixmatch-la"],
                                 ["pseudo-labels/pseudo_labels.json", "comparison/comparison.md"]),
}

#: README commands that cannot run at tiny settings on a CPU, each with the reason (keep it minimal)
SKIP: dict[str, str] = {}

SHELL_OPERATORS = ("|", ">", "<", ";", "&", "$", "`")


# ----------------------------------------------------------------------------- the README's commands
def readme_commands(text: str) -> list[list[str]]:
    """Each command of the ```bash blocks, in order, as tokens: continuation lines joined, a trailing
    ``# comment`` dropped, ``a && b`` two commands."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            current: list[str] = []
            for token in shlex.split(line, comments=True):
                if token == "&&":
                    commands.append(current)
                    current = []
                else:
                    current.append(token)
            if current:
                commands.append(current)
    return commands


def kind_of(cmd: list[str]) -> str | None:
    """install | pytest | lint (CI runs these) | a ``longtail`` subcommand or ``script`` (run here) | None."""
    if any(t.startswith(SHELL_OPERATORS) for t in cmd):
        return None  # a pipe or a redirection: the runner below would not reproduce it
    if cmd[:2] == ["pip", "install"] or cmd[:4] == ["python", "-m", "pip", "install"]:
        return "install"
    if cmd[:3] == ["python", "-m", "pytest"]:
        return "pytest"
    if cmd[:3] == ["python", "-m", "ruff"] or cmd[:1] == ["ruff"]:
        return "lint"
    if cmd[0] == "longtail" and len(cmd) > 1 and cmd[1] in TINY and cmd[1] != "script":
        return cmd[1]
    if cmd[0] == "bash" and len(cmd) > 1 and cmd[1] in SCRIPT_OUTPUTS:
        return "script"
    return None


def with_tiny_options(cmd: list[str], kind: str) -> list[str]:
    """``cmd`` (placeholders substituted) with ``TINY[kind]`` appended, less what it sets itself."""
    cmd = [PLACEHOLDERS.get(t, t) for t in cmd]
    given = {t for t in cmd if t.startswith("--")}
    given_sets = {cmd[i + 1].split("=")[0] for i, t in enumerate(cmd[:-1]) if t == "--set"}
    extra, tiny = [], TINY[kind]
    if kind in ("train", "tune") and len(cmd) > 2 and cmd[2].startswith("folder-"):
        # image-file data is trained on as it is: the long-tailed subset's settings are refused there
        drop = (["--imbalance-ratio", "10"], ["--set", "data.n_max=10"])
        kept, i = [], 0
        while i < len(tiny):
            n = 2 if i + 1 < len(tiny) and not tiny[i + 1].startswith("--") else 1
            if tiny[i:i + n] not in drop:
                kept += tiny[i:i + n]
            i += n
        tiny = kept
    i = 0
    while i < len(tiny):
        flag = tiny[i]
        takes_value = i + 1 < len(tiny) and not tiny[i + 1].startswith("--")
        value = [tiny[i + 1]] if takes_value else []
        if flag == "--set":
            if value[0].split("=")[0] not in given_sets:
                extra += [flag, *value]
        elif flag not in given:
            extra += [flag, *value]
        i += 1 + len(value)
    return cmd + extra


def option(cmd: list[str], flag: str, default: str | None = None) -> str | None:
    return cmd[cmd.index(flag) + 1] if flag in cmd else default


def values(cmd: list[str], flag: str) -> list[str]:
    """The values of a several-value option (``--seeds 0 1 2``); [] when it is not given."""
    return positionals(cmd, cmd.index(flag) + 1) if flag in cmd else []


def positionals(cmd: list[str], start: int) -> list[str]:
    """The positional arguments from ``cmd[start:]`` up to the first option."""
    out = []
    for t in cmd[start:]:
        if t.startswith("--"):
            break
        out.append(t)
    return out


# ----------------------------------------------------------------------------- fake data, in the real layouts
def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are protocol-2 pickles


def _cifar_rows(rng, per_class: int, num_classes: int) -> tuple[np.ndarray, list[int]]:
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    # brightness encodes the class, so one epoch learns something
    data = np.clip(rng.normal(30 + 200 * labels[:, None] / num_classes, 20, (len(labels), 3072)), 0, 255)
    return data.astype(np.uint8), [int(v) for v in labels]


def write_fake_cifar10(root: Path, train_per_class: int = 100, test_per_class: int = 10) -> None:
    """cifar-10-batches-py: data_batch_1..5, test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data, labels = _cifar_rows(rng, train_per_class, 10)
    n = len(labels) // 5
    for b in range(5):
        _dump(folder / f"data_batch_{b + 1}", {"batch_label": f"training batch {b + 1} of 5",
                                               "labels": labels[b * n:(b + 1) * n], "data": data[b * n:(b + 1) * n]})
    data, labels = _cifar_rows(rng, test_per_class, 10)
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": labels, "data": data})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": n, "num_vis": 3072})


def write_fake_cifar100(root: Path, train_per_class: int = 12, test_per_class: int = 1) -> None:
    """cifar-100-python: train, test, meta (``fine_labels``, ``fine_label_names``)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        data, labels = _cifar_rows(rng, per_class, 100)
        _dump(folder / split, {"batch_label": split, "fine_labels": labels, "coarse_labels": [v // 5 for v in labels],
                               "data": data})
    _dump(folder / "meta", {"fine_label_names": [f"class{c}" for c in range(100)],
                            "coarse_label_names": [f"super{c}" for c in range(20)]})


def make_workdir(tmp: Path) -> Path:
    """``tmp/work`` (the working folder) with ``../shared/data`` and ``data`` holding fake CIFAR-10/100,
    ``my_photos`` (a class-folder image set) and ``resnet50.pth`` (a random torchvision ResNet-50)."""
    import torch
    import torchvision

    shared = tmp / "shared" / "data"
    write_fake_cifar10(shared)
    write_fake_cifar100(shared)
    work = tmp / "work"
    work.mkdir()
    (work / "data").symlink_to(shared, target_is_directory=True)  # the default data.root
    names = ["cat", "dog", "owl"]
    write_images(work / "my_photos", "train", [8, 4, 2], names, seed=0, suffix=".jpg")
    write_images(work / "my_photos", "test", [3, 3, 3], names, seed=1, suffix=".jpg")
    torch.save(torchvision.models.resnet50().state_dict(), work / "resnet50.pth")
    return work


# ----------------------------------------------------------------------------- checks after each command
def _top1(folder: Path) -> float:
    """The top-1 of a run folder's report (a several-seed run's: the mean over its seeds)."""
    path = folder / "report.json"
    assert path.is_file(), f"{path} was not written"
    report = json.loads(path.read_text())
    if "aggregate" in report:
        report = {"top1": report["aggregate"].get("top1", {}).get("mean")}
    assert isinstance(report.get("top1"), (int, float)), f"{path} has no top1: {sorted(report)}"
    return float(report["top1"])


def check_result(kind: str, cmd: list[str], work: Path, stdout: str, started: float) -> None:
    if kind == "recipes":
        from longtail.recipes import RECIPES

        listed = [line.split()[0] for line in stdout.splitlines() if line.strip()]
        assert listed == list(RECIPES), "`longtail recipes` does not list the recipes, one per line, name first"
    elif kind in ("train", "pretrain", "quickstart"):
        name = positionals(cmd, 2)[0] if kind != "quickstart" else "quickstart"
        out = work / option(cmd, "--out", f"runs/{name}")
        _top1(out)
        for seed in values(cmd, "--seeds"):
            _top1(out / f"seed-{seed}")
    elif kind == "evaluate":
        run = work / positionals(cmd, 2)[0]
        _top1(run)
        assert (run / "report.json").stat().st_mtime >= started - 1, "evaluate did not rewrite report.json"
    elif kind == "decouple":
        run = positionals(cmd, 2)[0]
        _top1(work / option(cmd, "--out", f"{run}/decouple-{option(cmd, '--method')}"))
    elif kind == "pseudo-label":
        out = work / option(cmd, "--out")
        assert (out / "pseudo_labels.pt").is_file() and (out / "pseudo_labels.json").is_file()
    elif kind == "compare":
        out = work / option(cmd, "--out", "runs/comparison")
        assert (out / "comparison.md").is_file() and (out / "comparison.png").is_file()
        table = (out / "comparison.md").read_text()
        for name in values(cmd, "--names"):
            assert name in table, f"--names {name} is not in {out / 'comparison.md'}"
    elif kind == "tune":
        out = work / option(cmd, "--out", f"runs/tune-{positionals(cmd, 2)[0]}")
        summary = json.loads((out / "tune.json").read_text())
        assert len(summary["rows"]) == len(option(cmd, "--grid").split("=")[1].split(","))
        for row in summary["rows"]:
            _top1(out / row["folder"])
        assert summary["chosen"]["folder"] in (out / "tune.md").read_text()
    elif kind == "script":
        runs, files = SCRIPT_OUTPUTS[cmd[1]]
        out = work / cmd[3]
        for run in runs:
            _top1(out / run)
        for f in files:
            assert (out / f).is_file(), f"{cmd[1]} did not write {out / f}"


# ----------------------------------------------------------------------------- the fork server
SERVER = r"""
import json, os, socket, struct, sys, traceback

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: F401  (imported once here: every command's report plots)
import torch  # noqa: F401
import torch._dynamo  # noqa: F401  (torch.optim imports it on the first optimizer)
import torchvision  # noqa: F401

import longtail.cli
import longtail.compare  # noqa: F401
import longtail.experiment  # noqa: F401

server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
server.bind(sys.argv[1])
server.listen(4)
while True:
    conn, _ = server.accept()
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    request = json.loads(msg)
    pid = os.fork()
    if pid == 0:  # the command's own process
        code = 1
        try:
            server.close()
            conn.close()
            for i, fd in enumerate(fds):
                os.dup2(fd, i)
                os.close(fd)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            sys.argv = request["argv"]
            code = longtail.cli.main(request["argv"][1:])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    conn.send(struct.pack("i", os.waitstatus_to_exitcode(status)))
    conn.close()
"""

CLIENT = """#!{python} -I
import json, os, socket, struct, sys

conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
conn.connect({socket_path!r})
request = {{"argv": ["longtail", *sys.argv[1:]], "cwd": os.getcwd(), "env": dict(os.environ)}}
socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
reply = conn.recv(4)
sys.exit(struct.unpack("i", reply)[0] if len(reply) == 4 else 1)
"""


def start_fork_server(folder: Path) -> tuple[subprocess.Popen, Path]:
    """The server (its own session, so that its forked commands end with it) and a folder whose ``longtail``
    is its client."""
    socket_path = folder / "s"
    (folder / "server.py").write_text(SERVER)
    with open(folder / "server.log", "w") as log:
        server = subprocess.Popen([sys.executable, str(folder / "server.py"), str(socket_path)], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    client = bin_dir / "longtail"
    client.write_text(CLIENT.format(python=sys.executable, socket_path=str(socket_path)))
    client.chmod(0o755)
    deadline = time.time() + 300
    while not socket_path.exists():
        if server.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"the fork server did not start: {(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(0.2)
    return server, bin_dir


def stop_fork_server(server: subprocess.Popen) -> None:
    try:
        os.killpg(server.pid, signal.SIGKILL)  # the server and any command still running under it
    except ProcessLookupError:
        pass
    server.wait()


# ----------------------------------------------------------------------------- the tests
def test_readme_has_commands_and_skips_name_real_ones():
    commands = [shlex.join(c) for c in readme_commands(README.read_text())]
    assert any(c.startswith("longtail train") for c in commands) and any(c.startswith("bash ") for c in commands)
    stale = [c for c in SKIP if c not in commands]
    assert not stale, f"SKIP names commands the README no longer has: {stale}"


def test_readme_install_and_test_commands_are_what_ci_runs():
    ci = CI_RUN.read_text()
    ci_installs = [shlex.split(line.strip(), comments=True) for line in ci.splitlines() if "pip install" in line]
    ci_targets = [t for cmd in ci_installs for t in cmd if t.startswith(".")]
    for cmd in readme_commands(README.read_text()):
        kind = kind_of(cmd)
        if kind == "install":
            targets = [t for t in cmd if t.startswith(".")]
            assert targets, f"README install without the package: {shlex.join(cmd)}"
            for target in targets:
                extras = set(re.findall(r"\[(.*)\]", target)[0].split(",")) if "[" in target else set()
                covered = [t for t in ci_targets
                           if extras <= (set(re.findall(r"\[(.*)\]", t)[0].split(",")) if "[" in t else set())]
                assert covered, f"README installs {target} but .ci/run installs only {ci_targets}"
                if "-e" in cmd:
                    assert any("-e" in c for c in ci_installs), ".ci/run does not install the package editable"
        elif kind in ("pytest", "lint"):
            ci_form = shlex.join(cmd) if cmd[0] == "python" else "python -m " + shlex.join(cmd)
            assert ci_form in ci, f"the README's {shlex.join(cmd)!r} is not what .ci/run runs ({ci_form!r})"


@pytest.mark.slow
def test_readme_commands_run_in_order(tmp_path):
    commands = readme_commands(README.read_text())
    unknown = [shlex.join(c) for c in commands if kind_of(c) is None]
    assert not unknown, ("a README command the test does not know how to run: " + "; ".join(unknown)
                         + " — teach tests/test_readme_commands.py")
    pytest.importorskip("torchvision", reason="the README's image-folder commands need the images extra")
    work = make_workdir(tmp_path)
    path = [str(Path(sys.executable).parent), os.environ.get("PATH", "")]  # the venv's bin first
    server = None
    if not os.environ.get("LONGTAIL_README_FRESH"):
        server, client_dir = start_fork_server(tmp_path)
        path.insert(0, str(client_dir))
    env = {**os.environ, "PATH": os.pathsep.join(path), "MPLBACKEND": "Agg",
           # any download attempt fails at once instead of reaching the network
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    longtail = shutil.which("longtail", path=env["PATH"])
    assert longtail, f"no `longtail` on {env['PATH']}"
    try:
        for readme_cmd in commands:
            kind = kind_of(readme_cmd)
            text = shlex.join(readme_cmd)
            if kind in ("install", "pytest", "lint") or text in SKIP:
                continue
            cmd = with_tiny_options(readme_cmd, kind)
            argv = ["bash", str(ROOT / cmd[1]), *cmd[2:]] if kind == "script" else [longtail, *cmd[1:]]
            started = time.time()
            proc = subprocess.run(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=600)
            print(f"{time.time() - started:6.1f} s  {shlex.join(cmd)}", flush=True)
            if proc.returncode != 0:
                pytest.fail(f"README command failed (exit {proc.returncode}): {text}\nrun as: {shlex.join(cmd)}\n"
                            f"--- stderr (end) ---\n{proc.stderr[-3000:]}\n--- stdout (end) ---\n{proc.stdout[-1500:]}")
            check_result(kind, cmd, work, proc.stdout, started)
    finally:
        if server is not None:
            stop_fork_server(server)
