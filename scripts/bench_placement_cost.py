"""The step time of the placements against the gather's, by model size (docs/sharded.md, "Cost at
small d"):

    python scripts/bench_placement_cost.py --out placement_cost.json          # d = 1,622 .. 1,061,002
    python scripts/bench_placement_cost.py --hidden 20 --steps 30 --out small.json

For each size (the synthetic preset's MLP 57-h-h-2: h = 20, 100, 300, 1000 give d = 1,622, 16,102,
108,302, 1,061,002) and each repeat, runs ``mpiexec -n RANKS krum-mpi run`` (Krum under ALIE, an
attack every placement can craft) once per placement, interleaved, so that the machine's load falls
on all of them alike:

    gather          rank 0 gathers every row
    sharded         placement = "sharded" as configured by default: below aggregator.sharded_min_d
                    it makes the gather's exchange (the results file's attribute ``exchange`` says
                    which ran; it is recorded per run here)
    sharded-blocks  placement = "sharded" with sharded_min_d = 0: always the exchange of blocks
    model-2         parallel.model = 2 (the MLP split over pairs of ranks); below sharded_min_d (the
                    whole model's d) rank 0 gathers the shards' rows, as the gather does
    model-4         parallel.model = 4 (one model group of 4 ranks)
    model-2-blocks, parallel.model = 2 or 4 with sharded_min_d = 0: always the block exchange
    model-4-blocks  (rank (g, s) aggregates sub-block g of shard s)

Per run: the median ``timing/step_s`` over the steps after the first quarter (at most 5: imports and
first calls), and the slowest rank's median of each of the four phases (``timing/rank_phase_s``).
Writes every run and, per size and placement, the median step over repeats and the median of its
ratios to the gather run of the same repeat, to ``--out`` (JSON) and the same summary next to it as
CSV; prints the table and the crossover d of the block exchange (where ``sharded-blocks`` stops
being slower than the gather, interpolated in log d between the two sizes around it).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "synthetic-krum-f6.toml"
PLACEMENTS = {"gather": [],
              "sharded": ["--set", "aggregator.placement=sharded"],
              "sharded-blocks": ["--set", "aggregator.placement=sharded", "--set", "aggregator.sharded_min_d=0"],
              "model-2": ["--set", "parallel.model=2"],
              "model-4": ["--set", "parallel.model=4"],
              "model-2-blocks": ["--set", "parallel.model=2", "--set", "aggregator.sharded_min_d=0"],
              "model-4-blocks": ["--set", "parallel.model=4", "--set", "aggregator.sharded_min_d=0"]}


def one_run(config: Path, out: Path, placement: str, hidden: int, steps: int, ranks: int) -> dict:
    """One run's median step and phases (seconds), its d and the exchange it recorded."""
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
        phases = h5["timing/rank_phase_s"][skip:]          # (steps, ranks, 4)
        d = int(json.loads(h5.attrs["provenance"])["n_params"])
        exchange = str(h5.attrs.get("exchange", "model groups" if placement.startswith("model") else "gather"))
    return {"placement": placement, "hidden": hidden, "d": d, "exchange": exchange,
            "step_s": float(np.median(step_s)),
            "phases_s": [float(v) for v in np.nanmedian(phases, axis=0).max(axis=0)]}


def summarise(runs: list, hiddens: list, placements: list) -> list:
    """Per size and placement: the median step over repeats and the median ratio to the gather."""
    summary = []
    for hidden in hiddens:
        mine = [r for r in runs if r["hidden"] == hidden]
        gather = {r["repeat"]: r["step_s"] for r in mine if r["placement"] == "gather"}
        for placement in placements:
            these = [r for r in mine if r["placement"] == placement]
            phases = np.median([r["phases_s"] for r in these], axis=0)
            # each run against the gather run of its own repeat (run next to it): the load drifts
            ratios = [r["step_s"] / gather[r["repeat"]] for r in these]
            summary.append({"hidden": hidden, "d": these[0]["d"], "placement": placement,
                            "exchange": these[0]["exchange"],
                            "step_ms": float(np.median([r["step_s"] for r in these])) * 1e3,
                            "vs_gather": float(np.median(ratios)), "phases_ms": [float(v) * 1e3 for v in phases]})
    return summary


def crossover(summary: list, placement: str = "sharded-blocks"):
    """The d where ``placement``'s ratio to the gather crosses 1 (log-log interpolation), or None."""
    points = sorted((s["d"], s["vs_gather"]) for s in summary if s["placement"] == placement)
    for (d0, r0), (d1, r1) in zip(points, points[1:]):
        if r0 > 1 >= r1:
            t = math.log(r0) / (math.log(r0) - math.log(r1))
            return round(math.exp(math.log(d0) + t * (math.log(d1) - math.log(d0))))
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[20, 100, 300, 1000],
                    help="hidden widths h (d of 57-h-h-2)")
    ap.add_argument("--steps", type=int, default=12, help="steps per run (the first quarter, at most 5, skipped)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--placements", nargs="+", default=[p for p in PLACEMENTS if not p.startswith("model-") or
                                                        not p.endswith("-blocks")], choices=list(PLACEMENTS))
    ap.add_argument("--out", type=Path, required=True, help="JSON file (the summary also as .csv next to it)")
    args = ap.parse_args(argv)
    placements = ["gather"] + [p for p in args.placements if p != "gather"]   # the reference runs too
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"   # the preset under ALIE
        config.write_text(PRESET.read_text().replace('name = "gaussian"', 'name = "alie"')
                          .replace("sigma = 200.0", ""))
        for hidden in args.hidden:
            for repeat in range(args.repeats):
                for placement in placements:
                    row = one_run(config, Path(tmp) / "run.h5", placement, hidden, args.steps, args.ranks)
                    runs.append({**row, "repeat": repeat})
                    print(f"  h={hidden} {placement:15s} repeat {repeat}: {row['step_s'] * 1e3:9.2f} ms "
                          f"({row['exchange']})", flush=True)
    summary = summarise(runs, args.hidden, placements)
    cross = crossover(summary)
    args.out.write_text(json.dumps({"ranks": args.ranks, "steps": args.steps, "repeats": args.repeats,
                                    "crossover_d": cross, "summary": summary, "runs": runs}, indent=1))
    with open(args.out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["d", "placement", "exchange", "step_ms", "vs_gather"])
        for s in summary:
            writer.writerow([s["d"], s["placement"], s["exchange"], f"{s['step_ms']:.3f}", f"{s['vs_gather']:.3f}"])
    print(f"{'d':>10} {'placement':15s} {'exchange':13s} {'step ms':>9} {'x gather':>8}")
    for s in summary:
        print(f"{s['d']:10d} {s['placement']:15s} {s['exchange']:13s} {s['step_ms']:9.2f} {s['vs_gather']:8.2f}")
    print(f"crossover of the block exchange: d = {cross}" if cross else
          "crossover of the block exchange: not inside the sizes measured")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
