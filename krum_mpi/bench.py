"""``krum-mpi bench``: micro-benchmarks of the aggregation rules against the machine's floors.

    krum-mpi bench aggregate [--rules R,...] [--n 16,64] [--d 1e7] [--f quarter|max|INT]
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
a share of the input; then each distance-based rule is timed against the same rule with a direct
pair loop as its distance kernel (``--pairloop-n``, ``--pairloop-d``; by default the largest n asked, at
most 64, and the smallest d asked, at most 10^6, so a small run stays small). Machine state goes with the figures: CPU model, cores, load
average before and after, BLAS and its kernel (threadpoolctl), threads, GPU model.

``gpu-check`` runs every rule's CuPy path against its NumPy path on random and adversarial inputs,
then times Krum at n = 64, d = 2.5e7 (ResNet-50 scale) on the GPU.
"""
import argparse
import contextlib
import csv
import importlib
import json
import math
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path
from unittest import mock

import numpy as np

import krum_mpi.aggregators as agg
from krum_mpi import native
from krum_mpi.aggregators.distances import Distances
from krum_mpi.aggregators.mda import MAX_SUBSETS
from krum_mpi.aggregators.parallel import column_ranges, cpu_budget, run_ranges
from krum_mpi.backend import namespace, resolve_device, synchronize
from krum_mpi.errors import ConfigError, DeviceError, KrumMPIError
from krum_mpi.progress import Progress

DISTANCE_RULES = {"krum", "multi-krum", "bulyan", "mda"}
DEFAULT_RULES = ["average", "krum", "multi-krum", "median", "trimmed-mean", "meamed", "geometric-median",
                 "bulyan", "centered-clipping", "mda", "nnm+average"]
COLUMNS = ["rule", "n", "d", "f", "min_ms", "median_ms", "floor", "floor_ms", "x_floor", "gb_per_s",
           "peak_extra_pct", "pairloop_speedup"]


# -- helpers --------------------------------------------------------------------------------------

def parse_list(text, kind, what):
    try:
        return [kind(float(v)) if kind is int else kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{what} takes a comma-separated list, got {text!r}") from None


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


def timed(fn, xp, warmup, repeats):
    """Seconds of each of ``repeats`` calls after ``warmup`` calls, with device synchronisation."""
    for _ in range(warmup):
        fn()
    synchronize(xp)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(xp)
        times.append(time.perf_counter() - start)
    return times


def peak_extra_bytes(fn):
    """Peak bytes allocated during fn() beyond what was allocated before (NumPy reports to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def random_input(xp, n, d, seed):
    if xp is np:
        return np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    return xp.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)


def pair_loop_sq_distances(X):
    """The direct implementation: one subtraction and one dot product per pair of rows."""
    n = X.shape[0]
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            diff = X[i] - X[j]
            dist[i, j] = dist[j, i] = float(diff @ diff)
    return dist


# -- floors and machine state ---------------------------------------------------------------------

def read_floor(xp, X, warmup, repeats):
    """Fastest full read of X: a BLAS ``ones @ X``, a column sum, or column sums split over the
    CPU threads (as the rules split their work)."""
    ones = xp.ones(X.shape[0], dtype=X.dtype)
    by_gemv = min(timed(lambda: ones @ X, xp, warmup, repeats))
    by_sum = min(timed(lambda: X.sum(axis=0), xp, warmup, repeats))

    @cpu_budget
    def threaded_sums():
        run_ranges(lambda a, b: X[:, a:b].sum(axis=0), column_ranges(xp, X.shape[1], align=1 << 16))

    by_threads = min(timed(threaded_sums, xp, warmup, repeats))
    parts = {"gemv_s": by_gemv, "sum_s": by_sum, "threaded_sum_s": by_threads}
    read_sum = native_read_sum(X) if xp is np else None
    if read_sum is not None:  # the compiled kernels read faster than NumPy: so must the floor
        parts["native_sum_s"] = min(timed(read_sum, xp, warmup, repeats))
    return min(parts.values()), parts


def native_read_sum(X):
    """A threaded compiled sum over X's bytes (krum_mpi.native's read kernel), or None."""
    lib = native.library("probe")
    if lib is None or not X.flags.c_contiguous or X.dtype != np.float32:
        return None

    @cpu_budget
    def threaded():
        run_ranges(lambda a, b: lib.krum_read_sum(X.ctypes.data + 4 * a, b - a),
                   column_ranges(np, X.size, align=1 << 16))

    return threaded


def gemm_rate(xp, warmup, repeats):
    """float32 GEMM rate (flop/s) of a large square product on this device."""
    size = 2048 if xp is np else 8192
    A = random_input(xp, size, size, 1)
    B = random_input(xp, size, size, 2)
    seconds = min(timed(lambda: A @ B, xp, warmup, repeats))
    return 2.0 * size**3 / seconds, size


def machine_state(device):
    info = {"python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform(),
            "cpu_model": cpu_model(), "native_kernels": native.status(), "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "loadavg_before": os.getloadavg(), "device": device,
            "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                                 "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUPY_TF32")
                    if k in os.environ}}
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: v for k, v in lib.items() if k in ("internal_api", "version", "architecture",
                                                               "threading_layer", "num_threads", "filepath")}
                        for lib in threadpool_info()]
    except Exception as exc:  # threadpoolctl is a dependency, but a broken BLAS probe must not stop a bench
        info["blas"] = f"unavailable: {exc}"
    if device == "gpu":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        info["gpu_model"] = name.decode() if isinstance(name, bytes) else name
        info["cupy"] = cupy.__version__
    return info


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- bench aggregate ------------------------------------------------------------------------------

def bench_aggregate(args):
    device = resolve_device(args.device)
    xp = namespace(device)
    rules = parse_list(args.rules, str, "rules") if args.rules else DEFAULT_RULES
    for rule in rules:
        agg.make(rule, 64, 0, **rule_options(rule))  # unknown names fail here, before any data is made
    ns = parse_list(args.n, int, "n")
    ds = parse_list(args.d, int, "d")
    if args.f not in ("quarter", "max") and not args.f.isdigit():
        raise ConfigError(f"--f takes 'quarter', 'max' or an integer, got {args.f!r}")
    if Path(args.out).suffix.lower() not in (".h5", ".hdf5", ".json", ".csv"):
        raise ConfigError(f"--out must end in .h5, .json or .csv, got {Path(args.out).name!r}")
    # the pair-loop comparison is sized to what was asked: a small run stays small
    if args.pairloop_n is None:
        args.pairloop_n = min(64, max(ns))
    args.pairloop_d = min(int(1e6), min(ds)) if args.pairloop_d is None else args.pairloop_d
    n_pairloop = sum(1 for r in rules if r.split("+")[-1] in DISTANCE_RULES or "nnm" in r.split("+"))
    progress = Progress(len(ds) * len(ns) * len(rules) + (n_pairloop if args.pairloop_n and device == "cpu" else 0),
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
            for rule in rules:
                row = bench_rule(rule, X, n, d, args, xp, read_s, gram_s, device)
                report["results"].append(row)
                print(format_row(row), flush=True)
                progress.update(progress.done + 1, rule=rule, n=n)
            del X

    if args.pairloop_n and device == "cpu":
        report["pairloop"] = bench_pair_loop(rules, args, progress)
    progress.close()
    state["loadavg_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_report(report, Path(args.out))
    print(f"# load average after {state['loadavg_after'][0]:.2f}; written to {args.out}", flush=True)
    return 0


def rule_options(rule):
    return {"clip_norm": 1.0} if rule.startswith("clipping") else {}


def bench_rule(rule, X, n, d, args, xp, read_s, gram_s, device):
    f = choose_f(rule, n, args.f)
    aggregator = agg.make(rule, n, f, **rule_options(rule))
    times = timed(lambda: aggregator(X), xp, args.warmup, args.repeats)
    distance_based = rule.split("+")[-1] in DISTANCE_RULES or "nnm" in rule.split("+")
    floor_s = max(read_s, gram_s) if distance_based else read_s
    peak = None
    if device == "cpu" and not args.no_memory:
        peak = peak_extra_bytes(lambda: aggregator(X))
    best = min(times)
    return {"rule": rule, "n": n, "d": d, "f": f, "min_ms": best * 1e3, "median_ms": float(np.median(times)) * 1e3,
            "floor": "max(read, gram)" if distance_based else "read", "floor_ms": floor_s * 1e3,
            "x_floor": best / floor_s, "gb_per_s": X.nbytes / best / 1e9,
            "peak_extra_pct": None if peak is None else 100.0 * peak / X.nbytes, "pairloop_speedup": None,
            "times_ms": [t * 1e3 for t in times]}


def pair_loop_distances(X):
    """The pair loop dressed as the kernel's result, for swapping into the rules."""
    finite = np.isfinite(X).all(axis=1)
    return Distances(pair_loop_sq_distances(X), finite, np.zeros((X.shape[0], X.shape[0])))


@contextlib.contextmanager
def pair_loop_kernel():
    """Every distance-based rule with its distance kernel replaced by the direct pair loop: the
    'pair-loop implementation' of the same rule, all else equal."""
    with contextlib.ExitStack() as stack:
        for name in ("krum", "bulyan", "mda", "preagg"):  # the modules (the package exports functions of these names)
            module = importlib.import_module(f"krum_mpi.aggregators.{name}")
            stack.enter_context(mock.patch.object(module, "sq_distances", pair_loop_distances))
        yield


def bench_pair_loop(rules, args, progress=None):
    """Each distance-based rule against the same rule with the pair-loop distance kernel."""
    n, d = args.pairloop_n, int(float(args.pairloop_d))
    X = random_input(np, n, d, args.seed)
    rows = []
    loop_repeats = max(1, min(args.repeats, 3))
    print(f"# pair loop, n={n} d={d:.0e}: each distance-based rule, then the same rule with the "
          f"direct pair loop as its distance kernel", flush=True)
    for rule in rules:
        parts = rule.split("+")
        if not (parts[-1] in DISTANCE_RULES or "nnm" in parts):
            continue
        f = choose_f(rule, n, args.f)
        aggregator = agg.make(rule, n, f, **rule_options(rule))
        best = min(timed(lambda: aggregator(X), np, args.warmup, args.repeats))
        with pair_loop_kernel():
            loop = min(timed(lambda: aggregator(X), np, 0, loop_repeats))
        rows.append({"rule": rule, "n": n, "d": d, "f": f, "rule_ms": best * 1e3, "pairloop_ms": loop * 1e3,
                     "speedup": loop / best})
        print(f"  {rule:18s} f={f:<3d} {best * 1e3:9.1f} ms   pair loop {loop * 1e3:9.1f} ms   "
              f"{loop / best:6.1f}x faster", flush=True)
        if progress is not None:
            progress.update(progress.done + 1, rule=rule, n=n)
    return rows


def kernel_summary(status, device):
    if device == "gpu":
        return "CuPy"
    built = [name for name, ok in status["kernels"].items() if ok and name != "probe"]
    if not built:
        return "NumPy only (compiled kernels not built or KRUM_MPI_NATIVE=0)"
    return f"compiled ({status['isa']}: {', '.join(built)}), NumPy for the rest"


def blas_summary(state):
    blas = state.get("blas")
    if not isinstance(blas, list) or not blas:
        return "unknown"
    lib = blas[0]
    return f"{lib.get('internal_api')} {lib.get('version')} kernel {lib.get('architecture')}, {lib.get('num_threads')} threads"


def format_row(row):
    peak = "" if row["peak_extra_pct"] is None else f"{row['peak_extra_pct']:6.2f}%"
    return (f"  {row['rule']:18s} n={row['n']:<3d} d={row['d']:.0e} f={row['f']:<3d} "
            f"min {row['min_ms']:9.1f} ms  median {row['median_ms']:9.1f} ms  "
            f"floor[{row['floor']}] {row['floor_ms']:8.1f} ms  x{row['x_floor']:6.2f}  "
            f"{row['gb_per_s']:6.1f} GB/s  mem {peak}")


def write_report(report, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".json":
        path.write_text(json.dumps(report, indent=2, default=float))
    elif suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS + ["times_ms"], extrasaction="ignore")
            writer.writeheader()
            for row in report["results"]:
                writer.writerow({**row, "times_ms": " ".join(f"{t:.3f}" for t in row["times_ms"])})
        path.with_suffix(".meta.json").write_text(json.dumps({k: v for k, v in report.items() if k != "results"},
                                                             indent=2, default=float))
    elif suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "w") as h5:
            h5.attrs["command"] = report["command"]
            h5.attrs["machine"] = json.dumps(report["machine"], default=float)
            h5.attrs["gemm_flops_per_s"] = report["gemm"]["flops_per_s"]
            h5.attrs["pairloop"] = json.dumps(report["pairloop"], default=float)
            h5.attrs["floors"] = json.dumps(report["floors"], default=float)
            group = h5.create_group("results")
            for key in COLUMNS:
                values = [row[key] for row in report["results"]]
                if key in ("rule", "floor"):
                    group.create_dataset(key, data=np.array(values, dtype=h5py.string_dtype()))
                else:
                    group.create_dataset(key, data=np.array([np.nan if v is None else v for v in values],
                                                            dtype=np.float64))
    else:
        raise ConfigError(f"--out must end in .h5, .json or .csv, got {path.name!r}")


# -- bench gpu-check ------------------------------------------------------------------------------

GPU_CASES = [("average", 9, 2), ("krum", 11, 3), ("multi-krum", 11, 3), ("median", 10, 3),
             ("trimmed-mean", 10, 3), ("meamed", 10, 3), ("geometric-median", 9, 2), ("bulyan", 11, 2),
             ("centered-clipping", 9, 2), ("mda", 9, 2), ("nnm+krum", 11, 3), ("bucketing+median", 12, 1),
             ("clipping+average", 9, 2)]


def gpu_check(args):
    device = resolve_device("gpu")
    import cupy

    if os.environ.get("CUPY_TF32", "0") not in ("", "0"):
        raise DeviceError("CUPY_TF32 is set: TF32 products lose the precision distances need; unset it")
    failures = 0
    rng = np.random.default_rng(0)
    for name, n, f in GPU_CASES:
        for kind in ("random", "adversarial", "nonfinite"):
            X = rng.standard_normal((n, 5000)).astype(np.float32)
            if kind == "adversarial":
                X = (1e4 + X).astype(np.float32)
                X[:f] += np.float32(10) * rng.standard_normal((f, 5000)).astype(np.float32)
            if kind == "nonfinite" and f >= 1 and name != "average":
                X[0, 3] = np.nan
                X[f - 1, 11] = np.inf
            options = rule_options(name)
            cpu = agg.make(name, n, f, **options)(X)
            gpu = agg.make(name, n, f, **options)(cupy.asarray(X))
            same_rows = cpu.selected is None or gpu.selected.tolist() == cpu.selected.tolist()
            scale = float(np.abs(X[np.isfinite(X)]).max())
            gap = float(np.max(np.abs(cupy.asnumpy(gpu.vector).astype(np.float64) - cpu.vector)))
            ok = same_rows and gap <= 32 * np.finfo(np.float32).eps * scale
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name:18s} {kind:11s} n={n} f={f} max|gpu-cpu|={gap:.3g}"
                  + ("" if same_rows else f" selected gpu={gpu.selected.tolist()} cpu={cpu.selected.tolist()}"),
                  flush=True)
    n, d = args.n, int(float(args.d))
    X = random_input(cupy, n, d, 0)
    read_s, _ = read_floor(cupy, X, 1, args.repeats)
    rate, size = gemm_rate(cupy, 1, args.repeats)
    krum = agg.make("krum", n, (n - 3) // 4)
    times = timed(lambda: krum(X), cupy, 1, args.repeats)
    floor = max(read_s, n * n * d / rate)
    print(f"krum n={n} d={d:.2e} on {machine_state(device).get('gpu_model')}: min {min(times) * 1e3:.2f} ms, "
          f"median {np.median(times) * 1e3:.2f} ms; read floor {read_s * 1e3:.2f} ms, GEMM {rate / 1e12:.1f} "
          f"TFLOP/s -> floor {floor * 1e3:.2f} ms, x{min(times) / floor:.2f}", flush=True)
    return 1 if failures else 0


# -- command line ---------------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(prog="krum-mpi bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("aggregate", help="time the aggregation rules against the machine's floors")
    a.add_argument("--rules", default="", help=f"comma-separated rules (default: {','.join(DEFAULT_RULES)})")
    a.add_argument("--n", default="16,64", help="worker counts (default 16,64)")
    a.add_argument("--d", default="1e7", help="parameter counts (default 1e7)")
    a.add_argument("--f", default="quarter", help="declared f: quarter ((n-3)//4), max, or an int (default quarter)")
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
