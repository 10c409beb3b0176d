"""LIBSVM (sparse and dense, compressed, streamed) and CSV converters on files the tests write."""
import bz2
import gzip
import lzma

import numpy as np
import pytest

from krum_mpi.data import convert, open_dataset, store
from krum_mpi.data.csvfile import read_csv

SPARSE = """\
+1 1:0.5 3:-2
-1 2:1.25
# a comment line
+1 1:1 2:2 3:3  # trailing comment

-1 3:4e-1
"""
DENSE = "".join(f"{c} 1:{i} 2:{i * 0.5} 3:{-i}\n" for i, c in enumerate([1, 2, 3, 1, 2, 3, 7]))


def test_libsvm_sparse_to_dense(tmp_path):
    src = tmp_path / "a.svm"
    src.write_text(SPARSE)
    out = convert.libsvm_to_h5(src, tmp_path / "a.h5")
    ds = open_dataset({"name": "hdf5", "path": str(out), "standardize": False, "test_fraction": 0.5}, seed=0)
    X, y = ds.read_train(np.arange(ds.n_train))
    with store.open_file(out) as f:
        X_all, y_all = f["train"]["X"][...], f["train"]["y"][...]
        assert "-1->0, 1->1" in f.attrs["description"]
    np.testing.assert_array_equal(X_all, np.float32([[0.5, 0, -2], [0, 1.25, 0], [1, 2, 3], [0, 0, 0.4]]))
    np.testing.assert_array_equal(y_all, [1, 0, 1, 0])
    assert ds.n_classes == 2 and ds.n_train + ds.n_test == 4


@pytest.mark.parametrize("opener,suffix", [(gzip.open, ".gz"), (bz2.open, ".bz2"), (lzma.open, ".xz"),
                                           (open, "")])
def test_libsvm_dense_compressed_and_streamed_in_chunks(tmp_path, monkeypatch, opener, suffix):
    monkeypatch.setattr(convert, "CHUNK_ROWS", 3)     # force several chunks
    src = tmp_path / f"dense{suffix}"
    with opener(src, "wt") as fh:
        fh.write(DENSE)
    out = convert.libsvm_to_h5(src, tmp_path / "dense.h5", name="dense")
    with store.open_file(out) as f:
        X, y = f["train"]["X"][...], f["train"]["y"][...]
        assert f.attrs["n_classes"] == 4 and f.attrs["name"] == "dense"
    i = np.arange(7)
    np.testing.assert_array_equal(X, np.stack([i, i * 0.5, -i], axis=1))
    np.testing.assert_array_equal(y, [0, 1, 2, 0, 1, 2, 3])          # 1, 2, 3, 7 -> 0..3


def test_libsvm_test_file_and_hash_split(tmp_path):
    train, test = tmp_path / "t.svm", tmp_path / "t.svm.t"
    train.write_text("".join(f"{i % 2} 1:{i}\n" for i in range(1000)))
    test.write_text("1 2:5\n0 1:1\n")                 # has a feature the train file lacks
    out = convert.libsvm_to_h5(train, tmp_path / "t.h5", test_file=test)
    summary = store.info(out)
    assert summary["train"]["rows"] == 1000 and summary["test"]["rows"] == 2 and summary["n_features"] == 2
    a = convert.libsvm_to_h5(train, tmp_path / "a.h5", test_fraction=0.2, seed=1)
    b = convert.libsvm_to_h5(train, tmp_path / "b.h5", test_fraction=0.2, seed=1)
    with store.open_file(a) as fa, store.open_file(b) as fb:
        np.testing.assert_array_equal(fa["test"]["X"][...], fb["test"]["X"][...])
        rows = np.concatenate([fa["train"]["X"][:, 0], fa["test"]["X"][:, 0]])
        assert sorted(rows.tolist()) == list(range(1000))           # a partition of the rows
        assert 150 < fa["test"]["X"].shape[0] < 250


def test_csv_with_header_and_label_column(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text("label;a;b\n" + "".join(f"{i % 3};{i};{2 * i}\n" for i in range(50)))
    out = convert.csv_to_h5(src, tmp_path / "d.h5", label_column=0, delimiter=";", skip_header=True)
    ds = open_dataset({"name": "hdf5", "path": str(out), "standardize": False}, seed=0)
    X, y = ds.read_train(np.arange(ds.n_train))
    assert ds.n_classes == 3
    np.testing.assert_array_equal(X[:, 1], 2 * X[:, 0])
    np.testing.assert_array_equal(y, X[:, 0].astype(int) % 3)
    assert store.info(out)["feature_names"] == ["a", "b"]


def test_gzip_compressed_output_reads_the_same(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text("".join(f"{i},{i % 2}\n" for i in range(100)))
    plain = convert.csv_to_h5(src, tmp_path / "plain.h5")
    packed = convert.csv_to_h5(src, tmp_path / "packed.h5", compression="gzip")
    assert store.info(packed)["train"]["compression"] == "gzip"
    a = open_dataset({"name": "hdf5", "path": str(plain)}, seed=0)
    b = open_dataset({"name": "hdf5", "path": str(packed)}, seed=0)
    np.testing.assert_array_equal(a.shard(1, 3).batch(2, 5)[0], b.shard(1, 3).batch(2, 5)[0])


def test_read_csv_in_memory(tmp_path):
    src = tmp_path / "s.csv"
    src.write_text("1,2,0\n3,4,1\n")
    X, y = read_csv(src, n_classes=2)
    assert X.tolist() == [[1, 2], [3, 4]] and y.tolist() == [0, 1]
