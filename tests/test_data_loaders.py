"""CIFAR / SVHN loaders and the downloader, on tiny files written in the real formats.

Downloads are served by a local HTTP server on 127.0.0.1; the official URLs are never contacted
(the ``_local_only`` fixture fails any request to another host).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import pickle
import socket
import tarfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

from longtail.data import download as download_mod
from longtail.data.cifar import DATASET_INFO, N_MAX, load_cifar
from longtail.data.download import download_and_extract
from longtail.data.svhn import CLASS_NAMES as SVHN_NAMES
from longtail.data.svhn import N_MAX_SVHN, load_svhn, load_svhn_sets
from longtail.errors import LongtailError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 20


# ----------------------------------------------------------------------------- fixtures / fakes
@pytest.fixture(autouse=True)
def _local_only(monkeypatch):
    """Refuse any download that is not from 127.0.0.1, so a bug cannot reach the real servers."""
    real = download_mod.urlopen

    def guarded(url, *args, **kwargs):
        assert urlparse(url).hostname == "127.0.0.1", f"test tried to contact {url}"
        return real(url, *args, **kwargs)

    monkeypatch.setattr(download_mod, "urlopen", guarded)


@pytest.fixture
def http_dir(tmp_path):
    """(folder, base URL): files put in the folder are served over HTTP on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

    class QuietServer(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):  # a client that hangs up early (a test's Ctrl-C)
            pass

    server = QuietServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are protocol-2 pickles


def _batch(rng, n: int, num_classes: int, label_key: str, label: str) -> dict:
    return {
        "batch_label": label,
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }


def write_fake_cifar10(root: Path, seed: int = 0) -> dict:
    """The official cifar-10-batches-py layout with PER_BATCH images per file; returns the batches."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = _batch(rng, PER_BATCH, 10, "labels", name)
        _dump(folder / name, batches[name])
    _dump(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_cases_per_batch": PER_BATCH, "num_vis": 3072})
    return batches


def _targz(src_root: Path, member: str, out: Path) -> str:
    """Pack ``src_root/member`` as ``out`` (.tar.gz); return its MD5."""
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src_root / member, arcname=member)
    return hashlib.md5(out.read_bytes()).hexdigest()


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now, so a connection is refused
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


# ----------------------------------------------------------------------------- CIFAR-10
def test_fake_cifar10_loads_in_order_with_rgb_planes(tmp_path):
    batches = write_fake_cifar10(tmp_path)
    train, test = load_cifar("cifar10", tmp_path, download=False)
    assert train.images.shape == (5 * PER_BATCH, 3, 32, 32) and test.images.shape == (PER_BATCH, 3, 32, 32)
    assert train.images.dtype == test.images.dtype == torch.uint8
    assert train.images.is_contiguous()
    assert train.class_names == tuple(CIFAR10_NAMES) and train.num_classes == 10
    assert train.name == "cifar10-train" and test.name == "cifar10-test"
    assert train.mean == (0.4914, 0.4822, 0.4465) and train.std == (0.2023, 0.1994, 0.2010)
    want_labels = sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert train.labels.tolist() == want_labels
    assert test.labels.tolist() == batches["test_batch"]["labels"]
    # image 3 of data_batch_2, pixel (row 5, col 7): R at 5*32+7, G 1024 later, B 2048 later
    row = batches["data_batch_2"]["data"][3]
    img = train.images[PER_BATCH + 3]
    for c in range(3):
        assert int(img[c, 5, 7]) == int(row[c * 1024 + 5 * 32 + 7])
    assert np.array_equal(test.images.numpy().reshape(PER_BATCH, -1), batches["test_batch"]["data"])


def test_root_may_be_the_layout_folder(tmp_path):
    write_fake_cifar10(tmp_path)
    train, _ = load_cifar("cifar10", tmp_path / "cifar-10-batches-py", download=False)
    assert len(train) == 5 * PER_BATCH


def test_missing_folder_without_download_names_the_folder(tmp_path):
    with pytest.raises(LongtailError) as e:
        load_cifar("cifar10", tmp_path / "nowhere", download=False)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in str(e.value)
    assert "--data-root" in (e.value.fix or "")


def test_truncated_pickle_names_the_file(tmp_path):
    write_fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(LongtailError) as e:
        load_cifar("cifar10", tmp_path, download=False)
    assert "data_batch_3" in str(e.value) and "re-download" in str(e.value)


def test_missing_file_and_wrong_shape_name_the_file(tmp_path):
    write_fake_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "test_batch").unlink()
    with pytest.raises(LongtailError, match="test_batch"):
        load_cifar("cifar10", tmp_path, download=False)
    _dump(folder / "test_batch", {"labels": [0, 1], "data": np.zeros((2, 1024), np.uint8)})
    with pytest.raises(LongtailError, match=r"test_batch.*\(N, 3072\)"):
        load_cifar("cifar10", tmp_path, download=False)


def test_cifar10_downloads_verifies_and_unpacks(tmp_path, http_dir):
    served, base = http_dir
    batches = write_fake_cifar10(tmp_path / "src")
    md5 = _targz(tmp_path / "src", "cifar-10-batches-py", served / "cifar-10-python.tar.gz")
    root = tmp_path / "data"
    train, test = load_cifar("cifar10", root, url=f"{base}/cifar-10-python.tar.gz", md5=md5)
    assert len(train) == 5 * PER_BATCH and len(test) == PER_BATCH
    assert test.labels.tolist() == batches["test_batch"]["labels"]
    # the archive and the temporaries are gone; only the unpacked folder is left
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]
    # a second call finds the folder and does not download again (the server is not needed)
    train2, _ = load_cifar("cifar10", root, url=_closed_port_url(), md5=md5)
    assert train2.labels.tolist() == train.labels.tolist()


def test_wrong_md5_raises_and_leaves_nothing(tmp_path, http_dir):
    served, base = http_dir
    write_fake_cifar10(tmp_path / "src")
    _targz(tmp_path / "src", "cifar-10-batches-py", served / "cifar-10-python.tar.gz")
    root = tmp_path / "data"
    with pytest.raises(LongtailError) as e:
        load_cifar("cifar10", root, url=f"{base}/cifar-10-python.tar.gz", md5="0" * 32)
    assert "checksum" in str(e.value).lower()
    assert not root.exists()  # the folder the download made is removed again


def test_unreachable_server_raises_naming_the_url(tmp_path):
    url = _closed_port_url()
    with pytest.raises(LongtailError) as e:
        load_cifar("cifar10", tmp_path, url=url, md5="0" * 32)
    assert url in str(e.value) and "by hand" in str(e.value)
    assert [p for p in tmp_path.iterdir()] == []


def test_http_404_raises(tmp_path, http_dir):
    _, base = http_dir
    with pytest.raises(LongtailError, match="could not download"):
        download_and_extract(f"{base}/absent.tar.gz", tmp_path / "d", "0" * 32)


def test_archive_with_parent_path_is_refused(tmp_path, http_dir):
    served, base = http_dir
    payload = b"escape"
    with tarfile.open(served / "evil.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../evil.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    md5 = hashlib.md5((served / "evil.tar.gz").read_bytes()).hexdigest()
    root = tmp_path / "data"
    with pytest.raises(LongtailError, match="unsafe"):
        download_and_extract(f"{base}/evil.tar.gz", root, md5)
    assert not (tmp_path / "evil.txt").exists() and not root.exists()


# ----------------------------------------------------------------------------- CIFAR-100
def test_fake_cifar100_loads_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    names = [f"class_{i:03d}" for i in range(100)]
    train = _batch(rng, 30, 100, "fine_labels", "training batch 1 of 1")
    train["coarse_labels"] = [v // 5 for v in train["fine_labels"]]
    _dump(folder / "train", train)
    _dump(folder / "test", _batch(rng, 10, 100, "fine_labels", "testing batch 1 of 1"))
    _dump(folder / "meta", {"fine_label_names": names, "coarse_label_names": [f"s{i}" for i in range(20)]})
    tr, te = load_cifar("cifar100", tmp_path, download=False)
    assert tr.num_classes == 100 and tr.class_names == tuple(names)
    assert tr.labels.tolist() == train["fine_labels"] and len(te) == 10
    assert tr.images.shape == (30, 3, 32, 32) and tr.name == "cifar100-train"
    assert tr.mean == DATASET_INFO["cifar100"].mean
    assert N_MAX == {"cifar10": 5000, "cifar100": 500}


# ----------------------------------------------------------------------------- SVHN
def _write_svhn(path: Path, y: np.ndarray, seed: int = 0) -> np.ndarray:
    from scipy.io import savemat

    x = np.random.default_rng(seed).integers(0, 256, (32, 32, 3, len(y)), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"X": x, "y": y.reshape(-1, 1).astype(np.uint8)})
    return x


def test_svhn_mat_labels_and_layout(tmp_path):
    y = np.array([1, 10, 5, 10, 9, 2])
    x = _write_svhn(tmp_path / "svhn" / "train_32x32.mat", y)
    _write_svhn(tmp_path / "svhn" / "test_32x32.mat", np.array([3, 10]), seed=1)
    train, test = load_svhn_sets(tmp_path, download=False)
    assert train.labels.tolist() == [0, 9, 4, 9, 8, 1] and test.labels.tolist() == [2, 9]
    assert SVHN_NAMES == ("1", "2", "3", "4", "5", "6", "7", "8", "9", "0") and train.class_names == SVHN_NAMES
    assert [train.class_names[c] for c in train.labels.tolist()] == ["1", "0", "5", "0", "9", "2"]
    assert train.images.shape == (6, 3, 32, 32) and train.images.is_contiguous()
    # X[h, w, c, n] -> images[n, c, h, w]
    assert int(train.images[2, 1, 4, 7]) == int(x[4, 7, 1, 2])
    assert train.name == "svhn-train" and N_MAX_SVHN == 1000
    # the files may also sit directly in root
    flat = tmp_path / "flat"
    _write_svhn(flat / "test_32x32.mat", np.array([7]))
    assert load_svhn(flat, split="test", download=False).labels.tolist() == [6]


def test_svhn_missing_and_corrupt(tmp_path):
    with pytest.raises(LongtailError, match="train_32x32.mat"):
        load_svhn(tmp_path, download=False)
    bad = tmp_path / "svhn" / "train_32x32.mat"
    bad.parent.mkdir()
    bad.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(LongtailError, match="train_32x32.mat"):
        load_svhn(tmp_path, download=False)


def test_svhn_downloads_a_plain_file(tmp_path, http_dir):
    served, base = http_dir
    _write_svhn(served / "test_32x32.mat", np.array([10, 1, 4]))
    md5 = hashlib.md5((served / "test_32x32.mat").read_bytes()).hexdigest()
    root = tmp_path / "data"
    test = load_svhn(root, split="test", url=f"{base}/test_32x32.mat", md5=md5)
    assert test.labels.tolist() == [9, 0, 3] and test.name == "svhn-test"
    assert sorted(p.name for p in (root / "svhn").iterdir()) == ["test_32x32.mat"]


# ----------------------------------------------------------------------------- real CIFAR-10
@pytest.mark.realdata
def test_real_cifar10():
    if not (SHARED_DATA / "cifar-10-batches-py" / "data_batch_1").is_file():
        pytest.skip(f"real CIFAR-10 not found under {SHARED_DATA}")
    start = time.perf_counter()
    train, test = load_cifar("cifar10", SHARED_DATA, download=False)
    seconds = time.perf_counter() - start
    assert len(train) == 50_000 and len(test) == 10_000
    assert train.class_counts().counts == (5000,) * 10
    assert train.class_names == tuple(CIFAR10_NAMES)
    labels = train.labels.numpy().astype(np.uint8).tobytes()
    assert hashlib.sha256(labels).hexdigest() == "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253"
    hwc = train.images.permute(0, 2, 3, 1).contiguous().numpy().tobytes()
    assert hashlib.sha256(hwc).hexdigest() == "47af8b02cfcfb6cdf3dbbd1969ad7f1b70f4413f6f80f437b020ee4e5bc8304a"
    assert seconds < 10, f"loading CIFAR-10 took {seconds:.1f} s"
