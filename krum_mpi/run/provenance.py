"""Provenance of a run, stored in its results file: who ran what, where, with which libraries,
BLAS, compiled kernels and environment (near-ties can resolve differently across kernels and ISAs)."""
from __future__ import annotations

import getpass
import os
import platform
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from ..native import status as native_status


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:
        return None


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def blas_info() -> list:
    try:
        from threadpoolctl import threadpool_info
        keep = ("internal_api", "version", "num_threads", "architecture", "threading_layer", "filepath")
        return [{k: v for k, v in info.items() if k in keep} for info in threadpool_info()]
    except Exception as exc:
        return [{"error": type(exc).__name__}]


BLAS_LIBRARIES = ("openblas", "mkl", "blis", "flexiblas")


def blas_kernel(info: list | None = None, env: dict | None = None) -> dict:
    """What makes large products reproducible, in one place: the BLAS library and version, the kernel
    it dispatched to (OpenBLAS's core type, e.g. "Haswell" or "SkylakeX": a DYNAMIC_ARCH build picks it
    from the CPU unless OPENBLAS_CORETYPE forces one), its threads, and OPENBLAS_CORETYPE itself.
    ``kernel`` is one string to compare runs by ("openblas 0.3.31 SkylakeX"; several BLAS libraries
    loaded: joined by " + "; none found: "unknown")."""
    info = blas_info() if info is None else info
    env = os.environ if env is None else env
    libs = [i for i in info if i.get("internal_api") in BLAS_LIBRARIES]
    kernel = " + ".join(f"{i['internal_api']} {i.get('version') or '?'} {i.get('architecture') or '?'}"
                        for i in libs) or "unknown"
    threads = [i.get("num_threads") for i in libs]
    return {"kernel": kernel, "threads": threads[0] if len(threads) == 1 else (threads or None),
            "coretype_env": env.get("OPENBLAS_CORETYPE")}


def provenance(mpi_library: str, hostnames: list, n_ranks: int, n_workers: int, device: str) -> dict:
    env_keys = [k for k in os.environ if k.startswith(("SLURM_", "OPENBLAS_", "OMP_", "MKL_", "KRUM_MPI_"))]
    blas = blas_info()
    kernel = blas_kernel(blas)
    return {
        "uuid": str(uuid.uuid4()),
        "time_unix": time.time(),
        "time_iso": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cmdline": " ".join(sys.argv),
        "cwd": os.getcwd(),
        "user": _safe(getpass.getuser),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {m: _version(m) for m in ("krum-mpi", "numpy", "h5py", "mpi4py", "mpich", "cupy-cuda12x")},
        "git_commit": _git_commit(),
        "mpi_library_version": mpi_library,
        "hostnames": hostnames,
        "n_ranks": n_ranks,
        "n_workers": n_workers,
        "device": device,
        "blas": blas,
        "blas_kernel": kernel["kernel"],            # flat keys: report tables carry them per run
        "blas_threads": kernel["threads"],
        "blas_coretype_env": kernel["coretype_env"],
        "native_kernels": _safe(native_status),  # compiled kernels and ISA: near-ties can differ by ISA
        "env": {k: os.environ[k] for k in sorted(env_keys)},
    }


def _safe(fn):
    try:
        return fn()
    except Exception:
        return None
