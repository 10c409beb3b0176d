"""Array backend: NumPy everywhere, CuPy where a GPU is present.

This is the only module that decides between NumPy and CuPy. Kernels take ``xp =
array_namespace(x)`` from their inputs and call ``xp.*`` (CuPy's one-code-path habit); where the two
must differ (how work is cut: cache-sized chunks over CPU threads, one launch on a GPU; which
compiled kernels apply; what the device is), they ask a function below rather than test ``xp``.
Transfers happen only at the edges (``to_device`` before aggregation, ``to_host`` after).
"""
from __future__ import annotations

import numpy as np

from .errors import DeviceError


def cupy_or_none():
    """The cupy module if it imports and sees at least one CUDA device, else None."""
    try:
        import cupy
    except Exception:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:
        return None
    return cupy


def gpu_unavailable_reason() -> str | None:
    """Why the GPU path cannot run here (None when it can): used by tests to skip clearly."""
    try:
        import cupy
    except Exception as exc:
        return f"CuPy is not installed ({type(exc).__name__}): pip install 'krum-mpi[gpu]'"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy finds no CUDA driver or device ({' '.join(str(exc).split())})"
    return None if count >= 1 else "CuPy sees no CUDA device"


def resolve_device(requested: str) -> str:
    """'auto' -> 'gpu' when CuPy and a device are present, else 'cpu'; 'gpu' fails clearly without one."""
    if requested == "cpu":
        return "cpu"
    reason = gpu_unavailable_reason()
    if requested == "gpu":
        if reason is not None:
            raise DeviceError(f"--device gpu requested but {reason}; use --device cpu or auto")
        return "gpu"
    if requested == "auto":
        return "cpu" if reason is not None else "gpu"
    raise DeviceError(f"unknown device {requested!r}: use auto, cpu or gpu")


def namespace(device: str):
    """The array module for a resolved device name."""
    if device == "gpu":
        import cupy
        return cupy
    return np


def array_namespace(x):
    """numpy or cupy, whichever owns ``x`` (NumPy for anything that is not a CuPy array); the
    ``array_api_strict`` namespace for its arrays (the tests run the rules under it: a NumPy-only
    call in code that CuPy runs fails there)."""
    mod = type(x).__module__
    if mod.startswith("cupy"):
        import cupy
        return cupy
    if mod.startswith("array_api_strict"):
        import array_api_strict
        return array_api_strict
    return np


def host_dtype(x) -> np.dtype:
    """The NumPy dtype of ``x``'s elements, whichever namespace owns it (the array API's dtype
    objects do not compare equal to NumPy's)."""
    return np.dtype(str(x.dtype).rsplit(".", 1)[-1])


def fancy_indexing(xp) -> bool:
    """True where arrays take integer-array indices beside slices and in assignments (NumPy,
    CuPy); the strict array API namespace does not (callers then use take/where)."""
    return xp is np or xp.__name__.startswith("cupy")


def astype(xp, x, dtype):
    """``x`` converted to ``dtype`` in its namespace (the standard's function; a method in CuPy)."""
    convert = getattr(xp, "astype", None)
    return convert(x, dtype) if convert is not None else x.astype(dtype)


def copied(xp, x):
    """A copy of ``x`` in its namespace."""
    return xp.asarray(x, copy=True) if not hasattr(x, "copy") else x.copy()


def on_host(xp) -> bool:
    """True when ``xp`` computes on the CPU (NumPy): compiled kernels and CPU threads apply there."""
    return xp is np


def chunk_columns(xp, d: int, host_chunk: int) -> int:
    """Columns per chunk of a d-column pass: ``host_chunk`` on the CPU (temporaries stay in cache),
    all d at once on a GPU (fewer launches)."""
    return int(host_chunk) if on_host(xp) else int(d)


def thread_count(xp, budget: int) -> int:
    """Threads to split a pass over: the CPU budget on the host, one on a GPU (already parallel)."""
    return int(budget) if on_host(xp) else 1


def standard_normal(xp, shape, seed: int, dtype=np.float32):
    """Seeded N(0, 1) samples made on ``xp``'s device (no host copy)."""
    return xp.random.default_rng(seed).standard_normal(shape, dtype=dtype)


def gpu_model() -> str:
    """The name of the current CUDA device."""
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    return props["name"].decode() if isinstance(props["name"], bytes) else props["name"]


def to_device(x, xp):
    """Move a host array to ``xp``'s device (no copy when ``xp`` is NumPy)."""
    return x if xp is np else xp.asarray(x)


def to_host(x) -> np.ndarray:
    """A NumPy array from either namespace (copies a CuPy array to the host)."""
    if isinstance(x, np.ndarray):
        return x
    get = getattr(x, "get", None)
    return get() if get is not None else np.asarray(x)


def synchronize(xp) -> None:
    """Wait for queued GPU work, so timers and MPI calls see finished results."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


def device_description(device: str) -> str:
    return f"gpu:{gpu_model()}" if device == "gpu" else "cpu"
