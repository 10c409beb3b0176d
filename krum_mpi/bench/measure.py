"""Timers, floors and machine state shared by ``krum-mpi bench aggregate`` and ``gpu-check``.

A time is the minimum over repetitions after warm-up, with device synchronisation. The read floor
is the fastest full read of the input bytes; the GEMM rate is that of a large float32 square product.
"""
import os
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np

from krum_mpi import native
from krum_mpi.aggregators.parallel import column_ranges, cpu_budget, run_ranges
from krum_mpi.attacks import make as make_attack
from krum_mpi.backend import array_namespace, gpu_model, namespace, on_host, standard_normal, synchronize


def timed(fn, xp, warmup, repeats):
    """Seconds of each of ``repeats`` calls after ``warmup`` calls, with device synchronisation."""
    for _ in range(warmup):
        fn()
    synchronize(xp)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(xp)
        times.append(time.perf_counter() - start)
    return times


def peak_extra_bytes(fn):
    """Peak bytes allocated during fn() beyond what was allocated before (NumPy reports to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def random_input(xp, n, d, seed):
    return standard_normal(xp, (n, d), seed)


INPUTS = ("gaussian", "near-tie", "mirror", "simplex", "sparse")
SPARSE_DENSITY = 1e-3   # nonzero share of a sparse row


def craft_input(X, family, crafted, seed):
    """Turn the i.i.d. N(0, 1) rows X (n, d) into the input ``family``, in place (no second copy of a
    large input); ``crafted``: the number of Byzantine rows (the last ones) where the family has them.
      near-tie  the last ``crafted`` rows: the near-tie attack's one-ulp clones of row 0;
      mirror    the same with variant "mirror": pairs one ulp above and below row 0;
      simplex   every row is one N(0, 1) row on a 2^-10 grid with entry i (mod d) of row i raised by
                2^-4: all pairwise squared distances are exactly 2^-7, distinct rows, every decision a tie;
      sparse    every row zero but for a 1e-3 share of entries of +-1 at random places: integer
                distances, many exact ties between different rows.
    Every draw from ``seed``."""
    n, d = X.shape
    if family == "gaussian":
        return X
    if family in ("near-tie", "mirror"):
        crafted = max(1, min(crafted, n - 1))
        attack = make_attack("near-tie", n, crafted, crafted, variant="clone" if family == "near-tie" else "mirror")
        X[n - crafted:] = attack.craft(X[:n - crafted], crafted)
        return X
    rng = np.random.default_rng(seed)
    if family == "simplex":
        base = np.round(rng.standard_normal(d) * 1024.0) / 1024.0
        X[...] = to_device(X, base.astype(np.float32))
        for i in range(n):
            X[i, i % d] += np.float32(2.0**-4)
        return X
    if family == "sparse":
        X[...] = 0.0
        count = max(1, int(round(SPARSE_DENSITY * d)))
        for i in range(n):
            cols = rng.choice(d, size=count, replace=False)
            X[i, cols] = to_device(X, rng.choice(np.float32([-1.0, 1.0]), size=count))
        return X
    raise ValueError(f"unknown input family {family!r}: choose one of {', '.join(INPUTS)}")


def to_device(X, values):
    """Host values as an array of X's namespace (CuPy when X is on the GPU)."""
    return array_namespace(X).asarray(values)


def read_floor(xp, X, warmup, repeats):
    """Fastest full read of X: a BLAS ``ones @ X``, a column sum, or column sums split over the
    CPU threads (as the rules split their work)."""
    ones = xp.ones(X.shape[0], dtype=X.dtype)
    by_gemv = min(timed(lambda: ones @ X, xp, warmup, repeats))
    by_sum = min(timed(lambda: X.sum(axis=0), xp, warmup, repeats))

    @cpu_budget
    def threaded_sums():
        run_ranges(lambda a, b: X[:, a:b].sum(axis=0), column_ranges(xp, X.shape[1], align=1 << 16))

    by_threads = min(timed(threaded_sums, xp, warmup, repeats))
    parts = {"gemv_s": by_gemv, "sum_s": by_sum, "threaded_sum_s": by_threads}
    read_sum = native_read_sum(X)
    if read_sum is not None:  # the compiled kernels read faster than NumPy: so must the floor
        parts["native_sum_s"] = min(timed(read_sum, xp, warmup, repeats))
    return min(parts.values()), parts


def native_read_sum(X):
    """A threaded compiled sum over X's bytes (krum_mpi.native's read kernel), or None."""
    lib = native.library("probe")
    if lib is None or not (native.float32_rows(X) and X.flags.c_contiguous):
        return None

    @cpu_budget
    def threaded():
        run_ranges(lambda a, b: lib.krum_read_sum(X.ctypes.data + 4 * a, b - a),
                   column_ranges(np, X.size, align=1 << 16))

    return threaded


def gemm_rate(xp, warmup, repeats):
    """float32 GEMM rate (flop/s) of a large square product on this device."""
    size = 2048 if on_host(xp) else 8192
    A = random_input(xp, size, size, 1)
    B = random_input(xp, size, size, 2)
    seconds = min(timed(lambda: A @ B, xp, warmup, repeats))
    return 2.0 * size**3 / seconds, size


def machine_state(device):
    info = {"python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform(),
            "cpu_model": cpu_model(), "native_kernels": native.status(), "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "loadavg_before": os.getloadavg(), "device": device,
            "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                                 "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUPY_TF32")
                    if k in os.environ}}
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: v for k, v in lib.items() if k in ("internal_api", "version", "architecture",
                                                               "threading_layer", "num_threads", "filepath")}
                        for lib in threadpool_info()]
    except Exception as exc:  # threadpoolctl is a dependency, but a broken BLAS probe must not stop a bench
        info["blas"] = f"unavailable: {exc}"
    if device == "gpu":
        info["gpu_model"] = gpu_model()
        info["cupy"] = namespace("gpu").__version__
    return info


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def rule_options(rule):
    return {"clip_norm": 1.0} if rule.startswith("clipping") else {}


def kernel_summary(status, device):
    if device == "gpu":
        return "CuPy"
    built = [name for name, ok in status["kernels"].items() if ok and name != "probe"]
    if not built:
        return "NumPy only (compiled kernels not built or KRUM_MPI_NATIVE=0)"
    return f"compiled ({status['isa']}: {', '.join(built)}), NumPy for the rest"


def blas_summary(state):
    blas = state.get("blas")
    if not isinstance(blas, list) or not blas:
        return "unknown"
    lib = blas[0]
    return f"{lib.get('internal_api')} {lib.get('version')} kernel {lib.get('architecture')}, {lib.get('num_threads')} threads"
