"""Dataset files checked field by field: one line naming the field, nothing cast or followed silently.

Each case starts from a good file written by store.write_arrays and breaks one field with h5py, as a
hand-made or damaged file would; opening it (or reading its rows) must raise DataError with one line
naming the file and the field. Before these checks, most of them were tracebacks (a string X, a
group as /train/X, a soft-link loop, 1e12 declared rows) or silent alterations (complex features
lost their imaginary part, float labels 0.7/1.7 became 0/1, n_features = 6.7 became 6, an unknown
scaling was accepted, NaN means or zero std trained on NaN).
"""
import h5py
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from krum_mpi.data import DataError, open_dataset, store


def good_file(tmp_path, name="d.h5"):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    y = np.arange(40) % 2
    return store.write_arrays(tmp_path / name, X, y, X[:8], y[:8], name="d", n_classes=2)


def replace(f, name, data, **kw):
    del f[name]
    f.create_dataset(name, data=data, **kw)


def set_attr(key, value):
    def mutate(f):
        f.attrs[key] = value
    return mutate


def dataset(name, data, **kw):
    return lambda f: replace(f, name, data, **kw)


def x_as_group(f):
    del f["train/X"]
    f.create_group("train/X")


def soft_link_loop(f):
    del f["train"]
    f["train"] = h5py.SoftLink("/train")


def soft_link_x(f):
    f["train/X_data"] = f["train/X"][...]
    del f["train/X"]
    f["train/X"] = h5py.SoftLink("/train/X_data")


def external_link(f):
    del f["train/X"]
    f["train/X"] = h5py.ExternalLink("elsewhere.h5", "/X")


def huge_declared_rows(f):
    for split in ("train", "test"):
        del f[f"{split}/X"], f[f"{split}/y"]
        f.create_dataset(f"{split}/X", shape=(10**12, 3), dtype=np.float32, chunks=(1024, 3))
        f.create_dataset(f"{split}/y", shape=(10**12,), dtype=np.int64, chunks=(1024,))


CASES = {
    "string X": (dataset("train/X", np.array([["a", "b", "c"]] * 40, dtype="S1")), ["/train/X", "dtype"]),
    "string y": (dataset("train/y", np.array(["0", "1"] * 20, dtype="S1")), ["/train/y", "labels must be integers"]),
    "complex X": (dataset("train/X", np.ones((40, 3)) * (1 + 2j)), ["/train/X", "complex"]),
    "float labels": (dataset("train/y", np.array([0.7, 1.7] * 20)), ["/train/y", "floating-point labels"]),
    "mean missing": (lambda f: f.__delitem__("train/mean"), ["/train/mean missing"]),
    "std missing": (lambda f: f.__delitem__("train/std"), ["/train/std missing"]),
    "mean misshaped": (dataset("train/mean", np.zeros(5)), ["/train/mean", "shape"]),
    "std misshaped": (dataset("train/std", np.ones((3, 1))), ["/train/std", "shape"]),
    "mean NaN": (dataset("train/mean", np.array([0.0, np.nan, 0.0])), ["/train/mean", "nan"]),
    "std zero": (dataset("train/std", np.array([1.0, 0.0, 1.0])), ["/train/std[1]", "> 0"]),
    "std tiny": (dataset("train/std", np.array([1.0, 1e-300, 1.0])), ["float32"]),
    "std string": (dataset("train/std", np.array(["a", "b", "c"], dtype="S1")), ["/train/std", "dtype"]),
    "X is a group": (x_as_group, ["/train/X is a group, not a dataset"]),
    "soft link loop": (soft_link_loop, ["/train is a soft link"]),
    "soft link": (soft_link_x, ["/train/X is a soft link"]),
    "external link": (external_link, ["/train/X is an external link"]),
    "1e12 declared rows": (huge_declared_rows, ["declares", "rows", "available"]),
    "n_features fractional": (set_attr("n_features", 6.7), ["'n_features' = 6.7", "not an integer"]),
    "n_features string": (set_attr("n_features", "three"), ["'n_features'", "not an integer"]),
    "n_classes array": (set_attr("n_classes", np.array([2, 2])), ["'n_classes'", "array"]),
    "format_version text": (set_attr("format_version", "one"), ["'format_version'", "not an integer"]),
    "name numeric": (set_attr("name", 5), ["'name'", "not text"]),
    "unknown scaling": (set_attr("scaling", "log"), ["'scaling'", "log", "not one of"]),
    "source_sha256 not JSON": (set_attr("source_sha256", "{oops"), ["'source_sha256'", "JSON"]),
    "input_shape wrong": (set_attr("input_shape", np.array([1, 2, 2])), ["'input_shape'", "3 features"]),
    "y rows disagree": (dataset("train/y", np.zeros(7, dtype=np.int64)), ["/train/y", "40 rows"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_dataset_field_is_one_line(tmp_path, case):
    mutate, words = CASES[case]
    path = good_file(tmp_path)
    with h5py.File(path, "a") as f:
        mutate(f)
    with pytest.raises(DataError) as err:
        ds = open_dataset({"name": "hdf5", "path": str(path)})
        ds.test_set()
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert str(path) in msg, msg
    for word in words:
        assert word.lower() in msg.lower(), msg


def test_features_beyond_float32_are_refused_not_trained_as_inf(tmp_path):
    """float64 features of 1e300 are finite in the file but inf in float32: refused on read."""
    path = good_file(tmp_path)
    with h5py.File(path, "a") as f:
        X = f["train/X"][...].astype(np.float64)
        X[5, 2] = 1e300
        replace(f, "train/X", X)
    ds = open_dataset({"name": "hdf5", "path": str(path), "standardize": False})
    with pytest.raises(DataError) as err:
        ds.read_train(np.array([3, 5]))
    assert "row 5" in str(err.value) and "float32" in str(err.value)


def test_integral_float64_features_and_int32_labels_are_still_read(tmp_path):
    """What the checks must keep: a file with float64 features and int32 labels reads as before."""
    path = good_file(tmp_path)
    with h5py.File(path, "a") as f:
        X, y = f["train/X"][...], f["train/y"][...]
        replace(f, "train/X", X.astype(np.float64))
        replace(f, "train/y", y.astype(np.int32))
    Xr, yr = open_dataset({"name": "hdf5", "path": str(path), "standardize": False}).read_train(np.arange(40))
    np.testing.assert_array_equal(Xr, X)
    np.testing.assert_array_equal(yr, y)


@settings(max_examples=25, deadline=None)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: v != int(v) if np.isfinite(v) else True),
                       st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF, blacklist_categories=("Cs",)),
                               max_size=8),
                       st.integers(min_value=-(1 << 63), max_value=0)))
def test_n_features_attribute_never_truncated(tmp_path_factory, value):
    """Any n_features that is not a positive integer is refused with one line naming the attribute."""
    path = good_file(tmp_path_factory.mktemp("nf"))
    with h5py.File(path, "a") as f:
        f.attrs["n_features"] = value
    with pytest.raises(DataError) as err:
        open_dataset({"name": "hdf5", "path": str(path)})
    assert "'n_features'" in str(err.value) and "\n" not in str(err.value)
