"""Times the ways to give every rank a float32 vector of d = 10,041,354 (docs/performance.md,
"Sharded aggregation"): one Bcast from rank 0, Allgatherv in place and out of place of the ranks'
blocks, and one Bcast per block. Medians of 5, seconds, printed by rank 0:
    mpiexec -n 4 python scripts/bench_allgather.py
"""
import numpy as np, time
from mpi4py import MPI
w = MPI.COMM_WORLD; r = w.Get_rank(); P = w.Get_size()
d = 10_041_354
theta = np.ones(d, np.float32)
base, extra = divmod(d, P); widths = np.array([base + (p < extra) for p in range(P)]); displs = np.concatenate([[0], np.cumsum(widths)[:-1]])
def t(fn, k=5):
    ts = []
    for _ in range(k):
        w.Barrier(); t0 = time.perf_counter(); fn(); w.Barrier(); ts.append(time.perf_counter() - t0)
    return np.median(ts)
a = t(lambda: w.Bcast([theta, MPI.FLOAT], root=0))
b = t(lambda: w.Allgatherv(MPI.IN_PLACE, [theta, widths, displs, MPI.FLOAT]))
out = np.empty_like(theta)
c = t(lambda: w.Allgatherv([theta[displs[r]:displs[r]+widths[r]].copy(), MPI.FLOAT], [out, widths, displs, MPI.FLOAT]))
def bc():
    for q in range(P):
        w.Bcast([theta[displs[q]:displs[q]+widths[q]], MPI.FLOAT], root=q)
e = t(bc)
if r == 0: print(f"bcast {a:.3f}  allgatherv-inplace {b:.3f}  allgatherv {c:.3f}  P bcasts {e:.3f}")
