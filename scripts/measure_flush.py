"""Flush cost of the results file and checkpoint: seconds and bytes per flush, in one process.

Builds the results writer the training loop builds (same config, same per-step records) for an MLP
784-1024-1024-10 (d = 1,863,690) with n = 16 workers and worker momentum, records steps, and times
each flush together with the checkpoint it carries (parameters, every worker's momentum), exactly
as ``krum_mpi.run.train`` does at a flush. Bytes are the bytes this process passed to write(2)
(``wchar`` of /proc/self/io), so they count what the flush wrote, whatever the file system.

    python scripts/measure_flush.py --out-dir results/flush --flushes 12 --every 10

Works with the older layout (whole-file rewrite, checkpoint inside the results file) and with the
current one (appended rows, checkpoint file of its own), so the same command measures both.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import numpy as np

from krum_mpi import config
from krum_mpi.run import results

SETTINGS = ["data.name=synthetic", "data.n_features=784", "data.n_classes=10", "model.hidden=[1024, 1024]",
            "workers.n=16", "optimizer.momentum=0.9", "optimizer.momentum_at=worker", "run.steps=100000"]


def wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no wchar")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="results/flush")
    p.add_argument("--flushes", type=int, default=12)
    p.add_argument("--every", type=int, default=10, help="steps recorded between flushes")
    p.add_argument("--preload", type=int, default=0, help="steps recorded before the first timed flush")
    args = p.parse_args()
    out_dir = Path(args.out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    cfg = config.load_config(None, SETTINGS)
    n, d = 16, 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10
    prov = results.provenance("measure", ["host"], 4, n, "cpu")
    byz = np.zeros(n, dtype=bool)
    path = out_dir / "run.h5"
    new_layout = hasattr(results, "PER_STEP")   # appended rows, checkpoint in a file of its own
    writer = results.ResultsWriter(path, cfg, config.run_id(cfg), prov, byz, n, False, False)
    rng = np.random.default_rng(0)
    params = rng.standard_normal(d).astype(np.float32)
    momentum = rng.standard_normal((n, d)).astype(np.float32)
    timing = {k: 0.01 for k in results.TIMINGS}
    if new_layout:
        from krum_mpi.run import checkpoint as ckpt_mod
        store = ckpt_mod.CheckpointStore(ckpt_mod.path_for(path), config.run_id(cfg))
    step = 0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = []

    def record(k):
        nonlocal step
        for _ in range(k):
            writer.record(step, 0.5, np.nan, timing, np.arange(n), absent=np.zeros(n, bool),
                          worker_compute_s=np.full(n, 0.01))
            step += 1

    record(args.preload)
    for i in range(args.flushes):
        record(args.every)
        w0, t0 = wchar(), time.perf_counter()
        if new_layout:
            writer.flush("running")
            store.write(step - 1, {"params": params, "worker_momentum": momentum})
            writer.note_checkpoint(step - 1)
        else:
            writer.checkpoint = {"step": step - 1, "params": params.copy(), "worker_momentum": momentum.copy()}
            writer.flush("running")
        rows.append({"flush": i, "steps_done": step, "seconds": time.perf_counter() - t0,
                     "bytes": wchar() - w0})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    secs = np.array([r["seconds"] for r in rows[1:]])
    nbytes = np.array([r["bytes"] for r in rows[1:]])
    print(json.dumps({"layout": "appended rows + .ckpt" if new_layout else "whole-file rewrite", "d": d, "n": n,
                      "flushes_timed": len(secs), "median_s": float(np.median(secs)),
                      "min_s": float(secs.min()), "max_s": float(secs.max()),
                      "median_bytes": int(np.median(nbytes)), "rss_before_flushes_mib": round(rss0, 1),
                      "peak_rss_mib": round(peak, 1), "per_flush": rows}, indent=1))


if __name__ == "__main__":
    main()
