"""Per-worker gradient time of the PyTorch zoo on this machine: one process, the interface call the
training loop makes (``model.gradient_into`` into a float32 row), median of repeated calls.

    python scripts/bench_torch_workers.py [--models mnist-cnn resnet20] [--batches 25 128]
                                          [--threads 1 2] [--repeats 20]

Prints one line per (model, batch, threads): median and interquartile range of the seconds per
gradient, and samples per second (batch / median). Inputs are seeded random images of the model's
shape (the time of a gradient does not depend on the pixel values).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

SHAPES = {"mnist-cnn": 784, "lenet5": 784, "resnet20": 3072}


def bench(name: str, batch: int, threads: int, repeats: int) -> dict:
    import torch
    from krum_mpi import models

    model = models.make({"name": name, "augment": "none"}, SHAPES[name], 10)
    model.set_threads(threads)
    theta = model.init(np.random.default_rng(0))
    rng = np.random.default_rng(1)
    X = rng.standard_normal((batch, SHAPES[name])).astype(np.float32)
    y = rng.integers(0, 10, batch)
    row = np.empty(model.n_params, dtype=np.float32)
    for step in range(3):                                   # warm-up: allocator, oneDNN kernels
        model.gradient_into(theta, X, y, row, step=step)
    times = []
    for step in range(repeats):
        t0 = time.perf_counter()
        model.gradient_into(theta, X, y, row, step=step)
        times.append(time.perf_counter() - t0)
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return {"model": name, "d": model.n_params, "batch": batch, "threads": torch.get_num_threads(),
            "median_s": med, "iqr_s": q3 - q1, "samples_per_s": batch / med}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["mnist-cnn", "resnet20"])
    p.add_argument("--batches", nargs="+", type=int, default=[25, 128])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    print(f"cpu_count {os.cpu_count()}, load average {os.getloadavg()}")
    print(f"{'model':10s} {'d':>8s} {'batch':>5s} {'thr':>3s} {'ms/grad':>8s} {'IQR ms':>7s} {'samples/s':>9s}")
    for name in args.models:
        for batch in args.batches:
            for threads in args.threads:
                r = bench(name, batch, threads, args.repeats)
                print(f"{r['model']:10s} {r['d']:8d} {r['batch']:5d} {r['threads']:3d} {1e3 * r['median_s']:8.1f} "
                      f"{1e3 * r['iqr_s']:7.1f} {r['samples_per_s']:9.0f}", flush=True)


if __name__ == "__main__":
    main()
