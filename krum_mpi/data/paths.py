"""Where dataset files live: ``KRUM_MPI_DATA`` if set, else the per-user cache."""
from __future__ import annotations

import os
from pathlib import Path

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
