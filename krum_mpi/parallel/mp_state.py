"""Start, checkpoints and resume of a model-parallel run: no rank holds the whole parameter vector.

The checkpoint (``<out>.ckpt``, checkpoint.py's format) holds each shard as an array of its own:
``params.shard<s>`` (m_s,) for s < p (group 0's copies; every group holds the same shards) and,
with worker momentum, ``worker_momentum.shard<s>`` (n, m_s), whose rows come from the ranks
(g, s) of every group. Rank 0 writes each array as its pieces arrive, one piece at a time
(checkpoint.Streamed). At the end of a run the checkpoint is kept: it holds the final parameters
(results attribute ``final_params``), which a gathered results file would hold whole.

A resume reads and checks the checkpoint on rank 0 (as for every placement), then sends each
rank its shard and its workers' momentum rows. A checkpoint of another ``parallel.model`` is
refused in one line: the shards of one split are not the shards of another.
"""
from __future__ import annotations

import sys

import numpy as np

from ..run import checkpoint, resume
from ..errors import KrumMPIError, ResultsError
from ..run.steps import peak_rss_mib

PARAMS, MOMENTUM = "params.shard{}", "worker_momentum.shard{}"
PIECE = 1 << 22   # floats per message of a checkpoint (16 MiB): rank 0's receive buffer, whatever the shard size
LAYOUT = ("shard-major: shard s holds, layer by layer, its W piece (row-major) then its bias piece; "
          "even layers split W's columns (outputs), odd layers split W's rows (inputs), whose bias "
          "belongs to shard 0; model_parallel.ShardLayout.natural_index maps it to models.py's layout")


def check_layout(path, p: int) -> None:
    """Refuse, in one line, to resume results written under another parallel.model."""
    import h5py
    try:
        with h5py.File(path, "r") as h5:
            old = int(h5.attrs.get("parallel_model", 1))
    except (OSError, ValueError, TypeError):
        return   # a damaged file: resume.reopen says what is wrong with it
    if old != p:
        raise ResultsError(f"{path} was written with parallel.model = {old} but this run has parallel.model = {p}: "
                           f"its checkpoint holds the shards of that split; resume with --set parallel.model={old}, "
                           "or start over with --force instead of --resume")


def expected_arrays(grid, n: int, momentum: bool) -> dict:
    out = {PARAMS.format(s): ((m,), "float32") for s, m in enumerate(grid.layout.sizes)}
    if momentum:
        out.update({MOMENTUM.format(s): ((n, m), "float32") for s, m in enumerate(grid.layout.sizes)})
    return out


class ShardSource:
    """A checked checkpoint whose arrays rank 0 reads one at a time, to send them on (resume)."""

    def __init__(self, path, run_id: str, expected: dict):
        self.path, self.run_id, self.expected = path, run_id, expected

    def read(self, name: str) -> np.ndarray:
        return checkpoint.read(self.path, self.run_id, self.expected, select={name})[1][name]


def load(path, cfg, writer_args: tuple, grid, n: int):
    """resume.load for a model-parallel run (``cfg``: the run's Config): (writer, first step, a ShardSource
    or None). Every array's checksum is checked here, one array at a time, before any rank goes on;
    restore reads them again."""
    check_layout(path, grid.p)
    opt = cfg.optimizer
    expected = expected_arrays(grid, n, opt.momentum > 0 and opt.momentum_at == "worker")
    writer, first, arrays = resume.load(path, cfg.to_dict(), writer_args, sum(grid.layout.sizes), expected, (), {},
                                        final_in_checkpoint=True, select=())
    if arrays is None:
        return writer, first, None
    source = ShardSource(checkpoint.path_for(path), writer.run_id, expected)
    for name in expected:
        source.read(name)
    return writer, first, source


def start(s, cfg, out_path, comm, resume_run: bool, blas_threads: int, theta, workers, work, groups,
          open_results, init_rng):
    """Collective, as train._start: (work, writer, store, first step); writer and store on rank 0 only."""
    hostnames = comm.hostnames()
    grid, steps = s.grid, cfg.run.steps
    writer = store = arrays = None
    if comm.is_root:
        error = None
        try:
            writer, first, arrays = open_results(s, cfg, out_path, comm, resume_run, blas_threads, hostnames, work)
        except KrumMPIError as exc:
            error = exc
        first = comm.bcast_flag(-1 if error else first)
        if error:
            raise error
        store = checkpoint.CheckpointStore(checkpoint.path_for(out_path), writer.run_id)
        if arrays and first < steps:
            store.last_step = first - 1
        writer.extra_attrs.update(parallel_model=grid.p, model_shard_sizes=list(grid.layout.sizes),
                                  params_layout=LAYOUT)
    else:
        first = comm.bcast_flag(0)
        if first < 0:
            raise SystemExit(2)
    if comm.bcast_flag(1 if arrays else 0):
        restore(comm, groups, grid, arrays, theta, workers.momentum if 0 < first < steps else None)
    else:
        grid.layout.init_shard(init_rng, grid.shard, out=theta)
    return work, writer, store, first


def restore(comm, groups, grid, source: ShardSource, theta, momentum) -> None:
    """Rank 0 reads the checkpoint one array at a time and sends each rank (g, s) shard s and its
    workers' momentum rows of it, in 16 MiB pieces; it never holds two shards of the parameters."""
    if not comm.is_root:
        recv_pieces(groups.recv_at, theta)
        if momentum is not None:
            recv_pieces(groups.recv_at, momentum)
        return
    names = [PARAMS] + ([MOMENTUM] if momentum is not None else [])
    try:
        for name in names:
            for s in range(grid.p):
                whole = source.read(name.format(s))
                for g in range(grid.groups):
                    part = whole if name == PARAMS else whole[int(grid.displs[g]):int(grid.displs[g] + grid.counts[g])]
                    if g == 0 and s == 0:
                        (theta if name == PARAMS else momentum)[...] = part
                    else:
                        send_pieces(lambda piece, r=g * grid.p + s: groups.send_from_root(piece, r), part)
                whole = None
    except KrumMPIError as exc:   # it changed on disk since it was checked; the other ranks wait in a receive
        print(f"krum-mpi: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        comm.abort(2)


class Incoming:
    """Rank 0's checkpoint arrays, each received piece by piece from the ranks that hold it, in one
    fixed order (the order every other rank sends in); ``drain`` takes whatever a failed write left."""

    def __init__(self, groups, grid, theta, momentum, n: int):
        self.groups = groups
        sizes, p = grid.layout.sizes, grid.p
        self.arrays, self.pending = {}, []
        for s in range(p):
            self._add(PARAMS.format(s), (sizes[s],), [(s, sizes[s], theta)])
        if momentum is not None:
            for s in range(p):
                self._add(MOMENTUM.format(s), (n, sizes[s]),
                          [(g * p + s, int(k) * sizes[s], momentum) for g, k in enumerate(grid.counts)])
        self.taken = 0
        self.buffer = np.empty(min(PIECE, max([count for _, count in self.pending] + [0])), dtype=np.float32)

    def _add(self, name, shape, sources) -> None:
        self.arrays[name] = checkpoint.Streamed(shape, np.float32, lambda: self._pieces(sources))
        self.pending += [(src, len(chunk)) for src, size, _ in sources if src != 0 for chunk in pieces_of(size)]

    def _receive(self):
        src, count = self.pending[self.taken]
        out = self.buffer[:count]
        self.groups.recv_from(src, out)
        self.taken += 1
        return out

    def _pieces(self, sources):
        for src, size, own in sources:
            if src == 0:
                yield own
            else:
                for _ in pieces_of(size):
                    yield self._receive()

    def drain(self) -> None:
        while self.taken < len(self.pending):
            self._receive()


def pieces_of(size: int):
    """The index ranges of one array's messages to rank 0 (sender and receiver cut alike)."""
    return [range(i, min(size, i + PIECE)) for i in range(0, size, PIECE)]


def send_pieces(send, a: np.ndarray) -> None:
    flat = np.ascontiguousarray(a).reshape(-1)
    for chunk in pieces_of(flat.size):
        send(flat[chunk.start:chunk.stop])


def recv_pieces(recv, out: np.ndarray) -> None:
    flat = out.reshape(-1)   # a view: out is contiguous
    for chunk in pieces_of(flat.size):
        recv(flat[chunk.start:chunk.stop])


def saver(comm, groups, grid, workers, writer, store, theta, all_agree, n: int):
    """The run's ``save(step_done, status)`` (train._saver's job): collective."""
    momentum = workers.momentum

    def save(step_done: int, status: str, peak_rss=None) -> None:
        final = status == "complete"
        rss = comm.gather_values(peak_rss_mib())
        if not comm.is_root:
            if grid.group_id == 0:
                send_pieces(groups.send_to_root, theta)
            if momentum is not None:
                send_pieces(groups.send_to_root, momentum)
            return all_agree(comm, None)
        writer.extra_attrs["peak_rss_mib"] = rss     # per rank, at this flush
        incoming = Incoming(groups, grid, theta, momentum, n)

        def write():
            try:
                writer.flush("running" if final else status)   # the rows first: the checkpoint never runs ahead
                store.write(step_done, incoming.arrays, rows=writer.row_digests())
                writer.note_checkpoint(step_done)
                if final:
                    writer.extra_attrs["final_params"] = (f"{store.path.name}: arrays params.shard0 .. "
                                                          f"params.shard{grid.p - 1} (attribute params_layout)")
                    writer.flush(status)
                    # the files that alternated are spare now (results.py removes its own when it keeps
                    # the final parameters; here the checkpoint keeps them under <out>.ckpt, a hard link)
                    for spare in (*writer.spares, *store.slots):
                        spare.unlink(missing_ok=True)
            finally:
                incoming.drain()

        all_agree(comm, write)

    return save
