"""Every MPI call of krum-mpi lives here (the rest of the package is testable without MPI).

Gradients move with buffer-based collectives (upper-case ``Bcast``/``Gatherv`` on contiguous
float32 NumPy arrays): nothing a rank sends is ever unpickled. Even small metadata (hostnames,
per-worker losses and timings) travels as fixed-dtype buffers.

Worker layout: n logical workers are spread over R ranks in contiguous blocks (the first n % R ranks
get one more), so rank r hosts workers ``worker_range(r)`` and the gathered matrix is ordered by
worker id.
"""
from __future__ import annotations

import os
import socket
import sys

import numpy as np

HOSTNAME_BYTES = 64


def _mpi():
    from mpi4py import MPI
    return MPI


class Comm:
    """MPI_COMM_WORLD and the worker layout of one run."""

    def __init__(self, n_workers: int, comm=None):
        MPI = _mpi()
        self.MPI = MPI
        self.world = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        self.n_workers = n_workers
        base, extra = divmod(n_workers, self.size)
        self.counts = np.array([base + (r < extra) for r in range(self.size)], dtype=np.int64)
        self.displs = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def worker_range(self, rank: int | None = None) -> range:
        r = self.rank if rank is None else rank
        start = int(self.displs[r])
        return range(start, start + int(self.counts[r]))

    # -- collectives on buffers -----------------------------------------------------------
    def bcast_params(self, params: np.ndarray) -> None:
        """Broadcast rank 0's float32 parameter vector into every rank's ``params`` (in place)."""
        self.world.Bcast([params, self.MPI.FLOAT], root=0)

    def gather_rows(self, local: np.ndarray, out: np.ndarray | None) -> None:
        """Gather each rank's (k_r, d) block into rank 0's preallocated (n, d) ``out``.

        ``local`` and ``out`` must be C-contiguous with the same dtype (float32 gradients, float64
        metadata). ``out`` is only needed (and only allocated by the caller) on rank 0.
        """
        width = local.shape[1] if local.ndim == 2 else 1
        mpi_type = self.MPI.FLOAT if local.dtype == np.float32 else self.MPI.DOUBLE
        send = [local, local.size, mpi_type]
        if self.is_root:
            counts = self.counts * width
            displs = self.displs * width
            self.world.Gatherv(send, [out, counts, displs, mpi_type], root=0)
        else:
            self.world.Gatherv(send, None, root=0)

    def scatter_rows(self, full: np.ndarray | None, local: np.ndarray) -> None:
        """Inverse of ``gather_rows``: rank 0's (n, d) ``full`` is split into each rank's ``local`` rows."""
        width = local.shape[1] if local.ndim == 2 else 1
        mpi_type = self.MPI.FLOAT if local.dtype == np.float32 else self.MPI.DOUBLE
        recv = [local, local.size, mpi_type]
        if self.is_root:
            self.world.Scatterv([full, self.counts * width, self.displs * width, mpi_type], recv, root=0)
        else:
            self.world.Scatterv(None, recv, root=0)

    def bcast_flag(self, value: int) -> int:
        """Broadcast one integer from rank 0 (e.g. a stop flag)."""
        buf = np.array([value], dtype=np.int64)
        self.world.Bcast([buf, self.MPI.INT64_T], root=0)
        return int(buf[0])

    def any_true(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (used to fail together, never alone)."""
        buf = np.array([1 if flag else 0], dtype=np.int32)
        out = np.zeros(1, dtype=np.int32)
        self.world.Allreduce([buf, self.MPI.INT], [out, self.MPI.INT], op=self.MPI.MAX)
        return bool(out[0])

    def first_rank_where(self, flag: bool) -> int:
        """The lowest rank on which ``flag`` is true (``size`` when it is true nowhere)."""
        buf = np.array([self.rank if flag else self.size], dtype=np.int64)
        out = np.zeros(1, dtype=np.int64)
        self.world.Allreduce([buf, self.MPI.INT64_T], [out, self.MPI.INT64_T], op=self.MPI.MIN)
        return int(out[0])

    def max_value(self, value: float) -> float:
        buf = np.array([value], dtype=np.float64)
        out = np.zeros(1, dtype=np.float64)
        self.world.Allreduce([buf, self.MPI.DOUBLE], [out, self.MPI.DOUBLE], op=self.MPI.MAX)
        return float(out[0])

    def barrier(self) -> None:
        self.world.Barrier()

    def hostnames(self) -> list[str]:
        """Every rank's hostname, gathered as fixed-width bytes (no pickle)."""
        name = socket.gethostname().encode()[:HOSTNAME_BYTES]
        local = np.zeros(HOSTNAME_BYTES, dtype=np.uint8)
        local[:len(name)] = np.frombuffer(name, dtype=np.uint8)
        out = np.zeros((self.size, HOSTNAME_BYTES), dtype=np.uint8) if self.is_root else None
        self.world.Gather([local, self.MPI.UNSIGNED_CHAR], [out, self.MPI.UNSIGNED_CHAR] if self.is_root else None,
                          root=0)
        if not self.is_root:
            return []
        return [bytes(row).rstrip(b"\0").decode(errors="replace") for row in out]

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (after one rank hit an error the others cannot see)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.world.Abort(code)

    def wtime(self) -> float:
        return self.MPI.Wtime()


def mpi_library_version() -> str:
    try:
        return " ".join(_mpi().Get_library_version().split())
    except Exception as exc:  # no MPI at all: report why instead of failing the provenance
        return f"unavailable ({type(exc).__name__})"


def launched_under_mpi() -> bool:
    """Whether this process was started by an MPI launcher (mpiexec/srun) with more than one rank."""
    keys = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
    return any(k in os.environ for k in keys)
