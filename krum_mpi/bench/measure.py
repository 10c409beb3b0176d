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
from krum_mpi.backend import gpu_model, namespace, on_host, standard_normal, synchronize


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
