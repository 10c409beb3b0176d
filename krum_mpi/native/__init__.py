"""Optional compiled CPU kernels, loaded with ctypes (no Python C API, nothing pickled).

``pip install`` compiles krum_mpi/native/*.c when a C compiler works (GCC or clang, the same
results bit for bit; a kernel that fails to compile fails the install); each file becomes a shared
library ``_<name>`` next to this one. Every kernel has a NumPy twin that stays the reference
and the fallback: a rule asks ``library(name)`` and takes its NumPy path when it gets None (no
compiler at install time, a GPU array, or KRUM_MPI_NATIVE=0). The C code is single-threaded; the
rules split columns over their own threads (ctypes releases the GIL during a call).
"""
import ctypes
import importlib.machinery
import os
from pathlib import Path

import numpy as np

ENV = "KRUM_MPI_NATIVE"  # "0": NumPy kernels only
ENABLED = os.environ.get(ENV, "1") != "0"
HERE = Path(__file__).resolve().parent
_loaded = {}

# The C signature of every exported function, (restype, argtypes), declared once when its library
# loads: callers pass plain ints (array addresses from ``.ctypes.data``) and get plain results.
_PTR, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
SIGNATURES = {
    "probe": {"krum_native_isa": (ctypes.c_char_p, []),
              "krum_read_sum": (ctypes.c_float, [_PTR, _I64])},  # (x, count)
    "gram": {"krum_gram_isa": (ctypes.c_char_p, []),
             "krum_gram_work_size": (_I64, [_I64, _I64]),  # (n, block)
             # (X, n, row stride, col0, col1, reference, block, gram, norm_sq, finite, work)
             "krum_gram_f32": (_I64, [_PTR, _I64, _I64, _I64, _I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR])},
    "exact": {"krum_exact_isa": (ctypes.c_char_p, []),
              "krum_exact_lanes": (_I64, []),
              "krum_exact_work_size": (_I64, [_I64, _I64]),  # (rows, block)
              # (X, row stride, rows, entries, count, col0, col1, block, S, C)
              "krum_dd_entries_f32": (_INT, [_PTR, _I64, _PTR, _PTR, _I64, _I64, _I64, _I64, _PTR, _PTR]),
              # (X, row stride, rows, r, pairs, count, col0, col1, block, work, S, C)
              "krum_f64_pairs_f32": (_INT, [_PTR, _I64, _PTR, _I64, _PTR, _I64, _I64, _I64, _I64, _PTR, _PTR,
                                            _PTR]),
              # (X, row stride, rows, r, entries, count, col0, col1, block, work, limbs out)
              "krum_exact_entries_f32": (_I64, [_PTR, _I64, _PTR, _I64, _PTR, _I64, _I64, _I64, _I64, _PTR,
                                                _PTR])},
    "order": {"krum_order_max_rows": (_I64, []),
              # (X, row stride, rows or NULL, n, col0, col1, mode, param, out)
              "krum_order_reduce": (_INT, [_PTR, _I64, _PTR, _I64, _I64, _I64, _INT, _I64, _PTR])},
    "point": {  # (X, n, row stride, weights, centre or NULL, keep, col0, col1, point, sums or NULL) -> depth
              "krum_point_pass": (_I64, [_PTR, _I64, _I64, _PTR, _PTR, ctypes.c_double, _I64, _I64, _PTR, _PTR])},
    "rows": {  # (X, n, row stride, mixing, k, col0, col1, out, out row stride)
             "krum_combine_rows": (_INT, [_PTR, _I64, _I64, _PTR, _I64, _I64, _I64, _PTR, _I64]),
             # (dist, n, size, tol, best)
             "krum_mda_search": (_INT, [_PTR, _I64, _I64, ctypes.c_double, _PTR])},
}


def float32_rows(X):
    """True for what the kernels read in place: a NumPy float32 (n, d) array, n >= 1, whose rows are
    contiguous (unit column stride) and a whole number of floats apart, aligned. A view of rows or
    columns qualifies; a column-strided view does not (the NumPy path takes it)."""
    return (isinstance(X, np.ndarray) and X.dtype == np.float32 and X.ndim == 2 and X.shape[0] > 0
            and (X.strides[1] == 4 or X.shape[1] <= 1) and X.strides[0] % 4 == 0 and X.flags.aligned)


def library(name):
    """The ctypes library of kernel ``name`` (e.g. "gram"), or None when unbuilt or disabled."""
    if not ENABLED:
        return None
    if name not in _loaded:
        _loaded[name] = _load(name)
    return _loaded[name]


def _load(name):
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = HERE / f"_{name}{suffix}"
        if path.is_file():
            return load_path(path, name)
    return None


def load_path(path, name):
    """The ctypes library of kernel ``name`` from the file ``path``, its signatures declared. Every
    library exports krum_isa_reset (isa.h). For the build comparisons in the tests; rules use
    library()."""
    lib = ctypes.CDLL(str(path))
    for function, (restype, argtypes) in {**SIGNATURES.get(name, {}), "krum_isa_reset": (None, [])}.items():
        getattr(lib, function).restype = restype
        getattr(lib, function).argtypes = argtypes
    return lib


def reset_isa():
    """Make every loaded kernel library resolve its instruction set again on its next call. Each
    resolves it once per process (CPU detection and KRUM_MPI_ISA, read on its first call), so a
    test that switches variants in one process sets KRUM_MPI_ISA and then calls this."""
    for lib in _loaded.values():
        if lib is not None:
            lib.krum_isa_reset()


def isa():
    """The instruction set the compiled kernels run ("avx512", "avx2", "generic"), or None when the
    NumPy kernels run. KRUM_MPI_ISA=avx2 (or generic) caps it, for tests and comparisons; it is read
    once per process (see reset_isa)."""
    lib = library("probe")
    if lib is None:
        return None
    return lib.krum_native_isa().decode()


def status():
    """{kernel: True/False} for every kernel (one per C file in the source tree; a wheel ships the
    libraries without the sources), and the ISA: for bench records."""
    return {"isa": isa(), "kernels": {name: library(name) is not None for name in sorted(SIGNATURES)}}
