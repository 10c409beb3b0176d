"""The price of replicated blocks (docs/sharded.md, "Byzantine ranks"): step time and the busiest
rank's bytes of `aggregator.replicas = 3` against `replicas = 1` and against the gather:

    python scripts/replicas_cost.py --hidden 1000 --steps 12 --repeats 2 --out replicas.json

For each size (an MLP 57-h-h-2 on the synthetic data, n = 20, Krum f = 4, no attack) and each
repeat, runs `mpiexec -n RANKS krum-mpi run` once per variant, interleaved so that the machine's
load falls on all alike: gather, sharded r = 1, sharded r = 3, and sharded r = 3 with rank 2 lying
(lie-distances). Per run: the median `timing/step_s` over the steps after the first two, and the
busiest rank's payload bytes per step (`comm/bytes_sent` + `comm/bytes_received`, the median over
the same steps of the largest rank's). Writes every run and, per size and variant, the medians over
repeats and their ratios to r = 1 and to the gather (``--out``, JSON); prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CONFIG = """
[run]
seed = 0
[workers]
n = 20
batch_size = 3
[data]
name = "synthetic"
n_features = 57
n_train = 3680
n_test = 921
[model]
name = "mlp"
[optimizer]
lr = 0.1
[aggregator]
name = "krum"
f = 4
"""
VARIANTS = {"gather": [],
            "sharded r=1": ["--set", "aggregator.placement=sharded"],
            "sharded r=3": ["--set", "aggregator.placement=sharded", "--set", "aggregator.replicas=3"],
            "sharded r=3, rank 2 lying": ["--set", "aggregator.placement=sharded", "--set", "aggregator.replicas=3",
                                          "--set", "byzantine_ranks.ranks=[2]",
                                          "--set", "byzantine_ranks.behaviour=lie-distances"]}


def one_run(config: Path, out: Path, variant: str, hidden: int, steps: int, ranks: int) -> dict:
    import h5py
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, "-m", "krum_mpi", "run", str(config), "--out", str(out),
           "--force", "--quiet", "--set", f"run.steps={steps}", "--set", f"run.eval_every={steps}",
           "--set", f"model.hidden=[{hidden}, {hidden}]", *VARIANTS[variant]]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise SystemExit(f"{variant}, hidden {hidden}: {done.stderr.strip()}")
    with h5py.File(out, "r") as h5:
        skip = min(2, steps // 4)
        step_s = h5["timing/step_s"][skip:]
        busiest = (h5["comm/bytes_sent"][skip:] + h5["comm/bytes_received"][skip:]).max(axis=1)
        d = int(json.loads(h5.attrs["provenance"])["n_params"])
    return {"variant": variant, "hidden": hidden, "d": d, "step_s": float(np.median(step_s)),
            "busiest_bytes": float(np.median(busiest))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[1000], help="hidden widths h (d of 57-h-h-2)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ranks", type=int, default=6)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(CONFIG)
        for hidden in args.hidden:
            for repeat in range(args.repeats):
                for variant in VARIANTS:
                    row = one_run(config, Path(tmp) / "run.h5", variant, hidden, args.steps, args.ranks)
                    runs.append({**row, "repeat": repeat})
                    print(f"  h={hidden} {variant:26s} repeat {repeat}: {row['step_s'] * 1e3:.1f} ms, "
                          f"busiest rank {row['busiest_bytes'] / 1e6:.2f} MB", flush=True)
    summary = []
    for hidden in args.hidden:
        mine = [r for r in runs if r["hidden"] == hidden]
        med = {v: {k: float(np.median([r[k] for r in mine if r["variant"] == v])) for k in ("step_s", "busiest_bytes")}
               for v in VARIANTS}
        for v in VARIANTS:
            summary.append({"hidden": hidden, "d": mine[0]["d"], "variant": v, **med[v],
                            "time_vs_r1": med[v]["step_s"] / med["sharded r=1"]["step_s"],
                            "time_vs_gather": med[v]["step_s"] / med["gather"]["step_s"],
                            "bytes_vs_r1": med[v]["busiest_bytes"] / med["sharded r=1"]["busiest_bytes"],
                            "bytes_vs_gather": med[v]["busiest_bytes"] / med["gather"]["busiest_bytes"]})
    args.out.write_text(json.dumps({"ranks": args.ranks, "steps": args.steps, "repeats": args.repeats,
                                    "summary": summary, "runs": runs}, indent=1))
    print(f"{'d':>10} {'variant':26s} {'step ms':>9} {'x r=1':>6} {'x gather':>8} {'busiest MB':>10} "
          f"{'x r=1':>6} {'x gather':>8}")
    for s in summary:
        print(f"{s['d']:10d} {s['variant']:26s} {s['step_s'] * 1e3:9.1f} {s['time_vs_r1']:6.2f} "
              f"{s['time_vs_gather']:8.2f} {s['busiest_bytes'] / 1e6:10.2f} {s['bytes_vs_r1']:6.2f} "
              f"{s['bytes_vs_gather']:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
