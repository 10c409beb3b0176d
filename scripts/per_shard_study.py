"""Final test accuracy of exact sharded Krum against per-shard Krum under attacks (docs/sharded.md):
    python scripts/per_shard_study.py OUTDIR [RANKS] [STEPS] [ADVERSARY]
Runs configs/synthetic-krum-f6.toml (n = 20, 6 Byzantine workers; ADVERSARY colluding, the default,
or omniscient: then the attacks crafted block by block, sharded.BLOCKWISE_ATTACKS) under
``mpiexec -n RANKS`` for each attack, seed and placement, then prints a Markdown table of the final
accuracy (mean and each seed) and the share of steps in which a Byzantine worker was selected."""
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

ATTACKS = {"colluding": ["gaussian", "sign-flip", "alie", "ipm", "label-flip"],
           "omniscient": ["omniscient", "sign-flip", "alie", "ipm"]}
SEEDS = [0, 1, 2]
PLACEMENTS = ["sharded", "per-shard"]
CONFIG = Path(__file__).parents[1] / "configs" / "synthetic-krum-f6.toml"


def run(out: Path, attack: str, seed: int, placement: str, ranks: int, steps: int, adversary: str) -> Path:
    path = out / f"{attack}-{placement}-{seed}.h5"
    if not path.exists():
        config = out / "config.toml"   # the preset without its Gaussian attack's sigma (set again below)
        config.write_text("\n".join(line for line in CONFIG.read_text().splitlines() if not line.startswith("sigma")))
        sigma = ["--set", "attack.sigma=200.0"] if attack == "gaussian" else []
        cmd = ["mpiexec", "-n", str(ranks), "krum-mpi", "run", str(config), "--out", str(path), *sigma,
               "--set", f"run.seed={seed}", "--set", f"run.steps={steps}", "--set", f"run.eval_every={steps}",
               "--set", f"attack.name={attack}", "--set", f"attack.adversary={adversary}",
               "--set", f"aggregator.placement={placement}"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    return path


def read(path: Path):
    with h5py.File(path, "r") as h5:
        acc = h5["metrics/test_accuracy"][()]
        byz = h5["selection/byzantine"][()]
        table = h5["selection/per_block"][()] if "selection/per_block" in h5 else h5["selection/selected"][()][:, None, :]
    picked = np.array([[byz[w] for w in block if w >= 0] for step in table for block in step], dtype=object)
    share = float(np.mean([any(p) for p in picked]))   # blocks (x steps) whose selection holds a Byzantine worker
    return float(acc[~np.isnan(acc)][-1]), share


def main():
    out = Path(sys.argv[1])
    ranks = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    adversary = sys.argv[4] if len(sys.argv) > 4 else "colluding"
    out.mkdir(parents=True, exist_ok=True)
    print(f"| attack | placement | final accuracy, mean | seeds {', '.join(map(str, SEEDS))} | Byzantine selected (share of block-steps) |")
    print("|---|---|---|---|---|")
    summary = {}
    for attack in ATTACKS[adversary]:
        for placement in PLACEMENTS:
            rows = [read(run(out, attack, s, placement, ranks, steps, adversary)) for s in SEEDS]
            accs, shares = [r[0] for r in rows], [r[1] for r in rows]
            summary[f"{attack}/{placement}"] = {"accuracy": accs, "byzantine_selected": shares}
            print(f"| {attack} | {placement} | {np.mean(accs):.3f} | {' '.join(f'{a:.3f}' for a in accs)} "
                  f"| {np.mean(shares):.3f} |", flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
