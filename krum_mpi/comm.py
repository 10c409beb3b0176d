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
import time

import numpy as np

HOSTNAME_BYTES = 64
TAG_ROWS, TAG_META = 11, 12


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
        self.set_layout(block_counts(n_workers, self.size))
        self.audit = [] if os.environ.get("KRUM_MPI_AUDIT_DIR") else None

    def set_layout(self, counts) -> None:
        """Rank r hosts ``counts[r]`` consecutive workers (the gathered rows are in worker order)."""
        self.counts = np.asarray(counts, dtype=np.int64)
        assert self.counts.size == self.size and self.counts.sum() == self.n_workers
        self.displs = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def _log(self, op: str, sources) -> None:
        """Audit trail (when KRUM_MPI_AUDIT_DIR is set): which world ranks' data reached this rank."""
        if self.audit is not None:
            self.audit.append({"op": op, "from": sorted(int(r) for r in sources)})

    def write_audit(self) -> None:
        if self.audit is None:
            return
        import json
        from pathlib import Path
        folder = Path(os.environ["KRUM_MPI_AUDIT_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        unique = {json.dumps(a, sort_keys=True) for a in self.audit}
        received = [json.loads(u) for u in sorted(unique)]
        record = {"rank": self.rank, "workers": list(self.worker_range()), "received": received}
        (folder / f"rank{self.rank}.json").write_text(json.dumps(record))

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
        self._log("bcast_params", [0])

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
            self._log("gather_rows", range(self.size))
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

    # -- the colluding adversary's own channel ---------------------------------------------
    def split_byzantine(self, is_byzantine_rank: bool):
        """A sub-communicator of the ranks that host Byzantine workers (None on the others)."""
        sub = self.world.Split(color=1 if is_byzantine_rank else self.MPI.UNDEFINED, key=self.rank)
        if sub == self.MPI.COMM_NULL:
            return None
        members = np.empty(sub.Get_size(), dtype=np.int64)
        sub.Allgather([np.array([self.rank], dtype=np.int64), self.MPI.INT64_T], [members, self.MPI.INT64_T])
        self.byzantine_world_ranks = members   # for the audit trail
        return sub

    def allgather_rows_in(self, sub, local: np.ndarray, out: np.ndarray, counts) -> None:
        """Every member of ``sub`` gets every member's float32 rows (Byzantine statistics sharing)."""
        width = local.shape[1]
        counts = np.asarray(counts, dtype=np.int64) * width
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        sub.Allgatherv([local, local.size, self.MPI.FLOAT], [out, counts, displs, self.MPI.FLOAT])
        self._log("byzantine_allgather", self.byzantine_world_ranks)

    # -- gather with a deadline (silent and slow workers) -----------------------------------
    def gather_rows_deadline(self, local, local_meta, out, out_meta, deadline_s: float):
        """Like two ``gather_rows`` calls, but rank 0 waits at most ``deadline_s`` for each rank.

        Returns, on rank 0, a bool array (size,) of the ranks whose rows arrived in time (None on
        the others). A late rank's receives stay posted into its (ignored) rows and complete later,
        before the next gather; so a slow rank delays nothing but itself, and a rank that never
        answers leaves the run waiting only where the watchdog sees it.
        """
        if not self.is_root:
            self.world.Send([local, self.MPI.FLOAT], dest=0, tag=TAG_ROWS)
            self.world.Send([local_meta, self.MPI.DOUBLE], dest=0, tag=TAG_META)
            return None
        self.finish_late()
        lo, hi = int(self.displs[0]), int(self.displs[0] + self.counts[0])
        out[lo:hi] = local
        out_meta[lo:hi] = local_meta
        requests = {}
        for r in range(1, self.size):
            a, b = int(self.displs[r]), int(self.displs[r] + self.counts[r])
            requests[r] = [self.world.Irecv([out[a:b], self.MPI.FLOAT], source=r, tag=TAG_ROWS),
                           self.world.Irecv([out_meta[a:b], self.MPI.DOUBLE], source=r, tag=TAG_META)]
        pending = set(requests)
        end = self.MPI.Wtime() + deadline_s
        while pending:
            for r in list(pending):
                if self.MPI.Request.Testall(requests[r]):
                    pending.discard(r)
            if not pending or self.MPI.Wtime() >= end:
                break
            time.sleep(1e-4)
        self._late = [req for r in pending for req in requests[r]]
        self._log("gather_rows", [r for r in range(self.size) if r not in pending])
        present = np.ones(self.size, dtype=bool)
        present[list(pending)] = False
        return present

    def finish_late(self) -> None:
        """Complete the receives of ranks that missed the last deadline (their data is discarded)."""
        late = getattr(self, "_late", None)
        if late:
            self.MPI.Request.Waitall(late)
        self._late = []

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

    def ranks_on_this_node(self) -> int:
        """How many ranks of the job share this node (to split its cores between them)."""
        node = self.world.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        size = node.Get_size()
        node.Free()
        return size

    def gather_values(self, value: float) -> np.ndarray | None:
        """One float64 from every rank, on rank 0 (None elsewhere)."""
        out = np.empty(self.size, dtype=np.float64) if self.is_root else None
        self.world.Gather([np.array([value], dtype=np.float64), self.MPI.DOUBLE],
                          [out, self.MPI.DOUBLE] if self.is_root else None, root=0)
        return out

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


def block_counts(n_workers: int, n_ranks: int) -> list[int]:
    """n workers over R ranks in contiguous blocks; the first n % R ranks get one more."""
    base, extra = divmod(n_workers, n_ranks)
    return [base + (r < extra) for r in range(n_ranks)]


def mpi_library_version() -> str:
    try:
        return " ".join(_mpi().Get_library_version().split())
    except Exception as exc:  # no MPI at all: report why instead of failing the provenance
        return f"unavailable ({type(exc).__name__})"


def launched_under_mpi() -> bool:
    """Whether this process was started by an MPI launcher (mpiexec/srun) with more than one rank."""
    keys = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
    return any(k in os.environ for k in keys)
