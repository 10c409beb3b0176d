"""The step time of each placement against the gather's, on one model size or a sweep of sizes
(docs/sharded.md, "The cost of a step at small d"):

    python scripts/placement_fixed_cost.py --out cost.json                       # d = 1,622
    python scripts/placement_fixed_cost.py --hidden 20 200 1000 --steps 20 --out sweep.json

For each size (the synthetic preset's MLP 57-h-h-2) and each repeat, runs `mpiexec -n RANKS krum-mpi
run configs/synthetic-krum-f6.toml` (Krum, ALIE) once per placement, interleaved (gather, sharded,
per-shard, model-parallel p = 2, gather, ...), so that a machine's load falls on all of them alike.
Per run: the median `timing/step_s` over the steps after the first few (the first steps include
imports and first calls), and the median of each rank's four phases (`timing/rank_phase_s`,
slowest rank). Writes every run's figures and, per size and placement, the median over repeats
and its ratio to the gather's, to ``--out`` (JSON), and prints a table.
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

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "synthetic-krum-f6.toml"
PLACEMENTS = {"gather": [], "sharded": ["--set", "aggregator.placement=sharded"],
              "per-shard": ["--set", "aggregator.placement=per-shard"],
              "model-parallel": ["--set", "parallel.model=2"]}


def one_run(config: Path, out: Path, placement: str, hidden: int, steps: int, ranks: int) -> dict:
    import h5py
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, "-m", "krum_mpi", "run", str(config), "--out", str(out),
           "--force", "--quiet", "--set", f"run.steps={steps}", "--set", f"run.eval_every={steps}",
           "--set", f"model.hidden=[{hidden}, {hidden}]", *PLACEMENTS[placement]]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise SystemExit(f"{placement}, hidden {hidden}: {done.stderr.strip()}")
    with h5py.File(out, "r") as h5:
        skip = min(5, steps // 4)
        step_s = h5["timing/step_s"][skip:]
        phases = h5["timing/rank_phase_s"][skip:] if "timing/rank_phase_s" in h5 else None
        d = int(json.loads(h5.attrs["provenance"])["n_params"])
    row = {"placement": placement, "hidden": hidden, "d": d, "step_s": float(np.median(step_s))}
    if phases is not None:   # (steps, ranks, 4): the slowest rank's median of each phase
        row["phases_s"] = [float(v) for v in np.median(phases, axis=0).max(axis=0)]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[20], help="hidden widths h (d of 57-h-h-2)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--placements", nargs="+", default=list(PLACEMENTS), choices=list(PLACEMENTS))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"   # the preset under ALIE, an attack every placement can craft
        config.write_text(PRESET.read_text().replace('name = "gaussian"', 'name = "alie"')
                          .replace("sigma = 200.0", ""))
        for hidden in args.hidden:
            for repeat in range(args.repeats):
                for placement in args.placements:
                    row = one_run(config, Path(tmp) / "run.h5", placement, hidden, args.steps, args.ranks)
                    runs.append({**row, "repeat": repeat})
                    print(f"  h={hidden} {placement:15s} repeat {repeat}: {row['step_s'] * 1e3:.2f} ms", flush=True)
    summary = []
    for hidden in args.hidden:
        mine = [r for r in runs if r["hidden"] == hidden]
        base = float(np.median([r["step_s"] for r in mine if r["placement"] == "gather"]))
        for placement in args.placements:
            median = float(np.median([r["step_s"] for r in mine if r["placement"] == placement]))
            summary.append({"hidden": hidden, "d": mine[0]["d"], "placement": placement, "step_s": median,
                            "vs_gather": median / base})
    args.out.write_text(json.dumps({"ranks": args.ranks, "steps": args.steps, "repeats": args.repeats,
                                    "summary": summary, "runs": runs}, indent=1))
    print(f"{'d':>10} {'placement':15s} {'step ms':>9} {'x gather':>8}")
    for s in summary:
        print(f"{s['d']:10d} {s['placement']:15s} {s['step_s'] * 1e3:9.2f} {s['vs_gather']:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
