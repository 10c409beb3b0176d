"""Image datasets for the PyTorch zoo: Fashion-MNIST (IDX) and CIFAR-10 (binary archive) downloaded
from a local HTTP server on 127.0.0.1 serving small files made here, MD5-checked, converted to the
HDF5 store with their image shape; synthetic images; text windows for the character model."""
import functools
import gzip
import hashlib
import http.server
import io
import struct
import tarfile

import h5py
import numpy as np
import pytest

from conftest import LoopbackServer

from conftest import run_cli
from krum_mpi.data import DataError, download as dl, open_dataset
from krum_mpi.data import cifar10


def _idx(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def _cifar_archive(rng, per_batch=4, n_test=3):
    """A tar.gz with the six member files of the real archive, few records each; returns (bytes, arrays)."""
    buf, arrays = io.BytesIO(), {}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in cifar10.TRAIN_MEMBERS + cifar10.TEST_MEMBERS:
            k = n_test if name == "test_batch.bin" else per_batch
            labels = rng.integers(0, 10, k, dtype=np.uint8)
            pixels = rng.integers(0, 256, (k, 3072), dtype=np.uint8)
            arrays[name] = (pixels, labels)
            data = np.concatenate([labels[:, None], pixels], axis=1).tobytes()
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), arrays


class FileServer(LoopbackServer):
    """Serves a folder on 127.0.0.1 (an ephemeral port) for the duration of a with-block."""

    def __init__(self, folder):
        super().__init__(functools.partial(_QuietHandler, directory=str(folder)))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _local_entry(name, served: dict, url: str, md5_override=None) -> dl.RemoteDataset:
    """The registry entry of ``name`` with its URLs pointed at the local server and our files' MD5s."""
    spec = dl.DATASETS[name]
    files = tuple(dl.Remote(r.filename, (f"{url}/{r.filename}",), md5=md5_override or _md5(served[r.filename]))
                  for r in spec.files)
    return dl.RemoteDataset(spec.folder, files, spec.description, spec.convert_hint)


def test_registry_has_the_image_datasets_with_published_md5s():
    fashion, cifar = dl.DATASETS["fashion-mnist"], dl.DATASETS["cifar10"]
    assert [r.filename for r in fashion.files] == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                                   "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert all(len(r.md5) == 32 for r in fashion.files + cifar.files)
    assert cifar.files[0].filename == "cifar-10-binary.tar.gz" and cifar.files[0].size == 170_052_171


def test_fashion_mnist_download_and_convert(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (50, 28, 28)), "t10k": rng.integers(0, 256, (20, 28, 28))}
    labels = {"train": rng.integers(0, 10, 50), "t10k": rng.integers(0, 10, 20)}
    served = {}
    for part in ("train", "t10k"):
        served[f"{part}-images-idx3-ubyte.gz"] = _idx(images[part], 2051)
        served[f"{part}-labels-idx1-ubyte.gz"] = _idx(labels[part], 2049)
    www = tmp_path / "www"
    www.mkdir()
    for name, data in served.items():
        (www / name).write_bytes(data)
    with FileServer(www) as srv:
        monkeypatch.setitem(dl.DATASETS, "fashion-mnist", _local_entry("fashion-mnist", served, srv.url))
        folder = dl.download("fashion-mnist", tmp_path / "data", progress=False)
    assert folder.name == "fashion-mnist" and all((folder / n).read_bytes() == d for n, d in served.items())
    out = tmp_path / "fashion.h5"
    done = run_cli(["data", "convert", "fashion-mnist", folder, out])
    assert done.returncode == 0, done.stderr
    with h5py.File(out, "r") as h5:
        assert list(h5.attrs["input_shape"]) == [1, 28, 28]
        np.testing.assert_allclose(h5["train/X"][7], images["train"][7].ravel() / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(h5["test/y"][()], labels["t10k"])
    info = run_cli(["data", "info", out])
    assert "rows are 1 x 28 x 28" in info.stdout


def test_cifar10_download_md5_and_convert(tmp_path, monkeypatch):
    archive, arrays = _cifar_archive(np.random.default_rng(1))
    www = tmp_path / "www"
    www.mkdir()
    (www / "cifar-10-binary.tar.gz").write_bytes(archive)
    served = {"cifar-10-binary.tar.gz": archive}
    with FileServer(www) as srv:
        monkeypatch.setitem(dl.DATASETS, "cifar10", _local_entry("cifar10", served, srv.url, md5_override="0" * 32))
        with pytest.raises(DataError, match="checksum mismatch .MD5"):
            dl.download("cifar10", tmp_path / "data", progress=False)
        assert not (tmp_path / "data" / "cifar10" / "cifar-10-binary.tar.gz.part").exists()
        monkeypatch.setitem(dl.DATASETS, "cifar10", _local_entry("cifar10", served, srv.url))
        folder = dl.download("cifar10", tmp_path / "data", progress=False)
    out = tmp_path / "cifar.h5"
    done = run_cli(["data", "convert", "cifar10", folder / "cifar-10-binary.tar.gz", out])
    assert done.returncode == 0, done.stderr
    ds = open_dataset({"name": "hdf5", "path": str(out), "standardize": False})
    assert ds.input_shape == (3, 32, 32) and ds.n_train == 20 and ds.n_test == 3
    pixels, labels = arrays["data_batch_2.bin"]
    X, y = ds.read_train(np.array([4, 5]))          # rows 4, 5: the first two records of batch 2
    np.testing.assert_allclose(X, pixels[:2] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels[:2])
    shard = ds.shard(1, 4)
    Xb, yb = shard.batch(step=3, batch_size=5)
    assert Xb.shape == (5, 3072) and set(yb) <= set(range(10))


def test_cifar10_truncated_member_is_one_clear_line(tmp_path):
    with pytest.raises(DataError, match="not a whole number of 3073-byte CIFAR-10 records"):
        cifar10.parse_records(b"\x01" * 3000, "x.bin")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="not a readable tar archive"):
        cifar10.read(bad)


def test_synthetic_images_are_seeded_and_shaped():
    cfg = {"name": "synthetic", "generator": "mixture", "image_shape": [3, 8, 8], "n_classes": 4,
           "n_train": 100, "n_test": 10}
    a, b = open_dataset(cfg, seed=2), open_dataset(cfg, seed=2)
    assert a.input_shape == (3, 8, 8) and a.n_features == 192
    Xa, ya = a.read_train(np.arange(10))
    Xb, yb = b.read_train(np.arange(10))
    assert Xa.tobytes() == Xb.tobytes() and ya.tobytes() == yb.tobytes()
    assert open_dataset(cfg, seed=3).read_train(np.arange(10))[0].tobytes() != Xa.tobytes()
    # class means are smooth: neighbouring pixels of a mean are strongly correlated (28 x 28 images)
    means = open_dataset({**cfg, "image_shape": [1, 28, 28]}, seed=2).means.reshape(4, 1, 28, 28)
    corr = np.corrcoef(means[..., :-1].ravel(), means[..., 1:].ravel())[0, 1]
    assert corr > 0.8


def test_text_windows_and_next_character_labels(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 40
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    ds = open_dataset({"name": "text", "path": str(path), "context": 8, "test_fraction": 0.1})
    vocab = sorted(set(text))
    assert ds.n_classes == len(vocab) and ds.n_features == 8 and ds.n_train == len(text) - 180 - 8
    X, y = ds.read_train(np.array([3, 0]))
    decode = lambda ids: "".join(vocab[int(i)] for i in ids)           # noqa: E731
    assert decode(X[0]) == text[3:11] and vocab[y[0]] == text[11]
    assert decode(X[1]) == text[0:8] and vocab[y[1]] == text[8]
    Xt, yt = ds.test_set()
    tail = text[len(text) - 180:]
    assert len(yt) == (180 - 1) // 8 and decode(Xt[1]) == tail[8:16] and vocab[yt[1]] == tail[16]
    np.testing.assert_array_equal(ds.train_labels()[:5], [vocab.index(c) for c in text[8:13]])


def test_text_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff\xfe")
    with pytest.raises(DataError, match="not UTF-8"):
        open_dataset({"name": "text", "path": str(bad)})
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    with pytest.raises(DataError, match="no training or no test window"):
        open_dataset({"name": "text", "path": str(short), "context": 64})
