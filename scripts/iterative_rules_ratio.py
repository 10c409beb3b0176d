"""Geometric median (3 iterations), centred clipping (1 iteration) and Krum against the read floor,
timed interleaved in one process (a busy machine slows all of them alike), minimum over repeats.

    python scripts/iterative_rules_ratio.py --n 16 --d 4e6 --repeats 7 --out ratio.json

Prints one line and writes the times and ratios to --out (JSON).
"""
import argparse
import json
import os
import time

import numpy as np

from krum_mpi import aggregators
from krum_mpi.bench.measure import native_read_sum


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--d", type=float, default=4e6)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/iterative-rules-ratio.json")
    args = parser.parse_args()
    n, d = args.n, int(args.d)
    X = np.random.default_rng(args.seed).standard_normal((n, d), dtype=np.float32)
    read = native_read_sum(X)
    if read is None:
        raise SystemExit("the compiled kernels are not built: python setup.py build_ext --inplace")
    f = (n - 3) // 4
    timed = {"read": read}
    for name in ("geometric-median", "centered-clipping", "krum"):
        timed[name] = (lambda agg: (lambda: agg(X)))(aggregators.make(name, n, f))
    best = {name: np.inf for name in timed}
    for _ in range(args.repeats):
        for name, fn in timed.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    ratios = {name: best[name] / best["read"] for name in timed if name != "read"}
    print(f"n={n} d={d:.0e}", " ".join(f"{k}={v:.2f}x" for k, v in ratios.items()),
          f"(read {best['read'] * 1e3:.1f} ms, load average {os.getloadavg()[0]:.1f})")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"n": n, "d": d, "f": f, "seconds": best, "x_read": ratios, "loadavg": os.getloadavg()}, fh, indent=1)


if __name__ == "__main__":
    main()
