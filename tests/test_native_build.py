"""The compiled kernels: built where a C compiler is, found, dispatched, and switched off on demand."""
import os
import shutil
import subprocess
import sys

import pytest

import krum_mpi.native as native
from conftest import native_isas


def compiler():
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


@pytest.mark.skipif(compiler() is None, reason="no C compiler here: the NumPy kernels are the only path")
def test_every_kernel_is_built_where_a_compiler_is():
    # pip builds the kernels as optional extensions: a silent build failure would only show as slow
    # rules, so this test names it (reinstall with 'pip install -e . -v' to see the compiler error)
    if os.environ.get(native.ENV) == "0":
        pytest.skip(f"{native.ENV}=0 switches the compiled kernels off")
    status = native.status()
    assert status["kernels"], "no kernel sources found in krum_mpi/native"
    missing = [name for name, ok in status["kernels"].items() if not ok]
    assert not missing, f"kernels not built: {missing}; rerun 'pip install -e .'"
    assert status["isa"] in ("avx512", "avx2", "generic")


def test_isa_cap_and_switch_off():
    if native.isa() is None:
        pytest.skip("compiled kernels not built: nothing to dispatch")
    for isa in native_isas():
        env = {**os.environ, "KRUM_MPI_ISA": isa}
        out = subprocess.run([sys.executable, "-c", "import krum_mpi.native as n; print(n.isa())"],
                             env=env, capture_output=True, text=True, check=True).stdout.strip()
        assert out == isa
    env = {**os.environ, native.ENV: "0"}
    out = subprocess.run([sys.executable, "-c", "import krum_mpi.native as n; print(n.status())"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert "'isa': None" in out and "True" not in out
