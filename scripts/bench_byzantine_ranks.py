"""Byzantine ranks, measured (docs/sharded.md, "The measured cost of r = 3"): the takeover by one
lying rank, the defence by replicated blocks, and their price in bytes and time per step.

    python scripts/bench_byzantine_ranks.py --hidden 1000 --steps 12 --seeds 0 1 --out cost.json          # the price
    python scripts/bench_byzantine_ranks.py --hidden 300 --steps 60 --seeds 0 1 2 --out takeover.json    # accuracy

For each seed, runs `mpiexec -n RANKS krum-mpi run` once per variant, interleaved so that the
machine's load falls on all alike: the synthetic data (57 features, two classes), an MLP 57-h-h-2
(h = 1000: d = 1,061,002), n = 20 workers of which 2 send sign-flipped gradients, Krum with f = 8
(so that a model group of 6 workers made Byzantine by a lying rank, plus the 2, is within f):

    gather                         the honest reference (rank 0 gathers every row)
    sharded r=1 / r=3              the sharded aggregation, without and with 3 replicas per block
    sharded r=1 / r=3, lie-distances, corrupt-block     rank 2 lies (its target: one of the 2 Byzantine workers)
    p=2, p=2 corrupt-activations   parallel.model = 2 (3 groups of 2 ranks), rank 5 corrupts group 2

Per run, from the results file: the median `timing/step_s` and the busiest rank's payload bytes
sent and received per step (`comm/bytes_sent`, `comm/bytes_received`: the largest rank's, median
over the steps after the first two), the steps whose selection differs from the gather run's of the
same seed, the steps where Krum selected a declared Byzantine worker and a worker Byzantine only
through a rank (its model group's, not declared), the steps where it selected what the lying rank
wanted, the values each rank sent that the vote overruled, and the final test accuracy. Writes
every run and, per variant, the medians over seeds and the ratios to `sharded r=1`, to the gather
and (p = 2) to the honest p = 2 run, to ``--out`` (JSON) and next to it as CSV (the summary);
prints the summary.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CONFIG = """
[run]
eval_every = 10
[workers]
n = 20
byzantine = 2
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
f = 8
[attack]
name = "sign-flip"
"""
SHARDED = ["aggregator.placement=sharded"]
LIAR = "byzantine_ranks.ranks=[2]"
VARIANTS = {   # name -> (--set overrides, the honest variant it is compared with)
    "gather": ([], None),
    "sharded r=1": (SHARDED, "gather"),
    "sharded r=3": (SHARDED + ["aggregator.replicas=3"], "gather"),
    "sharded r=1, lie-distances": (SHARDED + [LIAR, "byzantine_ranks.behaviour=lie-distances"], "sharded r=1"),
    "sharded r=3, lie-distances": (SHARDED + ["aggregator.replicas=3", LIAR, "byzantine_ranks.behaviour=lie-distances"],
                                   "sharded r=3"),
    "sharded r=1, corrupt-block": (SHARDED + [LIAR, "byzantine_ranks.behaviour=corrupt-block"], "sharded r=1"),
    "sharded r=3, corrupt-block": (SHARDED + ["aggregator.replicas=3", LIAR, "byzantine_ranks.behaviour=corrupt-block"],
                                   "sharded r=3"),
    "p=2": (["parallel.model=2"], "gather"),
    "p=2, corrupt-activations": (["parallel.model=2", "byzantine_ranks.ranks=[5]",
                                  "byzantine_ranks.behaviour=corrupt-activations"], "p=2"),
}


def one_run(config: Path, out: Path, variant: str, args, seed: int) -> dict:
    sets = [f"run.steps={args.steps}", f"run.seed={seed}", f"model.hidden=[{args.hidden}, {args.hidden}]",
            *VARIANTS[variant][0]]
    cmd = ["mpiexec", "-n", str(args.ranks), sys.executable, "-m", "krum_mpi", "run", str(config), "--out", str(out),
           "--force", "--quiet", *[a for s in sets for a in ("--set", s)]]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise SystemExit(f"{variant}, seed {seed}: {done.stderr.strip()}")
    shown = cmd[:3] + ["krum-mpi", "run", "config.toml", "--out", "run.h5"] + cmd[10:]   # no machine paths
    return {"variant": variant, "seed": seed, "command": " ".join(shown), **read(out)}


def read(path: Path) -> dict:
    """One results file's figures (module doc)."""
    import h5py
    with h5py.File(path, "r") as h5:
        steps = h5["metrics/step"].shape[0]
        skip = min(2, steps // 4)
        sent, received = h5["comm/bytes_sent"][skip:], h5["comm/bytes_received"][skip:]
        selected = h5["selection/selected"][()].reshape(steps, -1)[:, 0]
        byzantine = h5["selection/byzantine"][()].astype(bool)
        through = h5["selection/byzantine_through_ranks"][()].astype(bool) if "selection/byzantine_through_ranks" \
            in h5 else np.zeros_like(byzantine)
        accuracy = h5["metrics/test_accuracy"][()]
        out = {"d": int(json.loads(h5.attrs["provenance"])["n_params"]), "steps": steps,
               "step_s": float(np.median(h5["timing/step_s"][skip:])),
               "busiest_sent": float(np.median(sent.max(axis=1))),
               "busiest_received": float(np.median(received.max(axis=1))),
               "selected": selected.tolist(), "byzantine_selected_steps": int(byzantine[selected].sum()),
               "through_ranks_selected_steps": int((through & ~byzantine)[selected].sum()),
               "final_accuracy": float(accuracy[np.isfinite(accuracy)][-1]),
               "final_loss": float(h5["metrics/loss"][-1])}
        if "byzantine_ranks/wanted" in h5:
            out["wanted_selected_steps"] = int((h5["byzantine_ranks/wanted"][()][:, 0] == selected).sum())
        if "replicas/outvoted" in h5:
            out["outvoted_per_rank"] = h5["replicas/outvoted"][()].sum(axis=0).tolist()
            out["outvoted_steps_per_rank"] = (h5["replicas/outvoted"][()] > 0).sum(axis=0).tolist()
    return out


def summarise(runs: list) -> list:
    """Per variant: medians over seeds, ratios, and the selections against the honest variant's."""
    by = {(r["variant"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    med = {v: {k: float(np.median([by[v, s][k] for s in seeds])) for k in ("step_s", "busiest_sent",
                                                                          "busiest_received")} for v in VARIANTS}
    rows = []
    for v, (_, honest) in VARIANTS.items():
        row = {"variant": v, "d": by[v, seeds[0]]["d"], "seeds": len(seeds), **med[v]}
        for ref in ("sharded r=1", "gather") + (("p=2",) if v.startswith("p=2") else ()):
            row[f"time_vs_{ref}"] = med[v]["step_s"] / med[ref]["step_s"]
            row[f"sent_vs_{ref}"] = med[v]["busiest_sent"] / med[ref]["busiest_sent"]
        row["steps_differing_from_gather"] = [differing(by[v, s], by["gather", s]) for s in seeds]
        if honest:
            row["steps_differing_from_" + honest] = [differing(by[v, s], by[honest, s]) for s in seeds]
        for key in ("byzantine_selected_steps", "through_ranks_selected_steps", "wanted_selected_steps",
                    "final_accuracy"):
            if key in by[v, seeds[0]]:
                row[key] = [by[v, s][key] for s in seeds]
        if "outvoted_steps_per_rank" in by[v, seeds[0]]:
            row["outvoted_steps_per_rank"] = [by[v, s]["outvoted_steps_per_rank"] for s in seeds]
        rows.append(row)
    return rows


def differing(run: dict, ref: dict) -> int:
    return int(np.sum(np.asarray(run["selected"]) != np.asarray(ref["selected"])))


def write(args, runs: list, summary: list) -> None:
    args.out.write_text(json.dumps({"ranks": args.ranks, "steps": args.steps, "hidden": args.hidden,
                                    "seeds": args.seeds, "config": CONFIG, "summary": summary, "runs": runs},
                                   indent=1))
    keys = list(dict.fromkeys(k for row in summary for k in row))
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        table = csv.DictWriter(f, fieldnames=keys)
        table.writeheader()
        table.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()} for row in summary)


def show(summary: list) -> None:
    print(f"{'variant':28s} {'step ms':>8} {'x r=1':>6} {'x gather':>8} {'sent MB':>8} {'x r=1':>6} "
          f"{'x gather':>8}  differ/gather  Byzantine selected  accuracy")
    for s in summary:
        print(f"{s['variant']:28s} {s['step_s'] * 1e3:8.1f} {s['time_vs_sharded r=1']:6.2f} "
              f"{s['time_vs_gather']:8.2f} {s['busiest_sent'] / 1e6:8.2f} {s['sent_vs_sharded r=1']:6.2f} "
              f"{s['sent_vs_gather']:8.2f}  {s['steps_differing_from_gather']}  {s['byzantine_selected_steps']}  "
              f"{[round(a, 3) for a in s['final_accuracy']]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1000, help="hidden width h of the MLP 57-h-h-2")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--ranks", type=int, default=6)
    ap.add_argument("--out", type=Path, required=True, help="JSON file (the summary also as .csv beside it)")
    args = ap.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(CONFIG)
        for seed in args.seeds:
            for variant in VARIANTS:
                row = one_run(config, Path(tmp) / "run.h5", variant, args, seed)
                runs.append(row)
                print(f"  seed {seed} {variant:28s} {row['step_s'] * 1e3:8.1f} ms/step, busiest rank sent "
                      f"{row['busiest_sent'] / 1e6:.2f} MB, accuracy {row['final_accuracy']:.3f}", flush=True)
    summary = summarise(runs)
    write(args, runs, summary)
    show(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
