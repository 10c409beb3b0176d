"""Field-by-field checks of a dataset file (the layout of store.py), before any row is read.

Each check gives one line naming the field and what is wrong with it; nothing is cast or truncated
silently (complex features, float labels, a fractional n_features are refused, not converted). Links
are looked at, never followed: a soft link (which may loop) or an external link (another file) where
a group or dataset should be is refused. Declared sizes are compared with the memory available
before anything of their size is read or allocated.
"""
from __future__ import annotations

import json
import numbers

import h5py
import numpy as np

FORMAT, FORMAT_VERSION = "krum-mpi-dataset", 1
SCALINGS = ("feature", "global", "none")
INT64_MAX = (1 << 63) - 1
ROW_BYTES_IN_MEMORY = 24   # per declared row: a row index, a label and a permutation entry (int64 each)
FLOAT32_MAX = float(np.finfo(np.float32).max)


class FileProblem(Exception):
    """One line saying what is wrong with a field of the file (the caller adds the path)."""


def text_attr(f, key: str, required: bool = True) -> str | None:
    """A string attribute (HDF5 stores them as str or bytes)."""
    if key not in f.attrs:
        if required:
            raise FileProblem(f"attribute {key!r} missing: the file was not finished; convert it again")
        return None
    value = _read_attr(f, key)
    if isinstance(value, (bytes, np.bytes_)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise FileProblem(f"attribute {key!r} is not UTF-8 text: convert it again") from None
    if not isinstance(value, str):
        raise FileProblem(f"attribute {key!r} is {_kind(value)}, not text: convert it again")
    return value


def int_attr(f, key: str, low: int, required: bool = True) -> int | None:
    """An integral numeric attribute >= low (a float such as 6.7, a string, an array: refused)."""
    if key not in f.attrs:
        if required:
            raise FileProblem(f"attribute {key!r} missing: the file was not finished; convert it again")
        return None
    value = _read_attr(f, key)
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise FileProblem(f"attribute {key!r} is {_kind(value)}, not an integer: convert it again")
    if not np.isfinite(value) or value != int(value):
        raise FileProblem(f"attribute {key!r} = {float(value)!r} is not an integer: convert it again")
    value = int(value)
    if not low <= value <= INT64_MAX:
        raise FileProblem(f"attribute {key!r} = {value} is out of range (at least {low}): convert it again")
    return value


def _read_attr(f, key):
    try:
        return f.attrs[key]
    except (OSError, TypeError, ValueError, KeyError) as exc:
        raise FileProblem(f"attribute {key!r} cannot be read ({type(exc).__name__}): convert it again") from None


def _kind(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} ({value.dtype})"
    return f"of type {type(value).__name__}"


def member(group, name: str, want, where: str):
    """group[name] when it is a plain (hard-linked) ``want`` (h5py.Group or h5py.Dataset); None when
    absent. A soft or external link is refused without being followed."""
    try:
        link = group.get(name, getlink=True)
    except (OSError, KeyError, ValueError):
        raise FileProblem(f"{where} cannot be read: convert it again") from None
    if link is None:
        return None
    if isinstance(link, h5py.ExternalLink):
        raise FileProblem(f"{where} is an external link (to {link.filename}): a dataset file must hold its "
                          "own data; convert it again")
    if isinstance(link, h5py.SoftLink):
        raise FileProblem(f"{where} is a soft link (to {link.path}): links are not followed; convert it again")
    try:
        obj = group[name]
    except (OSError, KeyError, ValueError):
        raise FileProblem(f"{where} cannot be read: convert it again") from None
    if not isinstance(obj, want):
        what = "group" if isinstance(obj, h5py.Group) else "dataset" if isinstance(obj, h5py.Dataset) else "object"
        raise FileProblem(f"{where} is a {what}, not a {'group' if want is h5py.Group else 'dataset'}: "
                          "convert it again")
    return obj


def numeric_real(ds, where: str, integral: bool = False) -> None:
    """The dataset's dtype holds real numbers (integers where ``integral``): no strings, no complex."""
    kind = ds.dtype.kind
    if kind == "c":
        raise FileProblem(f"{where} is complex ({ds.dtype}): features must be real numbers; keep the real "
                          "part (or split it into two features) and convert again")
    if integral and kind not in "iu":
        what = "floating-point" if kind == "f" else f"{ds.dtype}"
        raise FileProblem(f"{where} holds {what} labels: labels must be integers 0..C-1 (they are not "
                          "rounded); convert again with integer labels")
    if kind not in "iuf":
        raise FileProblem(f"{where} has dtype {ds.dtype}, not numbers: convert it again")


def check_file(f, available: float) -> None:
    """Every field the loader reads; FileProblem (one line) on the first one that is wrong."""
    if text_attr(f, "format", required=False) != FORMAT:
        raise FileProblem(f"not a krum-mpi dataset file (no format = {FORMAT!r} attribute): create it with "
                          "'krum-mpi data convert'")
    version = int_attr(f, "format_version", -1, required=False)
    if version != FORMAT_VERSION:
        raise FileProblem(f"dataset format version {version}, this krum-mpi reads version {FORMAT_VERSION}: "
                          "convert it again")
    p = int_attr(f, "n_features", 1)
    C = int_attr(f, "n_classes", 2)
    text_attr(f, "name")
    scaling = text_attr(f, "scaling", required=False) or "feature"
    if scaling not in SCALINGS:
        raise FileProblem(f"attribute 'scaling' = {scaling[:40]!r} is not one of {', '.join(SCALINGS)}: "
                          "convert it again")
    _check_provenance(f)
    _check_input_shape(f, p)
    rows = 0
    for split in ("train", "test"):
        g = member(f, split, h5py.Group, f"/{split}")
        if g is None:
            if split == "train":
                raise FileProblem("group /train missing: convert it again")
            continue
        X, y = member(g, "X", h5py.Dataset, f"/{split}/X"), member(g, "y", h5py.Dataset, f"/{split}/y")
        if X is None or y is None:
            raise FileProblem(f"/{split} lacks X or y: convert it again")
        numeric_real(X, f"/{split}/X")
        numeric_real(y, f"/{split}/y", integral=True)
        if X.ndim != 2 or X.shape[1] != p:
            raise FileProblem(f"/{split}/X has shape {X.shape}, expected (N, {p})")
        if y.shape != (X.shape[0],):
            raise FileProblem(f"/{split}/y has shape {y.shape} for {X.shape[0]} rows of /{split}/X")
        rows += X.shape[0]
    need = float(ROW_BYTES_IN_MEMORY) * rows + 16.0 * p
    if need > available:
        raise FileProblem(f"the file declares {rows} rows of {p} features: its row index and labels alone need "
                          f"{need / 2**30:.3g} GiB but {available / 2**30:.3g} GiB is available")
    if C > INT64_MAX // 8 or 8.0 * C > available:
        raise FileProblem(f"attribute 'n_classes' = {C} is too large for the memory available")


def _check_provenance(f) -> None:
    text = text_attr(f, "source_sha256", required=False)
    if text is None:
        return
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise FileProblem("attribute 'source_sha256' is not a JSON table of file name -> sha256: convert it again")


def _check_input_shape(f, p: int) -> None:
    if "input_shape" not in f.attrs:
        return
    shape = np.asarray(_read_attr(f, "input_shape"))
    if shape.shape != (3,) or shape.dtype.kind not in "iu" or (shape < 1).any():
        raise FileProblem(f"attribute 'input_shape' = {shape.tolist()!r:.60} must be 3 positive integers "
                          "(channels, height, width): convert it again")
    if int(np.prod(shape.astype(object))) != p:
        raise FileProblem(f"attribute 'input_shape' {tuple(shape.tolist())} does not hold {p} features")


def statistics(g, p: int) -> tuple[np.ndarray, np.ndarray]:
    """/train/mean and /train/std as float64 (p,): present, numeric, right shape, finite, std > 0, and
    usable in float32 (the features are standardised in float32)."""
    out = []
    for name in ("mean", "std"):
        ds = member(g, name, h5py.Dataset, f"/train/{name}")
        if ds is None:
            raise FileProblem(f"/train/{name} missing: standardisation needs it; convert the file again "
                              "(or set data.standardize = false)")
        numeric_real(ds, f"/train/{name}")
        if ds.shape != (p,):
            raise FileProblem(f"/train/{name} has shape {ds.shape}, expected ({p},): convert it again")
        values = ds[...].astype(np.float64)
        if not np.isfinite(values).all():
            raise FileProblem(f"/train/{name} holds NaN or infinite values (a NaN or inf in the training rows?): "
                              "clean the source and convert again")
        out.append(values)
    mean, std = out
    if (std <= 0).any():
        i = int(np.argmax(std <= 0))
        raise FileProblem(f"/train/std[{i}] = {std[i]!r}: a standard deviation must be > 0; convert it again")
    if (np.abs(mean) > FLOAT32_MAX).any() or (1.0 / std > FLOAT32_MAX).any():
        raise FileProblem("/train/mean or /train/std is beyond float32's range: the features are too large "
                          "or too constant to standardise; rescale the source and convert again")
    return mean, std
