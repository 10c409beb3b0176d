"""Build the optional compiled kernels (krum_mpi/native/*.c); metadata lives in pyproject.toml.

Each kernel is a plain C library loaded with ctypes, built as an optional extension: without a C
compiler the install still succeeds and every rule runs its NumPy path (krum_mpi.native says which).
"""
import sys
from pathlib import Path

from setuptools import Extension, setup

NATIVE = Path("krum_mpi/native")
KERNELS = sorted(p.stem for p in NATIVE.glob("*.c"))  # one shared library per C file
ARGS = [] if sys.platform == "win32" else ["-O3", "-std=c11", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"]

setup(ext_modules=[
    Extension(f"krum_mpi.native._{name}", [f"krum_mpi/native/{name}.c"], depends=[str(h) for h in NATIVE.glob("*.h")],
              extra_compile_args=ARGS, optional=True)
    for name in KERNELS
])
