"""Run under ``mpiexec -n R`` by test_sharded_mpi.py: every rank holds one uneven coordinate block of
each input, the sharded rules run across the ranks, rank 0 compares with the gathered rules and
prints one JSON line of failures (empty when everything matched)."""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from sharded_cases import F, RULES, close, gathered, inputs, same_selection  # noqa: E402

from krum_mpi.parallel import sharded  # noqa: E402
from krum_mpi.parallel.comm import Comm  # noqa: E402

WIDTHS = {1: [37], 2: [18, 19], 3: [1, 7, 29], 4: [10, 1, 13, 13]}


def main():
    comm = Comm(F * 0 + 11)
    bounds = np.concatenate([[0], np.cumsum(WIDTHS[comm.size])]).astype(np.int64)
    cols = slice(int(bounds[comm.rank]), int(bounds[comm.rank + 1]))
    failures = []
    for case, X in inputs().items():
        block = np.empty((X.shape[0], cols.stop - cols.start), dtype=np.float32)
        comm.alltoall_row_blocks(np.ascontiguousarray(X[list(comm.worker_range())]), bounds, block)
        if not np.array_equal(block, X[:, cols], equal_nan=True):
            failures.append(f"alltoall {case}")
        blocks = sharded.Blocks([block], comm.allgather_parts, comm.size)
        for rule in RULES:
            result = sharded.aggregate(rule, blocks, F, {})
            vector = np.zeros(X.shape[1], dtype=np.float32)
            vector[cols] = result.vectors[0]
            comm.allgatherv_params(vector, bounds)
            want, want_selected = gathered(rule, X)
            if not same_selection(rule, want_selected, result.selected):
                failures.append(f"{rule} {case}: selected {result.selected} vs gathered {want_selected}")
            if not close(want, vector, X):
                failures.append(f"{rule} {case}: aggregate differs by {np.nanmax(np.abs(want - vector))}")
    if comm.is_root:
        print(json.dumps({"ranks": comm.size, "failures": failures}))


main()
