"""Crafted inputs against honest ones: what exactness costs when a Byzantine worker aims at it.

For each rule and shape, times the rule on honest N(0, 1) rows and on the same rows crafted (same
process, interleaved, median of --repeats), and prints the crafted/honest ratio (wall clock, and
CPU time of the process: steadier on a shared machine) with the distances recomputed and the
refinement passes (each reads the rows it involves once). Inputs:
  gaussian  i.i.d. N(0, 1) float32 rows (the honest reference)
  near-tie  the last f rows are 1-ulp clones of row 0, each nudged up in its own coordinate
  mirror    the last f rows are +-1-ulp clones of row 0 in one coordinate, alternating the sign
  simplex   every row is row 0 nudged by 1 ulp in its own coordinate (all rows close together,
            equal distances wherever the nudged values share a binade)
  sparse    rows with 1% non-zero N(0, 1) values, the rest 0 (many rows close together)
f is (n - 3) // 4 (Bulyan's bound, valid for every rule), 2 for MDA (its search grows like C(n, f)).

  python scripts/bench_crafted.py [--shapes 16x1e6,32x1e5,64x1e5] [--rules krum,...] [--inputs ...]
       [--repeats 3] [--seed 0] [--out bench_crafted.json]
  python scripts/bench_crafted.py --versus-krum --shapes 16x1e7,64x1e7 [--rules multi-krum,bulyan]
       honest rows only: each rule's time over Krum's (interleaved, same rows, same process; wall
       clock, and the process's CPU time)
Writes the figures to --out (JSON) as well.
"""
import argparse
import json
import sys
import time

import numpy as np

from krum_mpi import aggregators, native
from krum_mpi.aggregators.certify import counting

RULES = ("krum", "multi-krum", "bulyan", "mda", "nnm+krum")
INPUTS = ("near-tie", "mirror", "simplex", "sparse")
STRIDE = 7919  # coordinates nudged: spread over the row, not adjacent


def nudged(row, column, up):
    out = row.copy()
    out[column] = np.nextafter(out[column], np.float32(np.inf if up else -np.inf))
    return out


def make_input(name, n, d, f, rng):
    """The (n, d) float32 rows of one input family (module doc)."""
    if name == "sparse":
        X = np.zeros((n, d), dtype=np.float32)
        mask = rng.random((n, d)) < 0.01
        X[mask] = rng.standard_normal(int(mask.sum()), dtype=np.float32)
        return X
    X = rng.standard_normal((n, d), dtype=np.float32)
    if name == "gaussian":
        return X
    if name == "simplex":
        return np.stack([nudged(X[0], (k * STRIDE) % d, True) for k in range(n)])
    for k in range(f):
        column = (k * STRIDE) % d if name == "near-tie" else 0
        X[n - f + k] = nudged(X[0], column, name == "near-tie" or k % 2 == 0)
    return X


def choose_f(rule, n):
    return 2 if rule == "mda" else (n - 3) // 4


def timed(rule, X, f):
    agg = aggregators.make(rule, X.shape[0], f)
    with counting() as box:
        start, cpu = time.perf_counter(), time.process_time()
        result = agg(X)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return seconds, box[0], box[1], cpu


def measure(rule, n, d, input_name, repeats, seed):
    f = choose_f(rule, n)
    honest = make_input("gaussian", n, d, f, np.random.default_rng(seed))
    crafted = make_input(input_name, n, d, f, np.random.default_rng(seed))
    times = {"honest": [], "crafted": []}
    cpu = {"honest": [], "crafted": []}
    counts = {}
    for _ in range(repeats):  # interleaved: machine load hits both alike
        for label, X in (("honest", honest), ("crafted", crafted)):
            seconds, recomputed, passes, cpu_s = timed(rule, X, f)
            times[label].append(seconds)
            cpu[label].append(cpu_s)
            counts[label] = (recomputed, passes)
    h, c = float(np.median(times["honest"])), float(np.median(times["crafted"]))
    cpu_ratio = float(np.median(cpu["crafted"])) / max(float(np.median(cpu["honest"])), 1e-9)
    return {"rule": rule, "n": n, "d": d, "f": f, "input": input_name, "honest_s": h, "crafted_s": c,
            "ratio": c / h, "cpu_ratio": cpu_ratio, "recomputed": counts["crafted"][0], "passes": counts["crafted"][1],
            "honest_recomputed": counts["honest"][0], "honest_passes": counts["honest"][1]}


def versus_krum(rules, n, d, repeats, seed):
    """Each rule's median time over Krum's on the same honest rows, runs interleaved."""
    f = (n - 3) // 4
    X = make_input("gaussian", n, d, f, np.random.default_rng(seed))
    times = {rule: [] for rule in ("krum", *rules)}
    cpu = {rule: [] for rule in times}
    counts = {}
    for _ in range(repeats):
        for rule in times:
            seconds, recomputed, passes, cpu_s = timed(rule, X, f)
            times[rule].append(seconds)
            cpu[rule].append(cpu_s)
            counts[rule] = (recomputed, passes)
    krum, krum_cpu = float(np.median(times["krum"])), float(np.median(cpu["krum"]))
    return [{"rule": rule, "n": n, "d": d, "f": f, "seconds": float(np.median(times[rule])),
             "krum_s": krum, "ratio": float(np.median(times[rule])) / krum,
             "cpu_ratio": float(np.median(cpu[rule])) / max(krum_cpu, 1e-9), "recomputed": counts[rule][0],
             "passes": counts[rule][1]} for rule in rules]


def parse_shapes(text):
    shapes = []
    for part in text.split(","):
        n, d = part.lower().split("x")
        shapes.append((int(n), int(float(d))))
    return shapes


def run_versus_krum(args, shapes):
    default = args.rules == ",".join(RULES)
    rules = ["multi-krum", "bulyan"] if default else [r for r in args.rules.split(",") if r != "krum"]
    rows = []
    for n, d in shapes:
        for row in versus_krum(rules, n, d, args.repeats, args.seed):
            rows.append(row)
            print(f"{row['rule']:10s} n={n:<3d} d={d:.0e} f={row['f']:<2d} honest {row['seconds']*1e3:8.1f} ms"
                  f"  krum {row['krum_s']*1e3:8.1f} ms  ratio {row['ratio']:5.2f} (cpu {row['cpu_ratio']:5.2f})"
                  f"  recomputed {row['recomputed']} in {row['passes']} passes", flush=True)
    with open(args.out, "w") as fh:
        json.dump({"kernels": native.status(), "versus_krum": rows}, fh, indent=1)
    return 0


def run_crafted(args, shapes):
    rows = []
    for n, d in shapes:
        for rule in args.rules.split(","):
            for input_name in args.inputs.split(","):
                row = measure(rule, n, d, input_name, args.repeats, args.seed)
                rows.append(row)
                print(f"{rule:10s} n={n:<3d} d={d:.0e} f={row['f']:<2d} {input_name:9s}"
                      f" honest {row['honest_s']*1e3:8.1f} ms  crafted {row['crafted_s']*1e3:8.1f} ms"
                      f"  ratio {row['ratio']:5.2f} (cpu {row['cpu_ratio']:5.2f})"
                      f"  recomputed {row['recomputed']:5d} in {row['passes']} passes"
                      f" (honest {row['honest_recomputed']} in {row['honest_passes']})", flush=True)
    with open(args.out, "w") as fh:
        json.dump({"kernels": native.status(), "rows": rows}, fh, indent=1)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="16x1e6,32x1e5,64x1e5")
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--inputs", default=",".join(INPUTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_crafted.json")
    parser.add_argument("--versus-krum", action="store_true", help="honest rows: each rule's time over Krum's")
    args = parser.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes)
    except ValueError:
        print(f"bench_crafted: --shapes takes NxD,NxD (e.g. 16x1e6), got {args.shapes!r}", file=sys.stderr)
        return 2
    unknown = [i for i in args.inputs.split(",") if i not in INPUTS]
    if unknown:
        print(f"bench_crafted: unknown input {unknown[0]!r}: choose from {', '.join(INPUTS)}", file=sys.stderr)
        return 2
    print(f"# kernels: {native.status()}")
    if args.versus_krum:
        return run_versus_krum(args, shapes)
    rows = run_crafted(args, shapes)
    worst = max(rows, key=lambda r: r["ratio"]) if rows else None
    if worst:
        print(f"# worst ratio {worst['ratio']:.2f}: {worst['rule']} n={worst['n']} d={worst['d']:.0e} {worst['input']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
