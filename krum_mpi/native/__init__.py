"""Optional compiled CPU kernels, loaded with ctypes (no Python C API, nothing pickled).

``pip install`` compiles krum_mpi/native/*.c when a C compiler is present; each file becomes a
shared library ``_<name>`` next to this one. Every kernel has a NumPy twin that stays the reference
and the fallback: a rule asks ``library(name)`` and takes its NumPy path when it gets None (no
compiler at install time, a GPU array, or KRUM_MPI_NATIVE=0). The C code is single-threaded; the
rules split columns over their own threads (ctypes releases the GIL during a call).
"""
import ctypes
import importlib.machinery
import os
from pathlib import Path

ENV = "KRUM_MPI_NATIVE"  # "0": NumPy kernels only
ENABLED = os.environ.get(ENV, "1") != "0"
HERE = Path(__file__).resolve().parent
_loaded = {}


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
            return ctypes.CDLL(str(path))
    return None


def isa():
    """The instruction set the compiled kernels run ("avx512", "avx2", "generic"), or None when the
    NumPy kernels run. KRUM_MPI_ISA=avx2 (or generic) caps it, for tests and comparisons."""
    lib = library("probe")
    if lib is None:
        return None
    lib.krum_native_isa.restype = ctypes.c_char_p
    return lib.krum_native_isa().decode()


def status():
    """{kernel: True/False} for every kernel source shipped, and the ISA: for bench records."""
    names = sorted(p.stem for p in HERE.glob("*.c"))
    return {"isa": isa(), "kernels": {name: library(name) is not None for name in names}}
