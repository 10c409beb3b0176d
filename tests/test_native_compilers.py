"""The compiled kernels compute bit for bit the same with GCC and with clang, and the Gram kernel
follows the accumulation order written down in docs/aggregators.md ("Accumulation order of the Gram
kernel"): a NumPy model of that order, with exactly rounded float32 FMAs, matches it bit for bit on
every instruction-set variant. The floating-point error bound of the distances rests on that order.
"""
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import krum_mpi.native as native
from conftest import native_isas

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ("exact", "gram", "order", "probe", "rows")


# ---- the kernels' raw outputs on fixed inputs, per instruction-set variant --------------------

def rows(n, d, mean, seed):
    rng = np.random.default_rng(seed)
    return (mean + rng.standard_normal((n, d))).astype(np.float32)


def gram_call(lib, X, ref, block, col0=0, col1=None):
    """One krum_gram_f32 call over [col0, col1): (returned column, gram, norm_sq, finite)."""
    n = X.shape[0]
    col1 = X.shape[1] if col1 is None else col1
    gram, norm_sq = np.zeros((n, n)), np.zeros(n)
    finite = np.ones(n, dtype=np.uint8)
    work = np.empty(lib.krum_gram_work_size(n, block), dtype=np.float32)
    c = lib.krum_gram_f32(X.ctypes.data, n, X.strides[0] // 4, col0, col1, ref, block, gram.ctypes.data,
                          norm_sq.ctypes.data, finite.ctypes.data, work.ctypes.data)
    return c, gram, norm_sq, finite


def gram_outputs(lib):
    out = {}
    for n in (1, 3, 5, 16, 17, 33, 67):
        for block in (96, 97, 1024):  # whole vectors (read in place for n <= 32), ragged, one block
            X = rows(n, 1013, 1e4, seed=n)
            out[f"gram n={n} block={block}"] = gram_call(lib, X, n // 2, block)
    X = rows(9, 1013, 0.0, seed=1)
    X[4, 300] = np.nan  # a non-finite row, marked and dropped
    X[6, 700] = 3e38  # float32 overflow: the kernel hands that block back
    out["gram non-finite"] = gram_call(lib, X, 0, 96)
    out["gram non-finite after"] = gram_call(lib, X, 0, 96, col0=768)
    return out


def order_outputs(lib):
    out = {}
    rng = np.random.default_rng(5)
    for n in (1, 2, 5, 8, 16, 17, 33, 64, 100, 128):
        X = rng.standard_normal((n, 53)).astype(np.float32)  # 53: remainder columns in every variant
        X[rng.random(X.shape) < 0.05] = np.nan
        X[rng.random(X.shape) < 0.05] = np.inf
        for mode, param in ((0, 0), (1, (n - 1) // 4), (2, max(1, n // 2))):
            res = np.full(53, -1.0, dtype=np.float32)
            rc = lib.krum_order_reduce(X.ctypes.data, 53, None, n, 0, 53, mode, param, res.ctypes.data)
            out[f"order n={n} mode={mode}"] = (rc, res)
    return out


def rows_outputs(lib):
    out = {}
    rng = np.random.default_rng(6)
    X = (1e3 + rng.standard_normal((23, 2100))).astype(np.float32)
    X[7, 1000] = np.inf
    for k in (1, 3, 4, 8, 11):
        mixing = rng.random((k, 23))
        mixing[mixing < 0.3] = 0.0
        res = np.zeros((k, 2100), dtype=np.float32)
        rc = lib.krum_combine_rows(X.ctypes.data, 23, 2100, mixing.ctypes.data, k, 0, 2100, res.ctypes.data, 2100)
        out[f"rows k={k}"] = (rc, res)
    dist = rng.random((12, 12))
    dist = dist + dist.T
    best = np.zeros(7, dtype=np.int64)
    out["mda"] = (lib.krum_mda_search(dist.ctypes.data, 12, 7, 1e-9, best.ctypes.data), best)
    return out


def probe_outputs(lib):
    x = np.random.default_rng(7).standard_normal(1001).astype(np.float32)
    return {"read_sum": lib.krum_read_sum(x.ctypes.data, 1001)}


def exact_outputs(lib):
    """Double-double (S, C) and exact limbs of Gram entries, rows of every magnitude, ragged widths."""
    out = {}
    rng = np.random.default_rng(8)
    X = (rng.standard_normal((6, 5003)) * 10.0 ** rng.integers(-40, 38, size=(6, 5003))).astype(np.float32)
    rows_ = np.array([0, 2, 3, 5], dtype=np.int64)
    entries = np.array([[a, b] for a in range(4) for b in range(a, 4)], dtype=np.int64)
    for block, col1 in ((64, 5003), (2048, 5003), (2048, 37)):
        S, C = np.zeros(len(entries)), np.zeros(len(entries))
        lib.krum_dd_entries_f32(X.ctypes.data, 5003, rows_.ctypes.data, entries.ctypes.data, len(entries), 0,
                                col1, block, S.ctypes.data, C.ctypes.data)
        limbs = np.zeros((len(entries), 20), dtype=np.int64)
        iwork = np.empty(lib.krum_exact_work_size(4, block), dtype=np.int32)
        count = lib.krum_exact_entries_f32(X.ctypes.data, 5003, rows_.ctypes.data, 4, entries.ctypes.data,
                                           len(entries), 0, col1, block, iwork.ctypes.data, limbs.ctypes.data)
        out[f"exact block={block} cols={col1}"] = (S, C, count, limbs)
    return out


OUTPUTS = {"exact": exact_outputs, "gram": gram_outputs, "order": order_outputs, "rows": rows_outputs, "probe": probe_outputs}


def as_bytes(value):
    """A result as bytes: arrays by their bits (-0.0 included), numbers by repr. Every NaN becomes
    the same NaN: IEEE 754 leaves the sign and payload of a NaN result open, and x86 passes on the
    first operand's NaN, so inf - inf (a negative NaN) plus an input NaN (positive) gives either
    sign depending on how the compiler ordered the operands of the commutative add."""
    if isinstance(value, tuple):
        return b"|".join(as_bytes(v) for v in value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            value = np.where(np.isnan(value), value.dtype.type(np.nan), value)
        return value.tobytes()
    return repr(value).encode()


def outputs_per_isa(libs, monkeypatch):
    """{(isa, case): bytes} for every variant this CPU runs, from the libraries ``libs``."""
    result = {}
    for isa in native_isas():
        monkeypatch.setenv("KRUM_MPI_ISA", isa)
        for lib in libs.values():
            lib.krum_isa_reset()
        assert libs["probe"].krum_native_isa().decode() == isa
        for name, lib in libs.items():
            for case, value in OUTPUTS[name](lib).items():
                result[(isa, case)] = as_bytes(value)
    for lib in libs.values():
        lib.krum_isa_reset()
    return result


# ---- GCC and clang builds ---------------------------------------------------------------------

def build(cc, dest):
    """The kernels built by setup.py with compiler ``cc`` into dest: {kernel: ctypes library}."""
    env = {**os.environ, "CC": cc}
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--force", "--build-lib", str(dest / "lib"),
                           "--build-temp", str(dest / "tmp")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"building the kernels with {cc} failed:\n{proc.stdout}\n{proc.stderr}"
    assert f"with {cc}" in proc.stderr  # setup.py names the compiler that built them
    libs = {}
    for name in KERNELS:
        (path,) = (dest / "lib" / "krum_mpi" / "native").glob(f"_{name}.*")
        libs[name] = native.load_path(path, name)
    return libs


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("clang") is None,
                    reason="needs both gcc and clang on PATH")
def test_gcc_and_clang_builds_agree_bit_for_bit(tmp_path, monkeypatch):
    if native.isa() is None:
        pytest.skip("compiled kernels disabled or not built here (native_isas() needs the probe)")
    gcc = outputs_per_isa(build("gcc", tmp_path / "gcc"), monkeypatch)
    clang = outputs_per_isa(build("clang", tmp_path / "clang"), monkeypatch)
    assert gcc.keys() == clang.keys() and len(gcc) > 50
    differ = sorted(key for key in gcc if gcc[key] != clang[key])
    assert not differ, f"GCC and clang builds differ in {differ}"


# ---- the Gram kernel's accumulation order, modelled in NumPy ----------------------------------

def fma32(a, b, c):
    """a * b + c of float32 arrays rounded once to float32 (an FMA). a * b is exact in float64; the
    float64 sum s is rounded, and its error e is exact (TwoSum). Rounding s to float32 is then right
    except when s lies exactly halfway between two floats and e != 0: e's sign breaks the tie."""
    p = a.astype(np.float64) * b.astype(np.float64)
    c64 = c.astype(np.float64)
    s = p + c64
    bv = s - p
    e = (p - (s - bv)) + (c64 - bv)
    r = s.astype(np.float32)
    r64 = r.astype(np.float64)
    other = np.nextafter(r, np.where(s > r64, np.float32(np.inf), np.float32(-np.inf)))
    halfway = (s != r64) & ((r64 + other.astype(np.float64)) / 2 == s) & (e != 0)
    up = np.maximum(r, other)
    down = np.minimum(r, other)
    return np.where(halfway, np.where(e > 0, up, down), r)


def block_gram_model(centred, vw, fused):
    """The float32 block Gram as the kernel sums it: lane l of vw sums the products of columns
    l, l + vw, l + 2 vw, ... in that order (fused: one FMA each; else product rounded, then added),
    then the lanes are added as a tree: halves until 4 lanes, then (l0 + l2) + (l1 + l3)."""
    n, length = centred.shape
    steps = -(-length // 16) * 16 // vw  # zero padded to 16 floats: zero products change nothing
    padded = np.zeros((n, steps * vw), dtype=np.float32)
    padded[:, :length] = centred
    lanes = padded.reshape(n, steps, vw)
    acc = np.zeros((n, n, vw), dtype=np.float32)
    for t in range(steps):
        a, b = np.broadcast_arrays(lanes[:, None, t, :], lanes[None, :, t, :])
        acc = fma32(a, b, acc) if fused else acc + a * b
    if vw == 16:
        acc = acc[..., :8] + acc[..., 8:]
    if vw >= 8:
        acc = acc[..., :4] + acc[..., 4:8]
    return (acc[..., 0] + acc[..., 2]) + (acc[..., 1] + acc[..., 3])


def gram_model(X, ref, block, vw, fused):
    """krum_gram_f32's float64 sums for finite X: per block, the float32 centring x - r, the block
    Gram above, then gram += block (float64) and norm_sq += diagonal^2 (float64, two roundings)."""
    n, d = X.shape
    gram, norm_sq = np.zeros((n, n)), np.zeros(n)
    for c in range(0, d, block):
        centred = X[:, c:c + block] - X[ref, c:c + block]
        g = block_gram_model(centred, vw, fused).astype(np.float64)
        gram += g
        diag = np.diagonal(g)
        norm_sq += diag * diag
    return gram, norm_sq


LANES = {"avx512": 16, "avx2": 8, "generic": 4}


@pytest.mark.parametrize("n, block", [(1, 96), (5, 96), (16, 96), (17, 97), (33, 96), (40, 256)])
def test_gram_kernel_follows_the_documented_order(native_isa, n, block):
    lib = native.library("gram")
    if lib is None:
        pytest.skip("compiled Gram kernel not built")
    X = rows(n, 1013, 3.0 if n % 2 else 0.0, seed=10 + n)  # a short last block every time
    c, gram, norm_sq, finite = gram_call(lib, X, n // 3, block)
    assert c == 1013 and finite.all()
    # FMA in the AVX variants; in the generic one wherever the target has it (not baseline x86-64)
    fused = native_isa != "generic" or platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386")
    model_gram, model_norm_sq = gram_model(X, n // 3, block, LANES[native_isa], fused)
    assert gram.tobytes() == model_gram.tobytes()
    assert norm_sq.tobytes() == model_norm_sq.tobytes()
    if native_isa != "generic" and n > 1:  # the model would notice the other rounding
        unfused_gram, _ = gram_model(X, n // 3, block, LANES[native_isa], not fused)
        assert unfused_gram.tobytes() != model_gram.tobytes()
