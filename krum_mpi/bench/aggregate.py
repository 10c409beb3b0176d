"""``krum-mpi bench``: micro-benchmarks of the aggregation rules against the machine's floors.

    krum-mpi bench aggregate [--rules R,...] [--n 16,64] [--d 1e7] [--f quarter|max|INT]
                             [--input gaussian|near-tie|mirror|simplex|sparse]
                             [--device cpu|gpu] [--warmup 1] [--repeats 5] [--out FILE.h5|.json|.csv]
    krum-mpi bench gpu-check [--n 64] [--d 2.5e7]

``aggregate`` times every rule on the same random float32 input (warm-up, then repetitions; min and
median; device synchronisation on GPU) and, in the same run, measures the floors:
  read  - the fastest full read of the same n*d*4 bytes (a BLAS ``ones @ X``, a column sum, and
          column sums split over the CPU threads);
  gemm  - the float32 GEMM rate of a large square product.
A rule's floor is one read for coordinate-wise and averaging rules, and for the distance-based ones
(Krum, Multi-Krum, Bulyan, MDA, NNM) the larger of one read and n^2*d flops at the GEMM rate. The
table reports each time as a multiple of its floor and the peak extra memory (tracemalloc, CPU) as
a share of the input; then the distance kernel, and the Krum and Multi-Krum selections given it as
an argument, are timed against the same with a direct pair loop as the kernel (``--pairloop-n``,
``--pairloop-d``; by default the largest n asked, at most 64, and the smallest d asked, at most
10^6, so a small run stays small). Machine state goes with the figures: CPU model, cores, load
average before and after, BLAS and its kernel (threadpoolctl), threads, GPU model. The file format:
``krum_mpi.bench.schema``.

``--input`` other than gaussian then times every rule again on a crafted input of the same shape
(``measure.craft_input``: the near-tie attack's one-ulp clones of a row in the last f rows, their
mirror pairs, a simplex of exactly equal distances, sparse +-1 rows) and prints, per rule, the
crafted-input time over the honest-input time (``x_honest``) with the distances each recomputed:
the price of exact decisions when the input is built to make them expensive.

``gpu-check`` runs every rule's CuPy path against its NumPy path on random and adversarial inputs,
then times Krum at n = 64, d = 2.5e7 (ResNet-50 scale) on the GPU.
"""
import argparse
import contextlib
import math
import os
import sys
from pathlib import Path

import numpy as np

import krum_mpi.aggregators as agg
from krum_mpi.attacks.blind import blinding_magnitude
from . import schema as benchfile
from krum_mpi.aggregators.distances import Distances, sq_distances
from krum_mpi.aggregators.mda import MAX_SUBSETS
from krum_mpi.backend import namespace, resolve_device
from .gpu import gpu_check
from .measure import (INPUTS, blas_summary, craft_input, gemm_rate, kernel_summary, machine_state, peak_extra_bytes,
                      random_input, read_floor, rule_options, timed)
from krum_mpi.errors import ConfigError, KrumMPIError
from ..run.progress import Progress

DISTANCE_RULES = {"krum", "multi-krum", "bulyan", "mda"}
BLINDED_RULES = ("krum", "multi-krum", "bulyan")  # also timed on the blinded input
DEFAULT_RULES = ["average", "krum", "multi-krum", "median", "trimmed-mean", "meamed", "geometric-median",
                 "bulyan", "centered-clipping", "mda", "nnm+average"]


# -- helpers --------------------------------------------------------------------------------------

def parse_list(text, kind, what):
    try:
        values = [float(v) if kind is int else kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{what} takes a comma-separated list, got {text[:80]!r}") from None
    if kind is int:   # 1e7 is welcome, 6.7 or inf is not (int() would truncate or fail)
        bad = [v for v in values if not math.isfinite(v) or v != int(v) or v < 1]
        if bad:
            raise ConfigError(f"--{what} takes positive integers (1e7 is fine), got {bad[0]!r}")
        values = [int(v) for v in values]
    return values


INPUT_COPIES = 3   # the input rows, a rule's (n, d) workspace or blinded copy, and its output and sums


def check_sizes(ns, ds, device: str, available: float | None = None) -> None:
    """Refuse (one line) a benchmark whose input rows cannot fit in memory, before any is made."""
    if available is None:
        from ..run.preflight import available_memory

        available = available_memory() if device == "cpu" else _gpu_memory()
    n, d = max(ns), max(ds)
    need = 4.0 * n * d * INPUT_COPIES + 32.0 * n * n
    if need > available:
        raise ConfigError(f"--n {n} --d {d:.3g} needs about {need / 2**30:.3g} GiB ({n} float32 rows of d = {d:.3g}, "
                          f"x{INPUT_COPIES}) but {available / 2**30:.3g} GiB is available on the {device}: "
                          "lower --d or --n")


def _gpu_memory() -> float:
    try:
        import cupy
        return float(cupy.cuda.Device().mem_info[0])
    except Exception:   # no CuPy or no device: resolve_device has said so already
        return float("inf")


def max_f(rule, n):
    """The largest f the rule accepts at n (MDA: also within its combinatorial limit)."""
    base = rule.split("+")[-1]
    if base in ("krum", "multi-krum"):
        return max(0, (n - 3) // 2)
    if base == "bulyan":
        return max(0, (n - 3) // 4)
    if base == "mda":
        f = max(0, (n - 1) // 2)
        while f > 0 and math.comb(n, f) > MAX_SUBSETS:
            f -= 1
        return f
    if base in ("median", "trimmed-mean", "meamed", "geometric-median"):
        return max(0, (n - 1) // 2)
    return n - 1


def choose_f(rule, n, policy):
    """f for one rule: 'quarter' = (n-3)//4 (valid for every rule, Bulyan's bound), 'max' = the
    rule's own bound, an int = that, each capped by the rule's bound."""
    if policy == "quarter":
        wanted = max(0, (n - 3) // 4)
    elif policy == "max":
        wanted = n
    else:
        wanted = int(policy)
    f = min(wanted, max_f(rule, n))
    if rule.split("+")[-1] == "mda":
        f = min(f, 2)  # MDA's exact search grows like C(n, f): keep the benchmark bounded
    return f


def pair_loop_sq_distances(X):
    """The direct implementation: one subtraction and one dot product per pair of rows."""
    n = X.shape[0]
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            diff = X[i] - X[j]
            dist[i, j] = dist[j, i] = float(diff @ diff)
    return dist


# -- bench aggregate ------------------------------------------------------------------------------

def bench_aggregate(args):
    device = resolve_device(args.device)
    xp = namespace(device)
    rules = parse_list(args.rules, str, "rules") if args.rules else DEFAULT_RULES
    for rule in rules:
        agg.make(rule, 64, 0, **rule_options(rule))  # unknown names fail here, before any data is made
    ns = parse_list(args.n, int, "n")
    ds = parse_list(args.d, int, "d")
    if not ns or not ds:
        raise ConfigError("--n and --d each take at least one value")
    check_sizes(ns, ds, device)
    if args.f not in ("quarter", "max") and not args.f.isdigit():
        raise ConfigError(f"--f takes 'quarter', 'max' or an integer, got {args.f!r}")
    benchfile.check_suffix(args.out)
    # the pair-loop comparison is sized to what was asked: a small run stays small
    if args.pairloop_n is None:
        args.pairloop_n = min(64, max(ns))
    args.pairloop_d = min(int(1e6), min(ds)) if args.pairloop_d is None else args.pairloop_d
    n_pairloop = len(pair_loop_cases(rules, args.pairloop_n, 1))
    per_input = len(rules) * (1 if args.input == "gaussian" else 2) + len([r for r in rules if r in BLINDED_RULES])
    progress = Progress(len(ds) * len(ns) * per_input + (n_pairloop if args.pairloop_n and device == "cpu" else 0),
                        "bench", unit="timing", quiet=args.quiet)

    state = machine_state(device)
    rate, gemm_size = gemm_rate(xp, args.warmup, max(10, 2 * args.repeats))
    report = {"command": "krum-mpi bench " + " ".join(args.argv), "machine": state,
              "gemm": {"flops_per_s": rate, "size": gemm_size}, "floors": [], "results": [], "pairloop": []}
    print(f"# {state['cpu_model']}, {state['cores']} cores, device {device}"
          + (f" ({state.get('gpu_model')})" if device == "gpu" else "")
          + f"; load average {state['loadavg_before'][0]:.2f}", flush=True)
    print(f"# float32 GEMM {rate / 1e9:.0f} GFLOP/s ({gemm_size}^3); BLAS {blas_summary(state)}", flush=True)
    print(f"# kernels: {kernel_summary(state['native_kernels'], device)}", flush=True)

    for d in ds:
        for n in ns:
            X = random_input(xp, n, d, args.seed)
            # floors are minima: more repetitions (they are short) make a busy moment less likely to stick
            read_s, read_parts = read_floor(xp, X, args.warmup, max(10, 2 * args.repeats))
            gram_s = n * n * d / rate
            # not a floor: the textbook float32 Gram (X @ X.T, BLAS threads), for comparison
            plain_s = min(timed(lambda: X @ X.T, xp, args.warmup, args.repeats))
            report["floors"].append({"n": n, "d": d, "read_s": read_s, "read_gb_per_s": X.nbytes / read_s / 1e9,
                                     "gram_s": gram_s, "plain_gram_s": plain_s, **read_parts})
            print(f"# n={n} d={d:.0e}: read floor {read_s * 1e3:.1f} ms ({X.nbytes / read_s / 1e9:.1f} GB/s), "
                  f"n^2 d at the GEMM rate {gram_s * 1e3:.1f} ms; plain float32 X @ X.T "
                  f"{plain_s * 1e3:.1f} ms (x{plain_s / max(read_s, gram_s):.2f})", flush=True)
            honest = {}
            for rule in rules:
                row = bench_rule(rule, X, n, d, args, xp, read_s, gram_s, device)
                honest[rule] = row
                report["results"].append(row)
                print(format_row(row), flush=True)
                progress.update(progress.done + 1, rule=rule, n=n)
            with blinded(X):  # the cost of certainty when an attacker blinds the float32 products
                for rule in [r for r in rules if r in BLINDED_RULES]:
                    row = bench_rule(rule, X, n, d, args, xp, read_s, gram_s, device, "blinded")
                    report["results"].append(row)
                    print(format_row(row), flush=True)
                    progress.update(progress.done + 1, rule=rule, n=n)
            if args.input != "gaussian":
                X = crafted_rows(X, honest, rules, n, d, args, xp, read_s, gram_s, device, report, progress)
            del X

    if args.pairloop_n and device == "cpu":
        report["pairloop"] = bench_pair_loop(rules, args, progress)
    progress.close()
    state["loadavg_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    benchfile.write(report, Path(args.out))
    print(f"# load average after {state['loadavg_after'][0]:.2f}; written to {args.out}", flush=True)
    return 0


def crafted_rows(X, honest, rules, n, d, args, xp, read_s, gram_s, device, report, progress):
    """Every rule again on the ``args.input`` family of the same shape (built in place over X; the
    rows that depend on f are rebuilt per distinct f), each row with x_honest: its min_ms over the
    same rule's on the gaussian input. Returns the array last used."""
    by_f = {}
    for rule in rules:
        by_f.setdefault(choose_f(rule, n, args.f), []).append(rule)
    for f, group in by_f.items():
        X[...] = random_input(xp, n, d, args.seed)
        craft_input(X, args.input, f, args.seed)
        for rule in group:
            row = bench_rule(rule, X, n, d, args, xp, read_s, gram_s, device, args.input)
            row["x_honest"] = row["min_ms"] / honest[rule]["min_ms"]
            report["results"].append(row)
            print(format_row(row) + f"  x{row['x_honest']:.2f} of honest (recomputed {honest[rule]['recomputed']} "
                  f"-> {row['recomputed']})", flush=True)
            progress.update(progress.done + 1, rule=rule, n=n)
    return X


@contextlib.contextmanager
def blinded(X):
    """X with row 0 at the blind attack's magnitude and row 1 at -1000 (in place, restored after)."""
    saved = X[:2].copy()
    X[0] = blinding_magnitude(X.shape[1])
    X[1] = -1000.0
    try:
        yield X
    finally:
        X[:2] = saved


def bench_rule(rule, X, n, d, args, xp, read_s, gram_s, device, input_name="gaussian"):
    f = choose_f(rule, n, args.f)
    aggregator = agg.make(rule, n, f, **rule_options(rule))
    times = timed(lambda: aggregator(X), xp, args.warmup, args.repeats)
    recomputed = aggregator(X).recomputed
    distance_based = rule.split("+")[-1] in DISTANCE_RULES or "nnm" in rule.split("+")
    floor_s = max(read_s, gram_s) if distance_based else read_s
    peak = None
    if device == "cpu" and not args.no_memory:
        peak = peak_extra_bytes(lambda: aggregator(X))
    best = min(times)
    return {"rule": rule, "device": device, "input": input_name, "n": n, "d": d, "f": f,
            "recomputed": int(recomputed), "min_ms": best * 1e3,
            "median_ms": float(np.median(times)) * 1e3, "floor": "max(read, gram)" if distance_based else "read",
            "floor_ms": floor_s * 1e3, "x_floor": best / floor_s, "gb_per_s": X.nbytes / best / 1e9,
            "peak_extra_pct": None if peak is None else 100.0 * peak / X.nbytes, "x_honest": None,
            "times_ms": [t * 1e3 for t in times]}


def pair_loop_distances(X):
    """The direct pair loop dressed as the distance kernel's result."""
    finite = np.isfinite(X).all(axis=1)
    return Distances(pair_loop_sq_distances(X), finite, np.zeros((X.shape[0], X.shape[0])))


def pair_loop_cases(rules, n, f):
    """What runs on either distance kernel, each taking the kernel as an explicit argument: the
    kernel itself (every distance-based rule's n^2 d part), and the Krum and Multi-Krum selections."""
    cases = {}
    if any(r.split("+")[-1] in DISTANCE_RULES or "nnm" in r.split("+") for r in rules):
        cases["sq_distances"] = lambda X, kernel: kernel(X)
    if "krum" in rules:
        cases["krum"] = lambda X, kernel: agg.krum_select(X, f, m=1, distances=kernel(X))
    if "multi-krum" in rules:
        cases["multi-krum"] = lambda X, kernel: agg.krum_select(X, f, m=n - f, distances=kernel(X))
    return cases


def bench_pair_loop(rules, args, progress=None):
    """The distance kernel, and the selections that take it as an argument, against the pair loop."""
    n, d = args.pairloop_n, int(float(args.pairloop_d))
    X = random_input(np, n, d, args.seed)
    f = choose_f("krum", n, args.f)
    rows = []
    loop_repeats = max(1, min(args.repeats, 3))
    print(f"# pair loop, n={n} d={d:.0e} f={f}: the distance kernel and the selections built on it, "
          f"then the same with the direct pair loop as the kernel", flush=True)
    for name, case in pair_loop_cases(rules, n, f).items():
        best = min(timed(lambda: case(X, sq_distances), np, args.warmup, args.repeats))
        loop = min(timed(lambda: case(X, pair_loop_distances), np, 0, loop_repeats))
        rows.append({"rule": name, "n": n, "d": d, "f": f, "rule_ms": best * 1e3, "pairloop_ms": loop * 1e3,
                     "speedup": loop / best})
        print(f"  {name:18s} {best * 1e3:9.1f} ms   pair loop {loop * 1e3:9.1f} ms   "
              f"{loop / best:6.1f}x faster", flush=True)
        if progress is not None:
            progress.update(progress.done + 1, rule=name, n=n)
    return rows


def format_row(row):
    peak = "" if row["peak_extra_pct"] is None else f"{row['peak_extra_pct']:6.2f}%"
    rule = row["rule"] + ("" if row["input"] == "gaussian" else f" [{row['input']}]")
    return (f"  {rule:18s} n={row['n']:<3d} d={row['d']:.0e} f={row['f']:<3d} "
            f"min {row['min_ms']:9.1f} ms  median {row['median_ms']:9.1f} ms  "
            f"floor[{row['floor']}] {row['floor_ms']:8.1f} ms  x{row['x_floor']:6.2f}  "
            f"{row['gb_per_s']:6.1f} GB/s  mem {peak}  recomputed {row['recomputed']}")


# -- command line ---------------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(prog="krum-mpi bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("aggregate", help="time the aggregation rules against the machine's floors")
    a.add_argument("--rules", default="", help=f"comma-separated rules (default: {','.join(DEFAULT_RULES)})")
    a.add_argument("--n", default="16,64", help="worker counts (default 16,64)")
    a.add_argument("--d", default="1e7", help="parameter counts (default 1e7)")
    a.add_argument("--f", default="quarter", help="declared f: quarter ((n-3)//4), max, or an int (default quarter)")
    a.add_argument("--input", default="gaussian", choices=list(INPUTS),
                   help="also time every rule on this crafted input and print its time over the gaussian "
                        "input's (default gaussian: honest rows only)")
    a.add_argument("--device", default="cpu", choices=["cpu", "gpu", "auto"])
    a.add_argument("--warmup", type=int, default=1)
    a.add_argument("--repeats", type=int, default=5)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--pairloop-n", type=int, default=None,
                   help="n of the pair-loop comparison (default: the largest --n, at most 64; 0: skip)")
    a.add_argument("--pairloop-d", default=None,
                   help="d of the pair-loop comparison (default: the smallest --d, at most 1e6)")
    a.add_argument("--quiet", action="store_true", help="no progress line")
    a.add_argument("--no-memory", action="store_true", help="skip the tracemalloc peak-memory pass")
    a.add_argument("--out", default="results/bench-aggregate.h5",
                   help="results file: .h5, .json or .csv (default results/bench-aggregate.h5)")
    g = sub.add_parser("gpu-check", help="CuPy path against NumPy path, then Krum at ResNet-50 scale")
    g.add_argument("--n", type=int, default=64)
    g.add_argument("--d", default="2.5e7")
    g.add_argument("--repeats", type=int, default=5)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "repeats", 1) < 1 or getattr(args, "warmup", 0) < 0:
        raise ConfigError("--repeats must be >= 1 and --warmup >= 0")
    try:
        if args.command == "aggregate":
            return bench_aggregate(args)
        return gpu_check(args)
    except ValueError as exc:  # a rule refused its parameters: a user error here
        raise ConfigError(str(exc)) from None


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KrumMPIError as exc:
        print(f"krum-mpi: error: {exc}", file=sys.stderr)
        sys.exit(2)
