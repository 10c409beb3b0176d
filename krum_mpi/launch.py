"""Finding the MPI launcher that starts runs locally (the demo, local studies), and the command
that starts each rank.

Each rank is started with the stop signals blocked (``block_stops_prefix``): ``mpiexec`` (and
``srun``) pass a SIGTERM, SIGINT or SIGUSR1 on to every rank it has started, and a rank whose Python
interpreter is still starting (0.13-0.24 s on a loaded machine, before krum-mpi can install its
handlers, krum_mpi/run/stop.py) used to die of it with status 15 and no results file. Blocked, the
signal stays pending across ``exec`` until the handlers are in place and unblock it: the run then
stops at its first check with a checkpoint and exits 3, as for a signal a moment later. ``env`` of
GNU coreutils (8.31 or later) does the blocking, a small C program that starts in about a
millisecond; it cannot be done in ``mpiexec`` itself, which then forwards nothing. Where ``env``
has no ``--block-signal`` (macOS and BSD, older coreutils), ranks start as before and the window
stays. What no prefix covers is the launcher's own part, from its ``fork`` of a rank to ``env``'s
block: milliseconds, longer on a loaded machine (docs/reliability.md).
"""
from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import subprocess
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


STOP_SIGNAL_NAMES = ("TERM", "INT", "USR1")     # krum_mpi.run.stop.STOP_SIGNALS, as env names them
BLOCK_STOPS = ("env", *(f"--block-signal={name}" for name in STOP_SIGNAL_NAMES))   # also in the job scripts


@functools.lru_cache(maxsize=None)
def block_stops_prefix() -> tuple[str, ...]:
    """``env --block-signal=TERM --block-signal=INT --block-signal=USR1`` (env by its full path) where
    this machine's env has that option (probed once: ``env --block-signal=TERM true`` exits 0), else
    () and the ranks start unprotected."""
    env = shutil.which("env")
    if env is None:
        return ()
    try:
        probe = subprocess.run([env, "--block-signal=TERM", "true"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ()
    if probe.returncode != 0:
        return ()
    return (env, *BLOCK_STOPS[1:])


def rank_command(mpiexec: str, ranks: int, args: list[str]) -> list[str]:
    """``mpiexec -n RANKS [env --block-signal=...] python -m krum_mpi ARGS``: every rank of a run
    krum-mpi starts itself (``study run``, the demo) is started this way."""
    return [mpiexec, "-n", str(ranks), *block_stops_prefix(), sys.executable, "-m", "krum_mpi", *map(str, args)]


STARTED_FILE_ENV = "KRUM_MPI_STARTED_FILE"   # set by the SLURM job scripts (krum_mpi/study/templates.py)


def mark_started(n_ranks: int) -> None:
    """Rank 0, once every rank of the run is in one MPI world: create the file named by
    $KRUM_MPI_STARTED_FILE, if set. A job script that started the run waits for it: a launcher and an
    MPI library that do not agree on PMI can leave every rank blocked in MPI_Init, holding the
    allocation until its time limit, and a run without this file after the profile's start limit is
    stopped and started again with the next launcher. The file is created new (never replacing one)
    and holds the world's size."""
    path = os.environ.get(STARTED_FILE_ENV)
    if not path:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    except OSError as exc:   # the job script then sees no file and starts the run again elsewhere: say why
        print(f"krum-mpi: warning: cannot create {path} (${STARTED_FILE_ENV}): {exc.strerror}", file=sys.stderr,
              flush=True)
        return
    try:
        os.write(fd, f"{n_ranks}\n".encode())
    finally:
        os.close(fd)
