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

from .drain import wait_until_output_is_read

HOSTNAME_BYTES = 64
TAG_ROWS, TAG_META, TAG_TASK, TAG_PARAMS, TAG_STATUS = 11, 12, 13, 14, 15
TASK_STEP, TASK_SAVE, TASK_END = 0, 1, 2    # what rank 0 asks of a rank, with a gather deadline
SMALL_ALLGATHER_BYTES = 1 << 20   # allgatherv_params: one Allgatherv up to this size, one Bcast per block above


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
        self.traffic = np.zeros(2, dtype=np.int64)   # payload bytes this rank sent, received (running)
        self.phase_traffic: dict = {}                 # the same per phase: name -> [sent, received]
        self._send_buffer = None

    def set_layout(self, counts) -> None:
        """Rank r hosts ``counts[r]`` consecutive workers (the gathered rows are in worker order)."""
        self.counts = np.asarray(counts, dtype=np.int64)
        assert self.counts.size == self.size and self.counts.sum() == self.n_workers
        self.displs = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def _log(self, op: str, sources) -> None:
        """Audit trail (when KRUM_MPI_AUDIT_DIR is set): which world ranks' data reached this rank."""
        if self.audit is not None:
            self.audit.append({"op": op, "from": sorted(int(r) for r in sources)})

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
        if self.is_root:
            self.count("bcast_params", params.nbytes * (self.size - 1), 0)
        else:
            self.count("bcast_params", 0, params.nbytes)

    def gather_rows(self, local: np.ndarray, out: np.ndarray | None, phase: str = "gather_rows") -> None:
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
            self.count(phase, 0, (out.nbytes // self.n_workers) * (self.n_workers - int(self.counts[0])))
        else:
            self.world.Gatherv(send, None, root=0)
            self.count(phase, local.nbytes, 0)

    def scatter_rows(self, full: np.ndarray | None, local: np.ndarray) -> None:
        """Inverse of ``gather_rows``: rank 0's (n, d) ``full`` is split into each rank's ``local`` rows."""
        width = local.shape[1] if local.ndim == 2 else 1
        mpi_type = self.MPI.FLOAT if local.dtype == np.float32 else self.MPI.DOUBLE
        recv = [local, local.size, mpi_type]
        if self.is_root:
            self.world.Scatterv([full, self.counts * width, self.displs * width, mpi_type], recv, root=0)
        else:
            self.world.Scatterv(None, recv, root=0)

    # -- traffic accounting ---------------------------------------------------------------
    def count(self, phase: str, sent: int, received: int) -> None:
        """Payload bytes of this rank's own data delivered to other ranks (sent) and of other ranks'
        data landing in this rank's buffers (received): what any algorithm must move, whatever
        route the MPI library takes."""
        self.traffic += (int(sent), int(received))
        entry = self.phase_traffic.setdefault(phase, [0, 0])
        entry[0] += int(sent)
        entry[1] += int(received)

    # -- the sharded placement: coordinate blocks, every buffer typed (no pickling) ----------
    def alltoall_row_blocks(self, rows: np.ndarray, bounds: np.ndarray, out: np.ndarray, block_of_rank=None) -> None:
        """Each rank's (k_r, d) float32 rows -> rank q's (n, w) block: columns bounds[b]:bounds[b + 1] of every
        row, b = block_of_rank[q] (default q; replicated blocks: ranks sharing a block), in worker order."""
        k, d = rows.shape
        b = np.arange(self.size) if block_of_rank is None else np.asarray(block_of_rank)
        lo, hi = np.asarray(bounds)[b], np.asarray(bounds)[b + 1]
        widths = (hi - lo).astype(np.int64)
        if self._send_buffer is None or self._send_buffer.size != k * int(widths.sum()):
            self._send_buffer = np.empty(k * int(widths.sum()), dtype=np.float32)
        send, offset = self._send_buffer, 0
        for q in range(self.size):   # packed per destination: its (k, w_q) block, contiguous
            w = int(widths[q])
            send[offset:offset + k * w].reshape(k, w)[...] = rows[:, lo[q]:hi[q]]
            offset += k * w
        send_counts = k * widths
        send_displs = np.concatenate([[0], np.cumsum(send_counts)[:-1]])
        mine = int(widths[self.rank])
        self.world.Alltoallv([send, send_counts, send_displs, self.MPI.FLOAT],
                             [out, self.counts * mine, self.displs * mine, self.MPI.FLOAT])
        self._log("alltoall_row_blocks", range(self.size))
        self.count("alltoall_row_blocks", 4 * k * (int(widths.sum()) - mine), 4 * (self.n_workers - k) * mine)

    def allgather_parts(self, local: np.ndarray) -> np.ndarray:
        """Every rank's (k, ...) float64 or uint8 array, stacked in rank order: (size * k, ...)."""
        mpi_type = {np.dtype(np.float64): self.MPI.DOUBLE, np.dtype(np.uint8): self.MPI.UNSIGNED_CHAR}[local.dtype]
        out = np.empty((self.size * local.shape[0],) + local.shape[1:], dtype=local.dtype)
        self.world.Allgather([local, mpi_type], [out, mpi_type])
        self.count("allgather_parts", local.nbytes * (self.size - 1), local.nbytes * (self.size - 1))
        return out

    def allgatherv_params(self, params: np.ndarray, bounds: np.ndarray) -> None:
        """Each rank's block params[bounds[r]:bounds[r + 1]] -> every rank's whole float32 vector (in
        place). Large vectors: one Bcast per block, which MPICH ran 5-18x faster than Allgatherv for
        d = 1e7 on 4 ranks of one node (0.03 s against 0.16-0.55 s). Small ones (up to
        SMALL_ALLGATHER_BYTES): one Allgatherv, since there the number of collectives is the cost
        (docs/sharded.md, "The cost of a step at small d")."""
        widths = np.diff(bounds).astype(np.int64)
        if params.nbytes <= SMALL_ALLGATHER_BYTES:   # one collective: at small d the count of calls is the cost
            self.world.Allgatherv(self.MPI.IN_PLACE, [params, widths, np.asarray(bounds[:-1], dtype=np.int64),
                                                      self.MPI.FLOAT])
        else:
            for q in range(self.size):
                self.world.Bcast([params[bounds[q]:bounds[q + 1]], self.MPI.FLOAT], root=q)
        mine = 4 * int(widths[self.rank])
        self.count("allgatherv_params", mine * (self.size - 1), params.nbytes - mine)

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

    def gather_floats(self, values: np.ndarray) -> np.ndarray | None:
        """Every rank's (k,) float64 array, on rank 0: (size, k) (None elsewhere)."""
        local = np.ascontiguousarray(values, dtype=np.float64)
        out = np.empty((self.size, local.size), dtype=np.float64) if self.is_root else None
        self.world.Gather([local, self.MPI.DOUBLE], [out, self.MPI.DOUBLE] if self.is_root else None, root=0)
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

    def finalize_within(self, seconds: float, code: int) -> None:
        """Every rank, together: ``MPI_Finalize``, but never longer than ``seconds`` (then the process
        ends with ``code``). Under ``mpiexec`` a rank leaving without it is seen as a crash (status 9);
        under ``srun`` after a forwarded signal it sometimes stalled for minutes: hence the bound."""
        import threading

        _flush()
        timer = threading.Timer(seconds, os._exit, (code,))
        timer.daemon = True
        timer.start()
        self.barrier()
        if not self.MPI.Is_finalized():
            self.MPI.Finalize()
        timer.cancel()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (after one rank hit an error the others cannot see). The
        message printed just before must reach the user first: the process manager kills every
        rank on MPI_Abort, and a line still in this rank's output pipe is lost with it (seen once in
        CI: a watchdog run ended with status 4 and an empty stderr)."""
        _flush()
        wait_until_output_is_read()
        self.world.Abort(code)

    def wtime(self) -> float:
        return self.MPI.Wtime()


def _flush() -> None:
    sys.stdout.flush()
    sys.stderr.flush()


class DeadlineExchange:
    """Steps with a gather deadline (``run.gather_deadline_s > 0``): point-to-point, never collective.

    Rank 0 sends each rank that is free a task (header: step, kind, stop signal; then the
    parameters), computes its own workers' rows, then waits at most the deadline for the replies
    (rows, per-worker loss and seconds, the rank's stop signal and peak memory). A rank that misses
    the deadline stays busy with its step: rank 0 neither sends it the next steps nor waits for it,
    so the step time stays bounded. Its late reply lands in a buffer of its own and is dropped (its
    gradient is of old parameters); as soon as it arrives, rank 0 sends that rank the current
    step, so it catches up instead of finishing every step it missed. Rank 0 waits for busy ranks
    only where every rank must take part: the end of the run, and checkpoints that need the
    workers' momentum (``drain``).
    """

    def __init__(self, comm: Comm, d: int):
        self.comm, self.MPI, self.world = comm, comm.MPI, comm.world
        self.header = np.zeros(3, dtype=np.int64)
        self.status = np.zeros(2, dtype=np.float64)   # a worker's stop signal and peak RSS (MiB)
        if not comm.is_root:
            return
        others = range(1, comm.size)
        self.busy = np.full(comm.size, -1, dtype=np.int64)        # the step a rank computes; -1: free
        self.rows = {r: np.empty((int(comm.counts[r]), d), dtype=np.float32) for r in others}
        self.meta = {r: np.empty((int(comm.counts[r]), 2), dtype=np.float64) for r in others}
        self.statuses = {r: np.zeros(2, dtype=np.float64) for r in others}
        self.replies: dict = {}
        self.theta = np.empty(d, dtype=np.float32)    # the parameters of the current step
        self.stop_signal = 0
        self.peak_rss = np.zeros(comm.size, dtype=np.float64)

    # -- rank 0 ---------------------------------------------------------------------------
    def _send_task(self, r: int, step: int, kind: int, signal: int = 0) -> None:
        """Blocking sends are safe: a free rank is already waiting for its next task."""
        self.header[:] = (step, kind, signal)
        self.world.Send([self.header, self.MPI.INT64_T], dest=r, tag=TAG_TASK)
        if kind == TASK_STEP:
            self.world.Send([self.theta, self.MPI.FLOAT], dest=r, tag=TAG_PARAMS)
            self.replies[r] = [self.world.Irecv([self.rows[r], self.MPI.FLOAT], source=r, tag=TAG_ROWS),
                               self.world.Irecv([self.meta[r], self.MPI.DOUBLE], source=r, tag=TAG_META),
                               self.world.Irecv([self.statuses[r], self.MPI.DOUBLE], source=r, tag=TAG_STATUS)]
            self.busy[r] = step

    def _arrived(self, r: int) -> int:
        """Mark rank r free and return the step its reply was for (-1 while it has not arrived)."""
        if not self.MPI.Request.Testall(self.replies[r]):
            return -1
        done, self.busy[r] = int(self.busy[r]), -1
        self.stop_signal = self.stop_signal or int(self.statuses[r][0])
        self.peak_rss[r] = self.statuses[r][1]
        return done

    def send_step(self, step: int, theta: np.ndarray) -> None:
        """Give step ``step`` and its parameters to every free rank."""
        self.theta[:] = theta
        for r in np.flatnonzero(self.busy[1:] < 0) + 1:
            self._send_task(int(r), step, TASK_STEP)

    def collect(self, step: int, local_rows, local_meta, X, meta, deadline_s: float) -> np.ndarray:
        """Rank 0's rows, then every reply for ``step`` that arrives within ``deadline_s``, into X
        and meta; returns the ranks present (bool, size). Late replies of older steps are dropped,
        and their rank is given this step at once."""
        comm = self.comm
        lo, hi = int(comm.displs[0]), int(comm.displs[0] + comm.counts[0])
        X[lo:hi], meta[lo:hi] = local_rows, local_meta
        present = np.zeros(comm.size, dtype=bool)
        present[0] = True
        end = self.MPI.Wtime() + deadline_s
        while True:
            for r in np.flatnonzero(self.busy >= 0):
                r = int(r)
                done = self._arrived(r)
                if done == step:
                    a, b = int(comm.displs[r]), int(comm.displs[r] + comm.counts[r])
                    X[a:b], meta[a:b] = self.rows[r], self.meta[r]
                    present[r] = True
                elif done >= 0:            # an older step's reply: dropped; the rank joins this step
                    self._send_task(r, step, TASK_STEP)
            if not (self.busy == step).any() or self.MPI.Wtime() >= end:
                break
            time.sleep(1e-4)
        comm._log("gather_rows", np.flatnonzero(present))
        return present

    def drain(self) -> None:
        """Wait for every busy rank's reply (dropped): afterwards every rank waits for a task."""
        for r in np.flatnonzero(self.busy >= 0):
            self.MPI.Request.Waitall(self.replies[int(r)])
            self._arrived(int(r))

    def command(self, kind: int, step: int, signal: int = 0) -> None:
        """After ``drain``: tell every rank to checkpoint (TASK_SAVE) or to leave (TASK_END)."""
        for r in range(1, self.comm.size):
            self._send_task(r, step, kind, signal)

    # -- the other ranks -----------------------------------------------------------------
    def receive_task(self, theta: np.ndarray):
        """(step, kind, signal) from rank 0; for TASK_STEP, the parameters land in ``theta``."""
        self.world.Recv([self.header, self.MPI.INT64_T], source=0, tag=TAG_TASK)
        step, kind, signal = (int(v) for v in self.header)
        if kind == TASK_STEP:
            self.world.Recv([theta, self.MPI.FLOAT], source=0, tag=TAG_PARAMS)
            self.comm._log("bcast_params", [0])
        return step, kind, signal

    def reply(self, rows, meta, stop_signal: int, peak_rss_mib: float) -> None:
        self.world.Send([rows, self.MPI.FLOAT], dest=0, tag=TAG_ROWS)
        self.world.Send([meta, self.MPI.DOUBLE], dest=0, tag=TAG_META)
        self.status[:] = (stop_signal, peak_rss_mib)
        self.world.Send([self.status, self.MPI.DOUBLE], dest=0, tag=TAG_STATUS)


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
