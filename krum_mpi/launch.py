"""Finding the MPI launcher that starts runs locally (the demo, local studies)."""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
from pathlib import Path

from .errors import KrumMPIError


def mpiexec_path() -> str:
    """$MPIEXEC, else the mpiexec beside this Python (the mpich wheel puts it there), else PATH's."""
    if os.environ.get("MPIEXEC"):
        return os.environ["MPIEXEC"]
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise KrumMPIError("mpiexec not found: pip install mpich (or set MPIEXEC to your MPI's mpiexec)")
    return found


PR_SET_PDEATHSIG = 1


def stop_with_parent() -> None:
    """In a child before it execs (``preexec_fn``): have the kernel send it SIGTERM when the parent
    dies, even by SIGKILL (Linux only; elsewhere nothing changes). mpiexec passes the SIGTERM to its
    ranks, which checkpoint and exit 3: a killed ``study run`` leaves no run writing on its own."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass
