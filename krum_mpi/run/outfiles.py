"""The files beside a results file: unique temporary names, durable renames, one-line OS errors,
leftovers of killed runs, and the check that the results folder can be written (before any setup)."""
from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from ..errors import ResultsError


def unique_suffix() -> str:
    """host-pid-random: two runs never share a temporary name, even with the same --out."""
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-_")[:32] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def os_error_text(exc: BaseException) -> str:
    """One short line for an OS error, also when HDF5 wraps it (it reports the errno text inside)."""
    text = " ".join(str(exc).split())
    marker = "error message = '"
    if marker in text:
        return text.split(marker, 1)[1].split("'", 1)[0]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return text[:200]


def remove_stale_files(path) -> list:
    """Hidden files a killed run on this host left beside ``path`` (its two results files, link and
    checkpoint temporaries), those of processes no longer alive: a later run on the same --out clears
    them. Files of live runs, or of other hosts, are left alone."""
    path = Path(path)
    host = unique_suffix().rsplit("-", 2)[0]
    removed = []
    for name in (path.name, path.name + ".ckpt"):
        for f in path.parent.glob(f".{name}.*"):
            parts = f.name[len(name) + 2:].split(".")[0].rsplit("-", 2)
            if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
                continue
            try:
                os.kill(int(parts[1]), 0)
                continue              # alive: another run on this host
            except ProcessLookupError:
                pass
            except PermissionError:
                continue              # alive, another user's
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def check_can_write(path, force: bool) -> None:
    """Before any setup: refuse to overwrite without --force (no lost data), and find a folder that
    cannot be written now rather than at the first flush."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ResultsError(f"{path} is a folder: --out must name a file such as results/run.h5")
        if path.exists() and not force:
            raise ResultsError(f"{path} already exists: choose another --out or pass --force to overwrite it")
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.{unique_suffix()}.probe")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        raise ResultsError(f"cannot write results in {path.parent}: {os_error_text(exc)}: "
                           "choose another --out (a folder you can write)") from None
