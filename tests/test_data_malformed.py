"""Malformed files give a one-line DataError that names the file and the problem."""
import gzip
import struct

import h5py
import numpy as np
import pytest

from krum_mpi.data import DataError, convert, open_dataset, store
from krum_mpi.data.mnist import read_idx, read_pair


def assert_one_line(err, path, *words):
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    for word in words:
        assert word.lower() in msg.lower(), msg


def spambase_like(tmp_path, rows):
    path = tmp_path / "spambase.data"
    path.write_text("\n".join(rows) + "\n")
    return path


def good_row(label=1):
    return ",".join(["0.5"] * 57 + [str(label)])


# -- CSV / spambase ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_row,words", [
    (",".join(["0.5"] * 56 + ["1"]), ["ragged", "line 3"]),
    (",".join(["0.5"] * 30 + ["nan"] + ["0.5"] * 26 + ["1"]), ["nan", "line 3"]),
    (good_row(label=2), ["out of range", "line 3"]),
    (good_row(label=-1), ["not a class index", "line 3"]),
    (",".join(["0.5"] * 57 + ["0.5"]), ["not a class index"]),
    (",".join(["abc"] + ["0.5"] * 56 + ["1"]), ["not a number", "abc"]),
])
def test_spambase_malformed_rows(tmp_path, bad_row, words):
    path = spambase_like(tmp_path, [good_row(), good_row(0), bad_row, good_row()])
    with pytest.raises(DataError) as err:
        open_dataset({"name": "spambase", "path": str(path)})
    assert_one_line(err, path, *words)


def test_spambase_wrong_column_count(tmp_path):
    path = spambase_like(tmp_path, ["1,2,3,0"] * 10)
    with pytest.raises(DataError) as err:
        open_dataset({"name": "spambase", "path": str(path)})
    assert_one_line(err, path, "columns")


def test_empty_csv(tmp_path):
    path = spambase_like(tmp_path, [""])
    with pytest.raises(DataError) as err:
        open_dataset({"name": "spambase", "path": str(path)})
    assert_one_line(err, path, "empty")


def test_truncated_gzip_csv(tmp_path):
    path = tmp_path / "d.csv.gz"
    data = gzip.compress(("\n".join(good_row() for _ in range(500)) + "\n").encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        convert.csv_to_h5(path, tmp_path / "out.h5")
    assert_one_line(err, path, "truncated")
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "out.h5.tmp").exists()


# -- IDX ---------------------------------------------------------------------------------------------
def idx_bytes(array, magic):
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def test_idx_wrong_magic(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(5), 2049)))
    with pytest.raises(DataError) as err:
        read_idx(path, 2051)           # a label file where images are expected
    assert_one_line(err, path, "wrong magic number 2049", "2051")


def test_idx_not_decompressed_magic(tmp_path):
    path = tmp_path / "images"        # gzip bytes without the .gz name: magic is garbage
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 28, 28)), 2051)))
    with pytest.raises(DataError) as err:
        read_idx(path, 2051)
    assert_one_line(err, path, "wrong magic number")


@pytest.mark.parametrize("cut", [2, 10, 100])
def test_idx_truncated(tmp_path, cut):
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((3, 28, 28)), 2051)[:cut])
    with pytest.raises(DataError) as err:
        read_idx(path, 2051)
    assert_one_line(err, path, "truncated")


def test_idx_truncated_gzip_stream(tmp_path):
    path = tmp_path / "images.gz"
    data = gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 255, (50, 28, 28)), 2051))
    path.write_bytes(data[:-100])
    with pytest.raises(DataError) as err:
        read_idx(path, 2051)
    assert_one_line(err, path, "truncated")


def test_idx_labels_out_of_range_and_count_mismatch(tmp_path):
    images, labels = tmp_path / "i", tmp_path / "l"
    images.write_bytes(idx_bytes(np.zeros((4, 28, 28)), 2051))
    labels.write_bytes(idx_bytes(np.array([1, 2, 11, 3]), 2049))
    with pytest.raises(DataError) as err:
        read_pair(images, labels)
    assert_one_line(err, labels, "label 11", "out of range")
    labels.write_bytes(idx_bytes(np.array([1, 2, 3]), 2049))
    with pytest.raises(DataError) as err:
        read_pair(images, labels)
    assert_one_line(err, labels, "3 labels for 4 images")


# -- LIBSVM ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,words", [
    ("1 1:0.5\n1 2-3\n", ["line 2", "index:value"]),
    ("1 1:0.5\n0 0:1\n", ["line 2", "start at 1"]),
    ("1 1:0.5\n0 1:nan\n", ["line 2", "nan"]),
    ("1 1:0.5\nx 1:1\n", ["line 2", "not a number"]),
    ("\n# only a comment\n", ["empty"]),
])
def test_libsvm_malformed(tmp_path, text, words):
    path = tmp_path / "bad.svm"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        convert.libsvm_to_h5(path, tmp_path / "bad.h5")
    assert_one_line(err, path, *words)


# -- HDF5 --------------------------------------------------------------------------------------------
def small_h5(tmp_path, X=None, y=None):
    X = np.ones((20, 3)) if X is None else X
    y = np.arange(20) % 2 if y is None else y
    return store.write_arrays(tmp_path / "d.h5", X, y, X[:4], y[:4], name="d", n_classes=2)


def test_hdf5_not_an_hdf5_file(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_bytes(b"this is not HDF5" * 10)
    with pytest.raises(DataError) as err:
        open_dataset({"name": "hdf5", "path": str(path)})
    assert_one_line(err, path, "not a readable HDF5 file")


def test_hdf5_truncated(tmp_path):
    path = small_h5(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError) as err:
        open_dataset({"name": "hdf5", "path": str(path)})
    assert_one_line(err, path, "truncated")


def test_hdf5_wrong_format_marker(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["X"] = np.zeros((3, 3))
    with pytest.raises(DataError) as err:
        open_dataset({"name": "hdf5", "path": str(path)})
    assert_one_line(err, path, "not a krum-mpi dataset file")


def test_hdf5_inconsistent_shapes(tmp_path):
    path = small_h5(tmp_path)
    with h5py.File(path, "a") as f:
        del f["train/y"]
        f["train/y"] = np.zeros(7, dtype=np.int64)
    with pytest.raises(DataError) as err:
        open_dataset({"name": "hdf5", "path": str(path)})
    assert_one_line(err, path, "/train/y", "20 rows")


def test_hdf5_nan_feature_named_on_read(tmp_path):
    X = np.ones((20, 3))
    X[13, 1] = np.nan
    path = small_h5(tmp_path, X=X)
    ds = open_dataset({"name": "hdf5", "path": str(path), "standardize": False})
    with pytest.raises(DataError) as err:
        ds.read_train(np.array([2, 13]))
    assert_one_line(err, path, "nan", "row 13")


def test_hdf5_label_out_of_range(tmp_path):
    y = np.arange(20) % 2
    y[6] = 5
    path = small_h5(tmp_path, y=y)
    with h5py.File(path, "a") as f:
        f.attrs["n_classes"] = 2
    ds = open_dataset({"name": "hdf5", "path": str(path), "split": "dirichlet"})
    with pytest.raises(DataError) as err:
        ds.shard(0, 2)                    # the label-skew split reads every label
    assert_one_line(err, path, "label 5", "row 6", "out of range")
    ds_iid = open_dataset({"name": "hdf5", "path": str(path)})
    with pytest.raises(DataError) as err:
        ds_iid.read_train(np.array([6]))
    assert_one_line(err, path, "label 5")
    with pytest.raises(DataError) as err:
        store.info(path)
    assert_one_line(err, path, "labels outside")


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="unknown data.name"):
        open_dataset({"name": "imagenet"})
