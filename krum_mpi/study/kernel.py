"""One BLAS kernel per study: large matrix products round differently on another kernel, so a study
whose runs mixed kernels would not reproduce row by row (docs/protocol.md).

``study run`` sets ``OPENBLAS_CORETYPE`` for every run it starts: ``study.blas_coretype`` of the spec,
else the core type recorded by the study's complete runs (provenance ``blas_kernel``, e.g.
"openblas 0.3.31.188.0 Haswell" -> "Haswell"). It refuses, in one line, a study folder whose complete
runs already record two kernels, a spec whose core type differs from the one recorded, and an
``OPENBLAS_CORETYPE`` in the environment that differs from the study's.
"""
from __future__ import annotations

import json

from ..errors import ConfigError
from .folder import is_complete

VARIABLE = "OPENBLAS_CORETYPE"


def recorded_kernel(path) -> str | None:
    """The ``blas_kernel`` a complete results file records (None: none recorded)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            provenance = f.attrs.get("provenance")
        if isinstance(provenance, bytes):
            provenance = provenance.decode()
        return json.loads(provenance).get("blas_kernel") if provenance else None
    except (OSError, ValueError, AttributeError):
        return None


def coretype_of(kernel: str) -> str:
    """The OpenBLAS core type of a kernel string ("openblas 0.3.31 Haswell" -> "Haswell"); "" when the
    kernel is not one OpenBLAS library (nothing to pin then)."""
    words = kernel.split()
    if " + " in kernel or len(words) != 3 or words[0] != "openblas" or words[2] == "?":
        return ""
    return words[2]


def study_kernels(runs: list, folder) -> dict:
    """{kernel: [run ids]} over the complete runs of ``runs`` (study.json run dicts)."""
    found = {}
    for run in runs:
        path = folder.result(run["id"])
        if is_complete(path):
            kernel = recorded_kernel(path)
            if kernel:
                found.setdefault(kernel, []).append(run["id"])
    return found


def pinned_env(name: str, coretype: str, runs: list, folder, env: dict) -> tuple[dict, str]:
    """({OPENBLAS_CORETYPE: core type} for the runs, a note) or ConfigError (one line) when kernels mix."""
    kernels = study_kernels(runs, folder)
    if len(kernels) > 1:
        said = "; ".join(f"{len(ids)} runs with {k!r} (e.g. {ids[0]})" for k, ids in kernels.items())
        raise ConfigError(f"study {name} mixes BLAS kernels: {said}: move one set of results out of "
                          f"{folder.runs} (they rerun) so that the study keeps one kernel")
    recorded = next(iter(kernels), "")
    if coretype and recorded and coretype_of(recorded) != coretype:
        raise ConfigError(f"study.blas_coretype = {coretype!r} but the study's complete runs used {recorded!r}: "
                          "set it to their core type or start a new study folder (--dir)")
    want = coretype or coretype_of(recorded)
    have = env.get(VARIABLE)
    if have and want and have != want:
        raise ConfigError(f"{VARIABLE}={have} in the environment, but study {name} runs on core type {want} "
                          f"({'study.blas_coretype' if coretype else 'recorded by its runs'}): unset it")
    if want:
        return {VARIABLE: want}, f"BLAS kernel pinned: {VARIABLE}={want}"
    if recorded:
        return {}, f"BLAS kernel {recorded!r} is not one OpenBLAS: not pinned, only checked for mixing"
    return {}, "no run of this study has recorded its BLAS kernel yet: the next study run pins the first one's"
