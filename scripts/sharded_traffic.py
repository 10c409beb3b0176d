"""Per-step traffic and times of results files (docs/performance.md, "Sharded aggregation"):
    python scripts/sharded_traffic.py RESULTS.h5 ...
Prints, per file: placement, rule, ranks, bytes received by the busiest rank per step (median over
the steps after the first), bytes sent by the busiest rank, and the median step, gather, aggregate
and update times (s) over the steps after the first."""
import json
import sys

import h5py
import numpy as np


def summary(path):
    with h5py.File(path, "r") as h5:
        cfg = json.loads(h5.attrs["config"])
        received, sent = h5["comm/bytes_received"][1:], h5["comm/bytes_sent"][1:]
        times = {k: float(np.median(h5["timing"][k][1:])) for k in ("step_s", "gather_s", "aggregate_s", "update_s")}
        return {"file": str(path), "placement": cfg["aggregator"].get("placement", "gather"),
                "rule": cfg["aggregator"]["name"], "ranks": received.shape[1], "d": int(json.loads(
                    h5.attrs["provenance"])["n_params"]),
                "busiest_received_MB": float(np.median(received.max(axis=1))) / 1e6,
                "busiest_sent_MB": float(np.median(sent.max(axis=1))) / 1e6, **times}


if __name__ == "__main__":
    rows = [summary(p) for p in sys.argv[1:]]
    print(f"{'placement':9} {'rule':8} {'ranks':>5} {'d':>10} {'recv MB':>9} {'sent MB':>9} "
          f"{'step s':>7} {'exch s':>7} {'agg s':>7} {'upd s':>7}")
    for r in rows:
        print(f"{r['placement']:9} {r['rule']:8} {r['ranks']:5d} {r['d']:10d} {r['busiest_received_MB']:9.1f} "
              f"{r['busiest_sent_MB']:9.1f} {r['step_s']:7.3f} {r['gather_s']:7.3f} {r['aggregate_s']:7.3f} "
              f"{r['update_s']:7.3f}")
