"""The generic variant of the compiled kernels on aarch64, under qemu-user: setup.py cross-builds
them (GCC, and clang where it is here), scripts/kernel_driver.c calls them, and the results must be
the documented Gram accumulation order with FMA (the NumPy model, bit for bit), the same bits from
both compilers, and for the order kernel (no FMA) the bits of the host's generic variant.
Needs Debian's qemu-user and gcc-aarch64-linux-gnu (scripts/check_kernels_aarch64.sh installs them
and runs this file); skipped without them."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import krum_mpi.native as native
from test_native_compilers import as_bytes, gram_model, rows

ROOT = Path(__file__).resolve().parents[1]
CROSS_CC = "aarch64-linux-gnu-gcc"
SYSROOT = Path("/usr/aarch64-linux-gnu")  # Debian's libc6-arm64-cross: the loader qemu needs

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-aarch64") is None or shutil.which(CROSS_CC) is None or not SYSROOT.is_dir(),
    reason="needs qemu-user and gcc-aarch64-linux-gnu (apt-get install qemu-user gcc-aarch64-linux-gnu)")


class Build:
    """The kernels cross-built by setup.py with one compiler, and a way to call them under qemu."""

    def __init__(self, cc, dest, driver):
        proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--force", "--build-lib", str(dest / "lib"),
                               "--build-temp", str(dest / "tmp")], cwd=ROOT, env={**os.environ, "CC": cc},
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"cross-building the kernels with {cc} failed:\n{proc.stderr}"
        self.native = dest / "lib" / "krum_mpi" / "native"
        self.dest, self.driver, self.calls = dest, driver, 0

    def run(self, kernel, *args, inputs):
        """The driver's raw output for kernel with integer args and input arrays (written to files)."""
        self.calls += 1
        files = []
        for k, array in enumerate(inputs):
            files.append(self.dest / f"in{self.calls}_{k}.bin")
            np.ascontiguousarray(array).tofile(files[-1])
        out = self.dest / f"out{self.calls}.bin"
        (lib,) = self.native.glob(f"_{kernel}.*")
        subprocess.run(["qemu-aarch64", "-L", str(SYSROOT), str(self.driver), str(lib), kernel,
                        *map(str, args), *map(str, files), str(out)], check=True, capture_output=True)
        return out.read_bytes()

    def isa(self):
        (lib,) = self.native.glob("_probe.*")
        return subprocess.run(["qemu-aarch64", "-L", str(SYSROOT), str(self.driver), str(lib), "isa"],
                              check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aarch64")
    driver = tmp / "kernel_driver"
    subprocess.run([CROSS_CC, "-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-o", str(driver),
                    str(ROOT / "scripts" / "kernel_driver.c"), "-ldl"], check=True)
    compilers = {"gcc": CROSS_CC}
    if shutil.which("clang"):
        compilers["clang"] = "clang --target=aarch64-linux-gnu"
    return {name: Build(cc, tmp / name, driver) for name, cc in compilers.items()}


def gram_result(raw, n):
    c = np.frombuffer(raw[:8], dtype=np.int64)[0]
    gram = np.frombuffer(raw[8:8 + 8 * n * n], dtype=np.float64).reshape(n, n)
    norm_sq = np.frombuffer(raw[8 + 8 * n * n:8 + 8 * n * n + 8 * n], dtype=np.float64)
    return c, gram, norm_sq, np.frombuffer(raw[8 + 8 * n * n + 8 * n:], dtype=np.uint8)


def test_only_the_generic_variant_is_built(builds):
    assert {name: build.isa() for name, build in builds.items()} == {name: "generic" for name in builds}


@pytest.mark.parametrize("n, block", [(1, 96), (5, 96), (16, 96), (17, 97), (33, 96), (40, 256)])
def test_gram_follows_the_documented_order_with_fma(builds, n, block):
    X = rows(n, 1013, 3.0 if n % 2 else 0.0, seed=10 + n)
    model_gram, model_norm_sq = gram_model(X, n // 3, block, 4, fused=True)
    for name, build in builds.items():
        c, gram, norm_sq, finite = gram_result(build.run("gram", n, 1013, n // 3, block, 0, 1013, inputs=[X]), n)
        assert c == 1013 and finite.all(), name
        assert gram.tobytes() == model_gram.tobytes(), f"{name}: Gram differs from the documented order"
        assert norm_sq.tobytes() == model_norm_sq.tobytes(), name


def order_cases():
    rng = np.random.default_rng(5)
    for n in (1, 2, 5, 8, 16, 17, 33, 64, 100, 128):
        X = rng.standard_normal((n, 53)).astype(np.float32)
        X[rng.random(X.shape) < 0.05] = np.nan
        X[rng.random(X.shape) < 0.05] = np.inf
        for mode, param in ((0, 0), (1, (n - 1) // 4), (2, max(1, n // 2))):
            yield X, mode, param


def test_order_matches_the_host_generic_variant(builds, monkeypatch):
    host = native.library("order")
    if host is None:
        pytest.skip("compiled order kernel not built on this host")
    monkeypatch.setenv("KRUM_MPI_ISA", "generic")
    native.reset_isa()
    try:
        for X, mode, param in order_cases():
            n = X.shape[0]
            expected = np.full(53, -1.0, dtype=np.float32)
            status = host.krum_order_reduce(X.ctypes.data, 53, None, n, 0, 53, mode, param, expected.ctypes.data)
            for name, build in builds.items():
                raw = build.run("order", n, 53, mode, param, inputs=[X])
                got = np.frombuffer(raw[4:], dtype=np.float32)
                assert np.frombuffer(raw[:4], dtype=np.int32)[0] == status
                assert as_bytes(got) == as_bytes(expected), f"{name}: order n={n} mode={mode}"
    finally:
        monkeypatch.delenv("KRUM_MPI_ISA")
        native.reset_isa()


def test_gcc_and_clang_agree_on_aarch64(builds):
    if len(builds) < 2:
        pytest.skip("no clang here: one aarch64 build only")
    rng = np.random.default_rng(6)
    X = (1e3 + rng.standard_normal((23, 2100))).astype(np.float32)
    X[7, 1000] = np.inf
    for k in (1, 3, 4, 8, 11):
        mixing = rng.random((k, 23))
        mixing[mixing < 0.3] = 0.0
        got = {name: build.run("rows", 23, 2100, k, inputs=[X, mixing]) for name, build in builds.items()}
        assert as_bytes(np.frombuffer(got["gcc"], np.float32)) == as_bytes(np.frombuffer(got["clang"], np.float32))
    Y = rows(9, 1013, 0.0, seed=1)
    Y[4, 300] = np.nan
    Y[6, 700] = 3e38
    got = {name: build.run("gram", 9, 1013, 0, 96, 0, 1013, inputs=[Y]) for name, build in builds.items()}
    assert got["gcc"] == got["clang"]
    assert gram_result(got["gcc"], 9)[0] == 672  # the overflowing block, handed back
