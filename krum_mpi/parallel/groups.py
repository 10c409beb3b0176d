"""The MPI calls of model parallelism (``parallel.model = p``), next to comm.py (whose Comm it uses:
mpi4py is still imported there alone). Every buffer is a typed NumPy array: nothing is pickled.

Rank r = g * p + s. Two sub-communicators, both built collectively here:
- the model group g (ranks g*p .. g*p+p-1, group rank s): the split MLP's sums and gathers, and the
  broadcast of the replicated biases from shard 0;
- the shard column s (ranks s, p+s, 2p+s, ..., column rank g): a ``Comm`` over it whose worker
  layout is the groups' (group g hosts block_counts(n, G)[g] workers), so its Alltoallv and
  parameter allgather are those of the sharded placement, run within the shard.
Every byte is counted into the world Comm's tallies (comm/bytes_sent, comm/bytes_received).
"""
from __future__ import annotations

import numpy as np

from .comm import Comm


class ModelGroups:
    """Collective when built: every rank of the world calls it with the same p."""

    def __init__(self, comm: Comm, p: int, n_workers: int):
        self.comm, self.MPI, self.p = comm, comm.MPI, p
        self.group_id, self.shard = divmod(comm.rank, p)
        self.group = comm.world.Split(color=self.group_id, key=comm.rank)
        self.column = Comm(n_workers, comm=comm.world.Split(color=self.shard, key=comm.rank))
        self.column.traffic = comm.traffic                 # one tally per rank, whichever communicator
        self.column.phase_traffic = comm.phase_traffic
        self.column.audit = None

    def _type(self, a: np.ndarray):
        return {np.dtype(np.float32): self.MPI.FLOAT, np.dtype(np.float64): self.MPI.DOUBLE}[a.dtype]

    def gather(self, parts, widths):
        """SplitMLP's gather: this shard's (..., w_s) array -> every shard's, in shard order
        (one Allgatherv in the group)."""
        local = np.ascontiguousarray(parts[0])
        lead = local.shape[:-1]
        rows = int(np.prod(lead, dtype=np.int64))
        counts = rows * np.asarray(widths, dtype=np.int64)
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        out = np.empty(int(counts.sum()), dtype=local.dtype)
        mpi_type = self._type(local)
        self.group.Allgatherv([local, local.size, mpi_type], [out, counts, displs, mpi_type])
        item = local.itemsize
        self.comm.count("model_group_gather", item * local.size * (self.p - 1), item * (out.size - local.size))
        return [out[displs[q]:displs[q] + counts[q]].reshape(*lead, int(widths[q])) for q in range(self.p)]

    def allgather_bytes(self, sent: np.ndarray, counts) -> np.ndarray:
        """Every shard's bytes (``counts[q]`` from shard q), concatenated in shard order, on every shard
        of the group (one Allgatherv): the hosted workers' minibatches, each drawn by one shard."""
        counts = np.asarray(counts, dtype=np.int64)
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        out = np.empty(int(counts.sum()), dtype=np.uint8)
        self.group.Allgatherv([sent, sent.size, self.MPI.BYTE], [out, counts, displs, self.MPI.BYTE])
        self.comm.count("model_group_batches", sent.nbytes * (self.p - 1), out.nbytes - sent.nbytes)
        return out

    def bcast_from_shard0(self, arrays) -> None:
        """Shard 0's arrays into the same arrays of every shard of the group (in place)."""
        for a in arrays:
            self.group.Bcast([a, self._type(a)], root=0)
            nbytes = a.nbytes * (self.p - 1) if self.shard == 0 else 0
            self.comm.count("model_group_bcast", nbytes, 0 if self.shard == 0 else a.nbytes)

    def gather_bytes(self, sent: np.ndarray, out: np.ndarray | None, counts) -> None:
        """Every rank's bytes (``counts[r]`` from rank r) into rank 0's ``out``, in world-rank order: one
        Gatherv for the model shards' rows, whose widths differ by rank, with their metadata."""
        comm, send = self.comm, [sent, sent.size, self.MPI.BYTE]
        if comm.is_root:
            displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            comm.world.Gatherv(send, [out, np.asarray(counts, dtype=np.int64), displs, self.MPI.BYTE], root=0)
            comm.count("gather_rows", 0, out.nbytes - sent.nbytes)
        else:
            comm.world.Gatherv(send, None, root=0)
            comm.count("gather_rows", sent.nbytes, 0)

    # -- checkpoints: shards travel to and from rank 0 one at a time ------------------------
    def send_to_root(self, a: np.ndarray) -> None:
        self.comm.world.Send([np.ascontiguousarray(a), self._type(a)], dest=0, tag=21)

    def recv_from(self, source: int, out: np.ndarray) -> None:
        self.comm.world.Recv([out, self._type(out)], source=source, tag=21)

    def send_from_root(self, a: np.ndarray, dest: int) -> None:
        self.comm.world.Send([np.ascontiguousarray(a), self._type(a)], dest=dest, tag=22)

    def recv_at(self, out: np.ndarray) -> None:
        self.comm.world.Recv([out, self._type(out)], source=0, tag=22)
