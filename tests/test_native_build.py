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


def test_every_kernel_source_has_its_signatures():
    # status() and load_path() know the kernels by SIGNATURES, not by the sources next to them
    sources = sorted(name[:-2] for name in os.listdir(os.path.join(ROOT, "krum_mpi", "native")) if name.endswith(".c"))
    assert sorted(native.SIGNATURES) == sources


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



def test_isa_is_resolved_once_per_process():
    # CPU detection and KRUM_MPI_ISA are read on a library's first call, not on every call: a later
    # change of the variable is seen only after reset_isa() (which the native_isa fixture calls)
    if native.isa() is None:
        pytest.skip("compiled kernels not built: nothing to dispatch")
    if native_isas()[0] == "generic":
        pytest.skip("only the generic variant runs here: nothing to switch")
    script = ("import os, krum_mpi.native as n\n"
              "first = n.isa(), n.library('gram').krum_gram_isa().decode()\n"
              "os.environ['KRUM_MPI_ISA'] = 'generic'\n"
              "later = n.isa(), n.library('gram').krum_gram_isa().decode()\n"
              "n.reset_isa()\n"
              "print(first, later, (n.isa(), n.library('gram').krum_gram_isa().decode()))")
    env = {key: value for key, value in os.environ.items() if key != "KRUM_MPI_ISA"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    best = native_isas()[0]
    assert out.stdout.split("\n")[0] == f"{(best, best)} {(best, best)} ('generic', 'generic')"


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_kernels(cc, dest):
    """setup.py build_ext with compiler ``cc`` into dest: (exit status, output, built library names)."""
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--force", "--build-lib", str(dest / "lib"),
                           "--build-temp", str(dest / "tmp")], cwd=ROOT, env={**os.environ, "CC": cc},
                          capture_output=True, text=True)
    built = sorted(p.name.split(".")[0] for p in (dest / "lib").rglob("_*.*") if p.suffix in (".so", ".pyd"))
    return proc.returncode, proc.stdout + proc.stderr, built


def test_no_working_compiler_installs_without_kernels(tmp_path):
    # CC=false: a compiler that fails everything, like none at all: the install goes on, NumPy only
    status, output, built = build_kernels("false", tmp_path)
    assert status == 0, output
    assert "no working C compiler (false)" in output
    assert built == []


@pytest.mark.skipif(compiler() is None, reason="no C compiler here")
def test_a_kernel_that_fails_to_compile_fails_the_install(tmp_path):
    # a compiler that works but cannot compile gram.c (as clang could not before __builtin_shuffle
    # was guarded): the build stops with the error instead of dropping the Gram kernel
    wrapper = tmp_path / "cc"
    wrapper.write_text('#!/bin/sh\ncase "$*" in *gram.c*) echo "gram.c: error: not this one" >&2; exit 1;; esac\n'
                       f'exec {compiler()} "$@"\n')
    wrapper.chmod(0o755)
    status, output, built = build_kernels(str(wrapper), tmp_path)
    assert status != 0
    assert "gram.c: error: not this one" in output
    assert "_gram" not in built
