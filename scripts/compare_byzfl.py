"""krum-mpi's rules against ByzFL 0.0.11's on the same float32 inputs, in the same process.

Optional: needs ByzFL (``pip install --no-deps byzfl==0.0.11``, plus scipy, which its aggregators
import). ByzFL's package __init__ also imports its training benchmark (torchvision); this script
loads only ``byzfl.aggregators``, so torchvision is not needed. Without ByzFL it says so and exits 0.

For every rule both libraries have, each shape: ByzFL's and ours on the same N(0, 1) float32 rows,
interleaved, the median of --repeats, and ByzFL's time over ours (higher: ours faster). f is
(n - 3) // 4 for every rule; MDA runs at n = 16 only (ByzFL enumerates its C(n, f) subsets).

  python scripts/compare_byzfl.py [--shapes 16x1e6,64x1e6,16x1e7,64x1e7] [--repeats 3] [--out byzfl.json]
"""
import argparse
import importlib.util
import json
import sys
import time
import types

import numpy as np

from krum_mpi import aggregators, native

# ours -> (ByzFL class name, its constructor arguments given f): the same definitions and options
SHARED = {
    "krum": ("Krum", lambda f: {"f": f}),
    "multi-krum": ("MultiKrum", lambda f: {"f": f}),
    "median": ("Median", lambda f: {}),
    "trimmed-mean": ("TrMean", lambda f: {"f": f}),
    "meamed": ("Meamed", lambda f: {"f": f}),
    "geometric-median": ("GeometricMedian", lambda f: {"nu": 0.1, "T": 3}),
    "centered-clipping": ("CenteredClipping", lambda f: {"tau": 100.0, "L": 1}),
    "mda": ("MDA", lambda f: {"f": f}),
}
MDA_MAX_N = 16


def load_byzfl():
    """ByzFL's aggregators module, or (None, reason)."""
    spec = importlib.util.find_spec("byzfl")
    if spec is None:
        return None, "ByzFL is not installed (pip install --no-deps byzfl==0.0.11; scipy too)"
    package = types.ModuleType("byzfl")  # its __init__ would import torchvision for its benchmark
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("byzfl", package)
    try:
        from byzfl.aggregators import aggregators as module
    except ImportError as exc:
        return None, f"ByzFL's aggregators do not import here: {exc}"
    return module, None


def median_time(fn, X, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(X)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def compare(module, rule, n, d, repeats, seed):
    f = (n - 3) // 4
    X = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    name, kwargs = SHARED[rule]
    theirs = getattr(module, name)(**kwargs(f))
    ours = aggregators.make(rule, n, f)
    aggregators.make(rule, n, f)(X[:, :1024].copy())  # warm-up: kernels loaded, threads started
    ours_s, theirs_s = [], []
    for _ in range(repeats):  # interleaved: load on the machine hits both alike
        ours_s.append(median_time(ours, X, 1))
        theirs_s.append(median_time(theirs, X, 1))
    o, t = float(np.median(ours_s)), float(np.median(theirs_s))
    return {"rule": rule, "n": n, "d": d, "f": f, "ours_s": o, "byzfl_s": t, "speedup": t / o}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="16x1e6,64x1e6,16x1e7,64x1e7")
    parser.add_argument("--rules", default=",".join(SHARED))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="compare_byzfl.json")
    args = parser.parse_args(argv)
    module, reason = load_byzfl()
    if module is None:
        print(f"compare_byzfl: skipped: {reason}")
        return 0
    try:
        shapes = [(int(a), int(float(b))) for a, b in (s.lower().split("x") for s in args.shapes.split(","))]
    except ValueError:
        print(f"compare_byzfl: --shapes takes NxD,NxD (e.g. 16x1e6), got {args.shapes!r}", file=sys.stderr)
        return 2
    unknown = [r for r in args.rules.split(",") if r not in SHARED]
    if unknown:
        print(f"compare_byzfl: {unknown[0]!r} is not a rule both libraries have: choose from {', '.join(SHARED)}",
              file=sys.stderr)
        return 2
    print(f"# kernels: {native.status()}; ByzFL 0.0.11, same process, median of {args.repeats}")
    rows = []
    for n, d in shapes:
        for rule in args.rules.split(","):
            if rule == "mda" and n > MDA_MAX_N:
                continue
            row = compare(module, rule, n, d, args.repeats, args.seed)
            rows.append(row)
            print(f"{rule:18s} n={n:<3d} d={d:.0e} f={row['f']:<2d} ours {row['ours_s']*1e3:9.1f} ms  "
                  f"ByzFL {row['byzfl_s']*1e3:10.1f} ms  ours faster x{row['speedup']:7.1f}", flush=True)
    with open(args.out, "w") as fh:
        json.dump({"kernels": native.status(), "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
