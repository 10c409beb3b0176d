"""``krum-mpi bench gpu-check``: every rule's CuPy path against its NumPy path on random,
adversarial and non-finite inputs, then Krum at n = 64, d = 2.5e7 (ResNet-50 scale) on the GPU,
against its floor. Arguments: ``krum_mpi.bench.aggregate.build_parser``."""
import os

import numpy as np

import krum_mpi.aggregators as agg
from krum_mpi.backend import gpu_model, namespace, resolve_device, to_host
from .measure import gemm_rate, random_input, read_floor, rule_options, timed
from krum_mpi.errors import DeviceError

GPU_CASES = [("average", 9, 2), ("krum", 11, 3), ("multi-krum", 11, 3), ("median", 10, 3),
             ("trimmed-mean", 10, 3), ("meamed", 10, 3), ("geometric-median", 9, 2), ("bulyan", 11, 2),
             ("centered-clipping", 9, 2), ("mda", 9, 2), ("nnm+krum", 11, 3), ("bucketing+median", 12, 1),
             ("clipping+average", 9, 2)]


def gpu_check(args):
    device = resolve_device("gpu")
    cupy = namespace(device)

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
            gap = float(np.max(np.abs(to_host(gpu.vector).astype(np.float64) - cpu.vector)))
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
    print(f"krum n={n} d={d:.2e} on {gpu_model()}: min {min(times) * 1e3:.2f} ms, "
          f"median {np.median(times) * 1e3:.2f} ms; read floor {read_s * 1e3:.2f} ms, GEMM {rate / 1e12:.1f} "
          f"TFLOP/s -> floor {floor * 1e3:.2f} ms, x{min(times) / floor:.2f}", flush=True)
    return 1 if failures else 0
