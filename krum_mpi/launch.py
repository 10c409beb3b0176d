"""Finding the MPI launcher that starts runs locally (the demo, local studies)."""
from __future__ import annotations

import os
import shutil
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
