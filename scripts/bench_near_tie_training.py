"""Issue 23's training acceptance: the median aggregation time per step under the ``near-tie``
attack over that of the same run without attack, and the selections checked on a second exact path.

    python scripts/bench_near_tie_training.py [--rules krum multi-krum] [--steps 100] [--ranks 4]
        [--n 20] [--f 4] [--hidden 2000 48] [--seed 0] [--runs DIR] [--out near-tie-training.json]

Per rule, three real runs (``mpiexec -n RANKS python -m krum_mpi run --from-study
jobs/attack-table.toml``, spambase, an MLP 57-H1-H2-2: d = 212,146 parameters with the default
hidden sizes), n workers of which f Byzantine, the rule told f:
  honest       attack.name = "none", every worker honest (workers.byzantine = 0), the rule still told f
  near-tie     attack.name = "near-tie": one-ulp clones of worker 0's gradient
  near-tie/np  the near-tie run again with KRUM_MPI_NATIVE=0: the refinement's NumPy implementation
               (exact integer Gram entries summed per power of two) instead of the compiled one
               (double-double, superaccumulator). Both are exact, so the two runs must select the
               same workers at every step; the first step whose selected set differs is reported,
               and whether the losses of the two runs are identical (the trajectories stay bitwise
               equal while the selections and the means agree). tests/test_attack_near_tie.py
               checks the selections under this attack against fractions.
The figure is the median of ``timing/aggregate_s`` over the steps (the first step left out: it
builds the kernels' state) of near-tie over honest; the distances refined per step are given
beside it. Results files go under --runs (a complete file is reused: an interrupted run resumes);
the figures are printed and written to --out (JSON).
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from krum_mpi.run import results
from krum_mpi.study.folder import is_complete

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "jobs" / "attack-table.toml"
RUNS = (("honest", "none", {}), ("near-tie", "near-tie", {}), ("near-tie/np", "near-tie", {"KRUM_MPI_NATIVE": "0"}))


def mpiexec():
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else "mpiexec"


def run(args, rule, attack, env, out):
    """One run (unless out is already complete), read back."""
    if not is_complete(out):
        sets = [f"run.seed={args.seed}", f"run.steps={args.steps}", f"workers.n={args.n}",
                f"workers.byzantine={0 if attack == 'none' else args.f}", f"aggregator.f={args.f}",
                f"model.hidden=[{', '.join(map(str, args.hidden))}]"]
        cmd = [mpiexec(), "-n", str(args.ranks), sys.executable, "-m", "krum_mpi", "run", "--from-study", str(SPEC),
               "--cell", f"attack.name={attack}", "--cell", f"aggregator.name={rule}", "--out", str(out),
               "--force", "--quiet"] + [a for s in sets for a in ("--set", s)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **env})
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
            sys.exit(f"bench_near_tie_training: run failed ({proc.returncode}): {' '.join(cmd)}: {last}")
    return results.read_run(out)


def first_difference(a, b):
    """The first step whose selected set differs between two runs, or None (as sets: Multi-Krum
    certifies which rows it averages, and lists them in the order of their scores' bounds)."""
    sa, sb = np.sort(a["selection"]["selected"], axis=1), np.sort(b["selection"]["selected"], axis=1)
    differs = np.flatnonzero((sa != sb).any(axis=1))
    return int(differs[0]) if differs.size else None


def figures(rule, runs):
    steps = {label: np.asarray(r["timing"]["aggregate_s"], dtype=np.float64)[1:] for label, r in runs.items()}
    honest, attacked = float(np.median(steps["honest"])), float(np.median(steps["near-tie"]))
    recomputed = {label: float(np.mean(r["selection"]["recomputed"])) for label, r in runs.items()}
    return {"rule": rule, "honest_ms": honest * 1e3, "near_tie_ms": attacked * 1e3, "ratio": attacked / honest,
            "numpy_path_ms": float(np.median(steps["near-tie/np"])) * 1e3,
            "recomputed_per_step": recomputed, "steps": len(steps["honest"]) + 1,
            "selections_differ_at": first_difference(runs["near-tie"], runs["near-tie/np"]),
            "same_losses": bool(np.array_equal(runs["near-tie"]["metrics"]["loss"],
                                               runs["near-tie/np"]["metrics"]["loss"]))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rules", nargs="+", default=["krum", "multi-krum"])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--f", type=int, default=4)
    p.add_argument("--hidden", type=int, nargs=2, default=[2000, 48])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=Path, default=Path("near-tie-training-runs"))
    p.add_argument("--out", type=Path, default=Path("near-tie-training.json"))
    args = p.parse_args(argv)
    args.runs.mkdir(parents=True, exist_ok=True)
    rows = []
    for rule in args.rules:
        runs = {label: run(args, rule, attack, env, args.runs / f"{rule}-{label.replace('/', '-')}-s{args.seed}.h5")
                for label, attack, env in RUNS}
        row = figures(rule, runs)
        rows.append(row)
        same = "the same sets at every step" if row["selections_differ_at"] is None \
            else f"sets first differ at step {row['selections_differ_at']}"
        same += ", losses identical" if row["same_losses"] else ", losses differ"
        print(f"{rule:10s} n={args.n} f={args.f} ranks={args.ranks} steps={row['steps']}: aggregation per step "
              f"(median) near-tie {row['near_tie_ms']:.2f} ms, honest {row['honest_ms']:.2f} ms, ratio "
              f"{row['ratio']:.2f}; refined per step {row['recomputed_per_step']['near-tie']:.1f}; "
              f"compiled vs NumPy path selections {same}", flush=True)
    with open(args.out, "w") as fh:
        json.dump({"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "rules": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
