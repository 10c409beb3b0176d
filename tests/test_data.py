"""Loaders on the real files and on generated ones; shards; determinism; synthetic data."""
import gzip
import struct
import tracemalloc

import numpy as np
import pytest

from krum_mpi.data import DataError, data_dir, open_dataset
from krum_mpi.data import store
from krum_mpi.data.convert import mnist_to_h5, spambase_to_h5, synthetic_to_h5
from krum_mpi.data.mnist import read_idx


def write_idx(path, array, magic):
    """A (gzip-compressed if .gz) IDX file of uint8 data."""
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    data = header + np.asarray(array, dtype=np.uint8).tobytes()
    (gzip.open if str(path).endswith(".gz") else open)(path, "wb").write(data)
    return path


def write_mnist_folder(folder, n_train=60, n_test=40, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        if n == 0:
            continue
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 2051)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, 2049)
    return folder


# -- where data lives ---------------------------------------------------------------------------
def test_data_dir_env_then_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KRUM_MPI_DATA", str(tmp_path / "d"))
    assert data_dir() == tmp_path / "d"
    monkeypatch.delenv("KRUM_MPI_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_dir() == tmp_path / "cache" / "krum-mpi" / "data"


def test_missing_spambase_names_the_path_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("KRUM_MPI_DATA", str(tmp_path))
    with pytest.raises(DataError) as err:
        open_dataset({"name": "spambase"})
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg and "krum-mpi data download spambase" in msg


# -- spambase -------------------------------------------------------------------------------------
def test_spambase_real_file(spambase_file):
    ds = open_dataset({"name": "spambase", "path": str(spambase_file)}, seed=0)
    assert (ds.n_train, ds.n_test, ds.n_features, ds.n_classes) == (3681, 920, 57, 2)
    X_test, y_test = ds.test_set()
    assert np.bincount(np.concatenate([ds.train_labels(), y_test])).tolist() == [2788, 1813]
    # standardised with TRAIN statistics: train columns have mean 0 and std 1, test ones only roughly
    np.testing.assert_allclose(ds.X_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.X_train.std(axis=0), 1, rtol=1e-4)
    assert np.abs(X_test.mean(axis=0)).max() > 1e-3
    assert ds.provenance["sha256"] == "ebec58cfca94ea61c77df632314acae15bad410f4769d38b1a66cb41050e3431"


def test_spambase_split_is_seeded(spambase_file):
    cfg = {"name": "spambase", "path": str(spambase_file), "standardize": False}
    a, b, c = (open_dataset(cfg, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.X_test, b.X_test)
    assert not np.array_equal(a.y_test, c.y_test)
    raw = np.loadtxt(spambase_file, delimiter=",")
    # the unscaled rows are the file's rows: train and test together hold each row once
    rows = np.concatenate([a.X_train, a.X_test])
    assert sorted(map(tuple, rows.round(3))) == sorted(map(tuple, raw[:, :-1].astype(np.float32).round(3)))


def test_spambase_max_train(spambase_file):
    ds = open_dataset({"name": "spambase", "path": str(spambase_file), "max_train": 500}, seed=0)
    assert ds.n_train == 500 and ds.n_test == 920


def test_spambase_folder_path_and_crlf(tmp_path, spambase_file):
    (tmp_path / "spambase.data").write_bytes(spambase_file.read_bytes().replace(b"\n", b"\r\n"))
    crlf = open_dataset({"name": "spambase", "path": str(tmp_path)}, seed=0)
    lf = open_dataset({"name": "spambase", "path": str(spambase_file)}, seed=0)
    np.testing.assert_array_equal(crlf.X_train, lf.X_train)


# -- MNIST ---------------------------------------------------------------------------------------
def test_mnist_idx_real_files(mnist_dir):
    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz", 2051)
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz", 2049)
    assert images.shape == (10000, 28, 28) and images.mean() == pytest.approx(33.79, abs=0.01)
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_t10k_only_splits_the_test_images_and_says_so(mnist_dir):
    ds = open_dataset({"name": "mnist", "path": str(mnist_dir)}, seed=0)
    assert (ds.n_train, ds.n_test, ds.n_features, ds.n_classes) == (8000, 2000, 784, 10)
    assert "TEST images" in ds.provenance["split"]
    X, y = ds.shard(0, 10).batch(0, 16)
    assert X.shape == (16, 784) and X.dtype == np.float32 and X.flags.c_contiguous


def test_mnist_full_folder_uses_the_official_split(tmp_path):
    folder = write_mnist_folder(tmp_path / "mnist", n_train=60, n_test=40)
    ds = open_dataset({"name": "mnist", "path": str(folder), "standardize": False}, seed=0)
    assert (ds.n_train, ds.n_test) == (60, 40) and "official" in ds.provenance["split"]
    assert ds.X_train.max() <= 1.0 and ds.X_train.min() >= 0.0


def test_mnist_found_through_data_dir(tmp_path, monkeypatch):
    write_mnist_folder(tmp_path / "mnist-t10k", n_train=0, n_test=50)
    monkeypatch.setenv("KRUM_MPI_DATA", str(tmp_path))
    assert open_dataset({"name": "mnist"}, seed=0).n_train == 40


# -- HDF5 format ------------------------------------------------------------------------------------
def test_spambase_converts_to_hdf5_with_the_same_rows(tmp_path, spambase_file):
    out = spambase_to_h5(spambase_file, tmp_path / "spambase.h5", test_fraction=0.2, seed=3)
    cfg = {"standardize": False}
    h5 = open_dataset({**cfg, "name": "hdf5", "path": str(out)}, seed=99)   # the file fixes the split
    csv = open_dataset({**cfg, "name": "spambase", "path": str(spambase_file)}, seed=3)
    np.testing.assert_array_equal(h5.read_train(np.arange(h5.n_train))[0], csv.X_train)
    np.testing.assert_array_equal(h5.test_set()[1], csv.y_test)
    summary = store.info(out)
    assert summary["train"]["rows"] == 3681 and summary["test"]["label_counts"] == np.bincount(csv.y_test).tolist()
    assert summary["source_sha256"]["spambase.data"].startswith("ebec58cf")
    if (spambase_file.parent / "spambase.names").is_file():
        assert summary["feature_names"][0] == "word_freq_make" and len(summary["feature_names"]) == 57
    # standardised through the stored training statistics, as the CSV loader does
    scaled_h5 = open_dataset({"name": "hdf5", "path": str(out)}, seed=0)
    scaled_csv = open_dataset({"name": "spambase", "path": str(spambase_file)}, seed=3)
    np.testing.assert_allclose(scaled_h5.test_set()[0], scaled_csv.X_test, atol=1e-4)


def test_mnist_test_set_converts_to_hdf5(tmp_path, mnist_dir):
    out = mnist_to_h5(mnist_dir, tmp_path / "mnist.h5", test_fraction=0.2, seed=0)
    summary = store.info(out)
    counts = np.add(summary["train"]["label_counts"], summary["test"]["label_counts"])
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert "TEST images" in summary["description"] and summary["scaling"] == "global"
    h5 = open_dataset({"name": "hdf5", "path": str(out)}, seed=0)
    mem = open_dataset({"name": "mnist", "path": str(mnist_dir)}, seed=0)
    np.testing.assert_allclose(h5.test_set()[0], mem.test_set()[0], atol=1e-4)
    X, y = h5.shard(3, 10).batch(7, 32)
    assert X.shape == (32, 784) and y.dtype == np.int64


def test_hdf5_batches_read_rows_not_the_file(tmp_path):
    rng = np.random.default_rng(0)
    n, p = 60_000, 128                       # a 30 MB file
    path = tmp_path / "big.h5"
    with store.DatasetWriter(path, n_features=p, name="big", n_classes=2) as w:
        for a in range(0, n, 10_000):
            w.append("train", rng.standard_normal((10_000, p)), rng.integers(0, 2, 10_000))
        w.append("test", rng.standard_normal((100, p)), rng.integers(0, 2, 100))
    with store.open_file(path) as f:
        assert f["train"]["X"].chunks[0] < n // 100      # chunked by rows
    tracemalloc.start()
    ds = open_dataset({"name": "hdf5", "path": str(path)}, seed=0)
    shard = ds.shard(5, 16)        # IID shard: an index array of n/16 rows (30 KB), not the data
    for step in range(20):
        shard.batch(step, 64)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 3_000_000, f"peak {peak} bytes: a worker must not load the file"


def test_hdf5_without_test_group_splits_its_rows(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "notest.h5"
    with store.DatasetWriter(path, n_features=3, name="notest") as w:
        w.append("train", rng.standard_normal((100, 3)), np.arange(100) % 4)
    ds = open_dataset({"name": "hdf5", "path": str(path), "test_fraction": 0.25}, seed=0)
    assert (ds.n_train, ds.n_test, ds.n_classes) == (75, 25, 4)
    assert "split from /train" in ds.provenance["test_split"]


def test_hdf5_needs_a_path():
    with pytest.raises(DataError, match="data.path"):
        open_dataset({"name": "hdf5"})


# -- synthetic -----------------------------------------------------------------------------------
SYN = {"name": "synthetic", "n_train": 10_000, "n_test": 500, "n_features": 8, "n_classes": 3}


def test_synthetic_sample_is_a_pure_function_of_seed_and_index():
    a = open_dataset(SYN, seed=5)
    b = open_dataset(SYN, seed=5)
    Xa, ya = a.read_train(np.array([7, 123, 9999]))
    Xb, yb = b.read_train(np.array([9999, 7]))
    np.testing.assert_array_equal(Xa[[2, 0]], Xb)
    np.testing.assert_array_equal(ya[[2, 0]], yb)
    other = open_dataset(SYN, seed=6)
    assert not np.array_equal(other.read_train(np.array([7]))[0], Xa[:1])
    # the test stream differs from the training stream
    assert not np.array_equal(a.test_set()[0][:1], a.read_train(np.array([0]))[0])


def test_synthetic_worker_sample_i_is_global_sample_start_plus_i():
    ds = open_dataset(SYN, seed=1)
    shard = ds.shard(3, 7)
    assert shard._indices is None                       # never materialised
    X, y = shard.batch(4, 10)
    rng = np.random.default_rng([1, 3, 3, 4])           # TAG_BATCH = 3, worker 3, step 4
    positions = rng.integers(0, len(shard), 10)
    X2, y2 = ds.read_train(shard.start + positions)
    np.testing.assert_array_equal(X, X2)


def test_synthetic_teacher_and_mixture_statistics():
    teacher = open_dataset({**SYN, "n_test": 20_000}, seed=0)
    X, y = teacher.test_set()
    assert abs(X.mean()) < 0.01 and X.std() == pytest.approx(1, abs=0.01)
    np.testing.assert_array_equal(y, np.argmax(X @ teacher.weights, axis=1))   # noise 0: the teacher's labels
    noisy = open_dataset({**SYN, "n_test": 20_000, "noise": 0.3}, seed=0)
    Xn, yn = noisy.test_set()
    changed = (yn != np.argmax(Xn @ noisy.weights, axis=1)).mean()
    assert changed == pytest.approx(0.3 * 2 / 3, abs=0.02)         # replaced by a uniform class
    mix = open_dataset({**SYN, "generator": "mixture", "n_test": 30_000}, seed=0)
    Xm, ym = mix.test_set()
    assert np.bincount(ym) / len(ym) == pytest.approx([1 / 3] * 3, abs=0.02)
    for c in range(3):
        np.testing.assert_allclose(Xm[ym == c].mean(axis=0), mix.means[c], atol=0.05)


def test_synthetic_at_scale_needs_no_memory():
    tracemalloc.start()
    ds = open_dataset({"name": "synthetic", "n_train": 10**9, "n_features": 784, "n_classes": 10}, seed=0)
    shard = ds.shard(15, 16)
    X, y = shard.batch(0, 64)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(shard) == 10**9 // 16 and X.shape == (64, 784)
    assert peak < 20_000_000


def test_synthetic_writes_to_hdf5_and_reads_back_the_same(tmp_path):
    ds = open_dataset(SYN, seed=2)
    out = synthetic_to_h5(ds, tmp_path / "syn.h5")
    h5 = open_dataset({"name": "hdf5", "path": str(out)}, seed=2)
    assert (h5.n_train, h5.n_test, h5.n_classes) == (ds.n_train, ds.n_test, ds.n_classes)
    idx = np.array([0, 17, 9999])
    np.testing.assert_array_equal(h5.read_train(idx)[0], ds.read_train(idx)[0])
    np.testing.assert_array_equal(h5.test_set()[1], ds.test_set()[1])


# -- shards and batches ----------------------------------------------------------------------------
def _datasets(tmp_path, spambase_file=None):
    out = {"synthetic": open_dataset({**SYN, "generator": "mixture"}, seed=0)}
    rng = np.random.default_rng(0)
    path = tmp_path / "small.h5"
    store.write_arrays(path, rng.standard_normal((997, 4)), rng.integers(0, 5, 997),
                       rng.standard_normal((10, 4)), rng.integers(0, 5, 10), name="small", n_classes=5)
    out["hdf5"] = path
    return out


@pytest.mark.parametrize("split", ["iid", "dirichlet", "gamma"])
@pytest.mark.parametrize("source", ["synthetic", "hdf5", "spambase"])
def test_shards_partition_the_training_set_exactly(split, source, tmp_path, request):
    if source == "spambase":
        cfg = {"name": "spambase", "path": str(request.getfixturevalue("spambase_file"))}
    elif source == "hdf5":
        cfg = {"name": "hdf5", "path": str(_datasets(tmp_path)["hdf5"])}
    else:
        cfg = {**SYN, "generator": "mixture"}
    ds = open_dataset({**cfg, "split": split, "alpha": 0.5, "gamma": 0.3}, seed=0)
    n_workers = 13
    shards = [ds.shard(w, n_workers) for w in range(n_workers)]
    everything = np.concatenate([s.indices for s in shards])
    np.testing.assert_array_equal(np.sort(everything), np.arange(ds.n_train))
    assert sum(len(s) for s in shards) == ds.n_train
    if split == "iid":
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # the labels a shard reports are the labels of its rows
    s = shards[4]
    np.testing.assert_array_equal(s.labels(), ds.read_train(s.indices)[1])


@pytest.mark.parametrize("split", ["iid", "dirichlet", "gamma"])
def test_same_seed_same_shards_and_batches(split, tmp_path):
    path = _datasets(tmp_path)["hdf5"]
    cfg = {"name": "hdf5", "path": str(path), "split": split}
    a, b, c = open_dataset(cfg, seed=4), open_dataset(cfg, seed=4), open_dataset(cfg, seed=5)
    for w in (0, 6):
        sa, sb, sc = a.shard(w, 7), b.shard(w, 7), c.shard(w, 7)
        np.testing.assert_array_equal(sa.indices, sb.indices)
        for step in range(5):
            Xa, ya = sa.batch(step, 8)
            Xb, yb = sb.batch(step, 8)
            np.testing.assert_array_equal(Xa, Xb)
            np.testing.assert_array_equal(ya, yb)
        assert not np.array_equal(sa.batch(0, 8)[0], sc.batch(0, 8)[0])
        assert not np.array_equal(sa.batch(0, 8)[0], sa.batch(1, 8)[0])


def test_batch_types_and_shapes(tmp_path):
    ds = open_dataset(SYN, seed=0)
    X, y = ds.shard(2, 4).batch(0, 3)
    assert X.dtype == np.float32 and X.flags.c_contiguous and X.shape == (3, 8)
    assert y.dtype == np.int64 and y.shape == (3,)
    X, y = ds.test_set()
    assert X.dtype == np.float32 and y.dtype == np.int64 and len(y) == 500


def test_more_workers_than_samples_is_a_data_error():
    ds = open_dataset({**SYN, "n_train": 10}, seed=0)
    with pytest.raises(DataError, match="workers"):
        ds.shard(0, 11)
    with pytest.raises(ValueError):
        ds.shard(5, 5)


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_synthetic_label_only_path_matches_the_samples(noise):
    for generator in ("teacher", "mixture"):
        ds = open_dataset({**SYN, "generator": generator, "noise": noise, "n_train": 3000}, seed=3)
        np.testing.assert_array_equal(ds.train_labels(), ds.read_train(np.arange(3000))[1])
        np.testing.assert_array_equal(ds.read_train_labels(100, 2000), ds.train_labels()[100:2000])
