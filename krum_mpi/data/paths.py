"""Where dataset files live: ``KRUM_MPI_DATA`` if set, else the per-user cache."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from ..inputs.files import regular_file_problem

ENV_VAR = "KRUM_MPI_DATA"


def data_dir() -> Path:
    """The dataset folder: ``$KRUM_MPI_DATA``, else ``($XDG_CACHE_HOME or ~/.cache)/krum-mpi/data``.

    It holds one sub-folder per dataset (``spambase/spambase.data``, ``mnist-t10k/...``). Nothing is
    created here: ``krum-mpi data download`` creates what it writes.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "krum-mpi" / "data"


def resolve(path: str, default_relative: str) -> Path:
    """Where ``data.path`` points: an absolute path as is; a relative one in the working directory if it
    exists there, else inside data_dir() (so a config may say ``path = "mnist-t10k"``); empty: the
    dataset's default place data_dir()/default_relative."""
    if not path:
        return data_dir() / default_relative
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return data_dir() / p


def require_file(path, what: str, hint: str) -> Path:
    """``path`` if it is a regular file; else DataError saying what it is ("not found", "is a
    directory", "is a FIFO (named pipe), not a regular file") and ``hint``. Examined with os.stat, so
    a FIFO is never opened (it would block) and a device never read."""
    problem = regular_file_problem(path)
    if problem:
        raise DataError(f"{what} {path} {problem}; {hint}")
    return Path(path)
