"""The files beside a results file: unique temporary names, durable renames, one-line OS errors,
leftovers of killed runs, and the check that the results folder can be written (before any setup)."""
from __future__ import annotations

import os
import secrets
import socket
import stat
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
            if unlink_quietly(f):
                removed.append(f)
    return removed


def unlink_quietly(path) -> bool:
    """Remove a file of ours if the file system lets us: a clean-up after an error (a read-only
    remount, say) must not raise a second error over the first one."""
    try:
        Path(path).unlink(missing_ok=True)
        return True
    except OSError:
        return False


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
CHECKPOINT_MAGIC = b"KRUMCKPT"    # krum_mpi.run.checkpoint.MAGIC (not imported: this module stays light)
LONGEST_SUFFIX = ".ckpt.{}-9999999-00000000.probe"   # the longest hidden name a run makes beside <out>
NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISLNK, "a symbolic link"))


def kind_of(path) -> str | None:
    """What ``path`` is when it exists and is not a regular file ("a FIFO", ...); None otherwise.
    lstat only: nothing is opened, so a FIFO or a device can never block or be touched."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    for test, what in NOT_REGULAR:
        if test(mode):
            return what
    return None if stat.S_ISREG(mode) else "not a regular file"


def open_regular(path, flags: int = os.O_RDONLY) -> int:
    """A file descriptor of ``path`` opened without blocking and without following a link; OSError
    (ENXIO, ELOOP, or EINVAL for a FIFO, device or socket) unless it is a regular file."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(22, f"{path} is not a regular file")
    return fd


def is_own_results(path) -> bool:
    """Whether ``path`` is a results file krum-mpi wrote: an HDF5 file with our schema_version and run_id."""
    if not _starts_with(path, HDF5_SIGNATURE):
        return False
    try:
        import h5py

        with h5py.File(path, "r") as h5:
            return "schema_version" in h5.attrs and "run_id" in h5.attrs and "metrics" in h5
    except (OSError, KeyError, ValueError, RuntimeError):
        return False


def is_own_checkpoint(path) -> bool:
    """Whether ``path`` is a checkpoint krum-mpi wrote (its magic bytes)."""
    return _starts_with(path, CHECKPOINT_MAGIC)


def _starts_with(path, magic: bytes) -> bool:
    """Whether ``path`` is a regular file whose first bytes are ``magic`` (opened without blocking)."""
    try:
        fd = open_regular(path)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as fh:
        return fh.read(len(magic)) == magic


def check_name_length(path: Path) -> None:
    """Refuse an --out name the file system cannot hold once the hidden suffixes are added (found
    now, not at the first checkpoint)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    host = unique_suffix().rsplit("-", 2)[0]
    longest = len(os.fsencode("." + path.name + LONGEST_SUFFIX.format(host)))
    if longest > limit:
        room = limit - (longest - len(os.fsencode(path.name)))
        raise ResultsError(f"--out name {path.name[:40]!r}... is {len(os.fsencode(path.name))} bytes: with the "
                           f"checkpoint and temporary suffixes it needs {longest}, over this file system's limit of "
                           f"{limit}: choose a name of at most {max(room, 1)} bytes")


def check_out_path(path) -> None:
    """``path``, its checkpoint and its lock file are regular files or absent, and the name fits the
    file system: checked with lstat alone, before anything is written or opened."""
    path = Path(path)
    ck = path.with_name(path.name + ".ckpt")      # krum_mpi.run.checkpoint.path_for
    try:
        for p, what in ((path, "--out"), (ck, "its checkpoint"), (lock_path(path), "its lock file")):
            kind = kind_of(p)
            if kind is not None:
                raise ResultsError(f"{p} ({what}) is {kind}: --out must name a regular file or a new one, "
                                   "such as results/run.h5")
        check_name_length(path)
    except OSError as exc:
        raise ResultsError(f"cannot write results in {path.parent}: {os_error_text(exc)}: "
                           "choose another --out (a folder you can write)") from None


def check_can_write(path, force: bool, resume: bool = False) -> None:
    """Before any setup: ``path`` and its checkpoint must be regular files or absent (nothing else is
    ever replaced, nothing is opened that could block); an existing file is replaced only with
    --force and only when krum-mpi wrote it (or continued with --resume); a folder that cannot be
    written, or a name too long, is found now rather than at the first flush."""
    path = Path(path)
    check_out_path(path)
    ck = path.with_name(path.name + ".ckpt")      # krum_mpi.run.checkpoint.path_for
    try:
        if path.exists() and not resume:
            if not force:
                raise ResultsError(f"{path} already exists: choose another --out or pass --force to overwrite it")
            if not is_own_results(path):
                raise ResultsError(f"{path} is not a krum-mpi results file: --force replaces only results that "
                                   "krum-mpi wrote; move it away or choose another --out")
        if ck.exists() and force and not resume and not is_own_checkpoint(ck):
            raise ResultsError(f"{ck} is not a krum-mpi checkpoint: --force replaces only files that krum-mpi "
                               "wrote; move it away or choose another --out")
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.{unique_suffix()}.probe")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        raise ResultsError(f"cannot write results in {path.parent}: {os_error_text(exc)}: "
                           "choose another --out (a folder you can write)") from None


# -- the lock on <out> ----------------------------------------------------------------------------
# flock(2) on <out>.lock: the kernel releases it when the holder dies (kill -9, a crash, a node
# reboot for local file systems), so a stale lock is never mistaken for a live run and nothing has
# to guess from pids. docs/reliability.md says where it holds (local file systems, NFS through the
# kernel's lock manager, Lustre mounted with -o flock).
LOCK_UNSUPPORTED = (37, 38, 95)    # ENOLCK, ENOSYS, EOPNOTSUPP: a file system without flock


def lock_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


def _holder_text(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return "another run"
    return " ".join(text.split()) or "another run"


class OutLock:
    """An exclusive lock on a results file, held by this process until ``release`` or its death."""

    def __init__(self, out):
        self.out = Path(out)
        self.path = lock_path(out)
        self.fd = None
        self.note = None      # why no lock could be taken (a file system without locks)

    def acquire(self) -> "OutLock":
        import fcntl
        from datetime import datetime, timezone

        for _ in range(100):
            try:
                self.out.parent.mkdir(parents=True, exist_ok=True)
                writer = open_regular(self.path, os.O_RDWR | os.O_CREAT)
                fd = open_regular(self.path)   # the lock is held read-only: a read-only remount stays possible
            except OSError as exc:
                if "writer" in locals():
                    os.close(writer)
                raise ResultsError(f"cannot create the lock file {self.path}: {os_error_text(exc)}: choose another "
                                   "--out (a folder you can write)") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder_text(fd)
                os.close(fd)
                os.close(writer)
                raise ResultsError(f"{self.out} is in use by {holder}: two runs must not write one file; wait for "
                                   "it to end (or stop it), or choose another --out") from None
            except OSError as exc:
                os.close(fd)
                os.close(writer)
                if exc.errno not in LOCK_UNSUPPORTED:
                    raise
                self.note = (f"the file system of {self.out} has no file locks ({os.strerror(exc.errno)}): "
                             "nothing stops a second run on the same --out")
                return self
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:       # the holder released it (and removed the file) after we opened it: retry
                os.close(fd)
                os.close(writer)
                continue
            since = datetime.now(timezone.utc).isoformat(timespec="seconds")
            text = f"pid {os.getpid()} on host {socket.gethostname()[:64]} since {since}\n".encode()
            try:
                os.ftruncate(writer, 0)
                os.pwrite(writer, text, 0)
            finally:
                os.close(writer)
            self.fd = fd
            return self
        raise ResultsError(f"{self.path}: could not take the lock (it changed 100 times): try again")

    def release(self) -> None:
        """Remove the lock file while holding it, then let go (a run that opened it meanwhile sees
        that the name no longer leads to its file and retries)."""
        if self.fd is None:
            return
        unlink_quietly(self.path)
        os.close(self.fd)
        self.fd = None


def lock_holder(out) -> str | None:
    """Who holds the lock on ``out`` ("pid ... on host ... since ..."), None when no live process does."""
    import fcntl

    try:
        fd = open_regular(lock_path(out))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _holder_text(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
