"""Measure the attack table of issue 4: final test error of average, krum and multi-krum on spambase.

    python scripts/attack_table.py                      # 3 seeds, 500 steps, mpiexec -n 2 per run
    python scripts/attack_table.py --seeds 0 1 2 3 4 --ranks 4 --table docs/attack-table.md
    python scripts/attack_table.py --attacks blind blind:blinder=last 'blind:magnitude="nan"' \
        --rules average krum ... --layout per-rule --column "before (unfixed distance kernel)" \
        --table docs/attack-table-blind.md              # the blind attack, one line per rule

``--rules`` and ``--attacks`` pick the cells; ``--table`` is the file written. ``--layout per-rule``
writes one line per rule and attack with the final error under the heading ``--column``, and, for
the ``blind`` attack, how often the blinding worker and a crafted worker were selected.
``--layout time`` writes the per-step aggregation time of each attack beside the honest step's (the
``none`` cell of the same rule) and the distances the rule recomputed per step: the table for the
``near-tie`` attack, an attack on time (docs/attack-table-time.md). ``--set KEY=VALUE`` (repeatable)
changes every cell, e.g. a larger model for d >= 1e5:

    python scripts/attack_table.py --layout time --attacks none near-tie near-tie:variant=mirror \
        --rules krum multi-krum --seeds 0 --steps 100 --ranks 4 --set 'model.hidden=[2000, 48]' \
        --set workers.byzantine=4 --set aggregator.f=4 --table docs/attack-table-time.md

Each cell is one run of the sweep jobs/attack-table.toml (n = 20 workers, f = 6, 6 Byzantine,
minibatch 3, MLP 57-20-20-2, lr 0.05), picked with ``krum-mpi run --from-study SPEC --cell
attack.name=A --cell aggregator.name=R`` and run once per seed with plain SGD and once with worker
momentum (optimizer.momentum = 0.9, optimizer.momentum_at = "worker"). Runs are real
``mpiexec -n RANKS python -m krum_mpi run`` processes writing HDF5 files under --runs; a file that
is already complete is reused, so an interrupted sweep resumes where it stopped. The table (mean and
standard deviation over seeds of the final test error, and how often a Byzantine vector was among
the selected ones) is written as Markdown to --table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from krum_mpi.run import results
from krum_mpi.study.folder import is_complete

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "jobs" / "attack-table.toml"
RULES = ("average", "krum", "multi-krum")
# NAME or NAME:key=value,... (extra attack parameters on top of the cell)
ATTACKS = ("none", "gaussian", "sign-flip", "alie", "ipm", "alie-opt", "ipm-opt",
           "alie-opt:objective=along", "ipm-opt:objective=along", "near-tie")
MOMENTUM = {"plain SGD": [], "worker momentum 0.9": ["optimizer.momentum=0.9", "optimizer.momentum_at=worker"]}


def mpiexec() -> str:
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else "mpiexec"


def run_one(cell: list[str], seed: int, steps: int, overrides: list[str], out: Path, ranks: int) -> dict:
    """Run one cell of the sweep (unless a complete results file is already there) and read it back."""
    if is_complete(out):
        return results.read_run(out)
    sets = [f"run.seed={seed}", f"run.steps={steps}"] + overrides
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "krum_mpi", "run", "--from-study", str(SPEC),
           "--out", str(out), "--force", "--quiet"] + [arg for c in cell for arg in ("--cell", c)] \
        + [arg for s in sets for arg in ("--set", s)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:  # report and go on: the cell shows how many seeds failed
        last = proc.stderr.strip().splitlines()[-1:] or ["(no message)"]
        print(f"run failed ({proc.returncode}): {' '.join(cmd)}: {last[0]}", file=sys.stderr, flush=True)
        return None
    return results.read_run(out)


def final_error(run: dict) -> float:
    acc = run["metrics"]["test_accuracy"]
    acc = acc[~np.isnan(acc)]
    return float(1.0 - acc[-1]) if acc.size else float("nan")


def byzantine_selected(run: dict) -> float:
    """Fraction of steps where at least one Byzantine worker's vector was selected."""
    sel, byz = run["selection"]["selected"], np.flatnonzero(run["selection"]["byzantine"])
    if byz.size == 0:
        return float("nan")
    return float(np.isin(sel, byz).any(axis=1).mean())


def blind_workers(run: dict) -> tuple[int, list[int]]:
    """The blind attack's blinding worker and its crafted workers: the Byzantine ids in order, the
    blinding one first or last as the run's ``attack.blinder`` says."""
    byz = [int(i) for i in np.flatnonzero(run["selection"]["byzantine"])]
    config = run["attrs"]["config"]
    attack = (json.loads(config) if isinstance(config, (str, bytes)) else config)["attack"]
    blinder = byz[-1] if attack.get("blinder", "first") == "last" else byz[0]
    return blinder, [i for i in byz if i != blinder]


def blind_selected(run: dict, which: str) -> float:
    """Fraction of steps where the blinding worker (which = "blinding") or any crafted worker
    ("crafted") was among the selected, over the steps whose training loss is finite (once the
    parameters are NaN every row is NaN and a selection means nothing); NaN for rules that report
    no selection."""
    sel = run["selection"]["selected"]
    sel = sel[np.isfinite(run["metrics"]["loss"])[:sel.shape[0]]]
    if sel.shape[1] == 0 or sel.shape[0] == 0:
        return float("nan")
    blinder, crafted = blind_workers(run)
    return float(np.isin(sel, [blinder] if which == "blinding" else crafted).any(axis=1).mean())


def cell(values: list, percent: bool = False) -> str:
    """mean ± std over the seeds that ran; failed runs (None) are counted and shown."""
    failed = sum(v is None for v in values)
    v = np.asarray([x for x in values if x is not None], dtype=float)
    note = f" ({failed} failed)" if failed else ""
    if v.size == 0 or np.isnan(v).all():
        return ("failed" if failed else "n/a")
    if percent:
        return f"{100.0 * np.nanmean(v):.0f}%{note}"
    return f"{np.nanmean(v):.3f} ± {np.nanstd(v):.3f}{note}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--ranks", type=int, default=2, help="MPI ranks per run (mpiexec -n)")
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    p.add_argument("--rules", nargs="+", default=list(RULES))
    p.add_argument("--runs", type=Path, default=REPO / "results" / "attack-table", help="folder for the HDF5 files")
    p.add_argument("--table", type=Path, default=REPO / "docs" / "attack-table.md", help="Markdown file written")
    p.add_argument("--layout", choices=("grid", "per-rule", "time"), default="grid",
                   help="grid: attacks x rules (docs/attack-table.md); per-rule: one line per rule and attack; "
                        "time: per-step aggregation time beside the honest step's (docs/attack-table-time.md)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every cell (krum-mpi run --set), repeatable")
    p.add_argument("--column", default="final test error", help="per-rule layout: heading of the error column")
    args = p.parse_args(argv)
    args.runs.mkdir(parents=True, exist_ok=True)
    runs = sweep(args)
    layouts = {"grid": grid_table, "per-rule": per_rule_table, "time": time_table}
    lines = layouts[args.layout](args, runs)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text("\n".join(lines))
    print(f"table: {args.table}")
    return 0


def sweep(args) -> dict:
    """{(momentum, attack, rule): [run or None per seed]}: every cell run (or read back)."""
    runs = {}
    settings = momentum_settings(args)
    total = len(settings) * len(args.attacks) * len(args.rules) * len(args.seeds)
    done = 0
    for mom, overrides in settings.items():
        tag = ("wm" if overrides else "sgd") + "".join(
            "-" + "".join(ch if ch.isalnum() or ch in ".=" else "_" for ch in kv) for kv in args.sets)
        for attack in args.attacks:
            name, _, extra = attack.partition(":")
            attack_sets = [f"attack.{kv}" for kv in extra.split(",") if kv]
            for rule in args.rules:
                selectors = [f"attack.name={name}", f"aggregator.name={rule}"]
                for seed in args.seeds:
                    stem = attack.replace(":", "-").replace("=", "-").replace(",", "-").replace('"', "")
                    out = args.runs / f"{stem}-{rule}-{tag}-s{seed}-{args.steps}.h5"
                    run = run_one(selectors, seed, args.steps, overrides + attack_sets + args.sets, out, args.ranks)
                    runs.setdefault((mom, attack, rule), []).append(run)
                    done += 1
                    last = final_error(run) if run else None
                    print(f"[{done}/{total}] {mom:20s} {attack:9s} {rule:10s} seed {seed}: "
                          f"error {'FAILED' if last is None else f'{last:.3f}'}", flush=True)
    return runs


def momentum_settings(args) -> dict:
    """The momentum settings swept: both, or plain SGD only for the time layout (time per step does
    not depend on the optimiser)."""
    return {k: v for k, v in MOMENTUM.items() if args.layout != "time" or not v}


def measure(runs: list, fn) -> list:
    return [fn(run) if run else None for run in runs]


def grid_table(args, runs: dict) -> list[str]:
    err = {key: measure(v, final_error) for key, v in runs.items()}
    picked = {key: measure(v, byzantine_selected) for key, v in runs.items()}
    lines = [
        "# Attack table: spambase, n = 20, f = 6",
        "",
        f"Final test error (mean ± standard deviation over seeds {', '.join(map(str, args.seeds))}) after "
        f"{args.steps} steps; 6 of the 20 workers Byzantine (none: 0 Byzantine, the rule still told f = 6);",
        "omniscient adversary; minibatch 3, MLP 57-20-20-2, SGD lr 0.05; the sweep jobs/attack-table.toml.",
        f"Each run: `mpiexec -n {args.ranks} krum-mpi run --from-study jobs/attack-table.toml --cell attack.name=A "
        "--cell aggregator.name=R --set run.seed=S` (worker momentum adds `--set optimizer.momentum=0.9 "
        "--set optimizer.momentum_at=worker`).",
        "A row `NAME:key=value` is that cell with the attack parameter added (`--set attack.key=value`).",
        "0.39-0.40 is the error of always answering the majority class (diverged or stuck training).",
        "What these numbers say about ALIE and Krum, and why: docs/attacks.md, section \"Measured\".",
        f"Generated by `python scripts/attack_table.py` on {datetime.date.today().isoformat()}.",
        "",
    ]
    for mom in MOMENTUM:
        lines += [f"## {mom}", "", "| attack | " + " | ".join(args.rules) + " |",
                  "|---|" + "---|" * len(args.rules)]
        for attack in args.attacks:
            lines.append(f"| {attack} | " + " | ".join(cell(err[(mom, attack, r)]) for r in args.rules) + " |")
        lines += ["", "Steps where a Byzantine vector was selected (krum: the one chosen; multi-krum: any of the m):",
                  "", "| attack | " + " | ".join(r for r in args.rules if r != "average") + " |",
                  "|---|" + "---|" * (len(args.rules) - ("average" in args.rules))]
        for attack in args.attacks:
            if attack == "none":
                continue
            lines.append(f"| {attack} | " + " | ".join(cell(picked[(mom, attack, r)], percent=True)
                                                       for r in args.rules if r != "average") + " |")
        lines.append("")
        lines += time_lines(args, runs, mom)
    return lines


def step_times(run: dict) -> np.ndarray:
    """The run's per-step aggregation times in seconds (timing/aggregate_s), NaN dropped."""
    t = np.asarray(run["timing"]["aggregate_s"], dtype=float)
    return t[np.isfinite(t)]


def recomputed_per_step(run: dict) -> float:
    r = run["selection"].get("recomputed")
    return float("nan") if r is None or np.size(r) == 0 else float(np.mean(r))


def median_ms(runs: list) -> float | None:
    times = [step_times(r) for r in runs if r is not None]
    times = [t for t in times if t.size]
    return float(np.median(np.concatenate(times))) * 1e3 if times else None


def time_lines(args, runs: dict, mom: str) -> list[str]:
    """Per rule and attack other than none: the median per-step aggregation time (all steps of all
    seeds) beside the none cell's of the same rule, their ratio, and the distances recomputed per
    step. Only when ``none`` and a near-tie attack are among the attacks (grid layout)."""
    timed = [a for a in args.attacks if a != "none"]
    if "none" not in args.attacks or (args.layout == "grid" and not any(a.startswith("near-tie") for a in timed)):
        return []
    if args.layout == "grid":
        timed = [a for a in timed if a.startswith("near-tie")]
    lines = ["Median aggregation time per step (ms, the results file's `timing/aggregate_s`, every step of every seed) "
             "under the attack and in the honest run (`none`) of the same rule; recomputed: distances the "
             "certified selection refined per step (`selection/recomputed`, mean over steps):", "",
             "| rule | attack | attack step (ms) | honest step (ms) | ratio | recomputed per step |",
             "|---|---|---|---|---|---|"]
    for rule in args.rules:
        honest = median_ms(runs[(mom, "none", rule)])
        for attack in timed:
            crafted = median_ms(runs[(mom, attack, rule)])
            ratio = f"{crafted / honest:.2f}" if crafted is not None and honest else "n/a"
            recomputed = [recomputed_per_step(r) for r in runs[(mom, attack, rule)] if r is not None]
            fmt = lambda v: "failed" if v is None else f"{v:.3f}"  # noqa: E731
            rec = f"{np.nanmean(recomputed):.1f}" if recomputed and not np.isnan(recomputed).all() else "n/a"
            lines.append(f"| {rule} | {attack} | {fmt(crafted)} | {fmt(honest)} | {ratio} | {rec} |")
    return lines + [""]


def time_table(args, runs: dict) -> list[str]:
    """The aggregation time of each attack beside the honest step's, per momentum setting."""
    quoted = " ".join(f"'{a}'" if '"' in a else a for a in args.attacks)
    sets = " ".join(f"--set '{kv}'" for kv in args.sets)
    lines = [
        "# Attack table: aggregation time per step under attack and without",
        "",
        "An attack on time: the `near-tie` rows (one-ulp clones of an honest row; `variant=mirror`: pairs one",
        "ulp up and down) make every certified decision among them refine its distances. The rules' answers",
        "stay exact; this table gives what that costs per step, beside the same rule's honest run.",
        f"Generated on {datetime.date.today().isoformat()} by `python scripts/attack_table.py --layout time "
        f"--steps {args.steps} --ranks {args.ranks} --seeds {' '.join(map(str, args.seeds))} "
        f"--attacks {quoted} --rules {' '.join(args.rules)}{' ' + sets if sets else ''}`; cells of "
        "`jobs/attack-table.toml`. `average` takes no decision: its ratio is the yardstick of the machine's noise.",
        "",
    ]
    for mom in momentum_settings(args):
        lines += [f"## {mom}", ""] + time_lines(args, runs, mom)
    return lines


NAN_TWIN = ("blind", 'blind:magnitude="nan"')


def first_difference(run, twin) -> int | None:
    """The first step whose selection differs between two runs (None: identical at every step)."""
    a, b = run["selection"]["selected"], twin["selection"]["selected"]
    differs = np.flatnonzero((a != b).any(axis=1))
    return int(differs[0]) if differs.size else None


def nan_twin_lines(args, runs: dict, mom: str) -> list[str]:
    """Per rule with a selection: does the blind run select as the same run with a NaN row does?"""
    lines = ["", f"Selections of `{NAN_TWIN[0]}` against the same run with the blinding row NaN "
             f"(`{NAN_TWIN[1]}`): seeds identical at every step, else the first step that differs:", "",
             "| rule | identical seeds | first differing step per seed |", "|---|---|---|"]
    for rule in args.rules:
        pairs = list(zip(runs[(mom, NAN_TWIN[0], rule)], runs[(mom, NAN_TWIN[1], rule)]))
        if any(a is None or b is None for a, b in pairs) or pairs[0][0]["selection"]["selected"].shape[1] == 0:
            continue
        firsts = [first_difference(a, b) for a, b in pairs]
        same = sum(x is None for x in firsts)
        lines.append(f"| {rule} | {same} of {len(firsts)} | "
                     + ", ".join("-" if x is None else str(x) for x in firsts) + " |")
    return lines


def per_rule_table(args, runs: dict) -> list[str]:
    """One line per rule and attack: final error under ``args.column``; for ``blind`` attacks, the
    share of steps that selected the blinding worker and a crafted worker (n/a: no selection)."""
    quoted = " ".join(f"'{a}'" if '"' in a else a for a in args.attacks)
    lines = [
        "# Attack table, one line per rule: spambase, n = 20",
        "",
        f"Final test error (mean ± standard deviation over seeds {', '.join(map(str, args.seeds))}) after "
        f"{args.steps} steps, omniscient adversary, minibatch 3, MLP 57-20-20-2, SGD lr 0.05; the cells",
        "of `jobs/attack-table.toml` (f = 6 and 6 Byzantine workers; Bulyan, whose bound n >= 4f + 3 needs",
        "n >= 27 for f = 6: n = 27). A line `NAME:key=value` is the",
        "cell with that attack parameter added (`--set attack.key=value`). 0.39-0.40 is the error of always",
        "answering the majority class (diverged or stuck training).",
        "Selection columns: the share of steps in which the blinding worker, or any crafted worker, was among",
        "the selected rows, averaged over the seeds, counted over the steps whose training loss is finite",
        "(once the parameters are NaN every row is NaN; n/a: the rule reports no selection; nnm+ rules",
        "report the worker whose neighbourhood mean was selected).",
        f"Generated on {datetime.date.today().isoformat()} by `python scripts/attack_table.py --layout per-rule "
        f"--steps {args.steps} --ranks {args.ranks} --seeds {' '.join(map(str, args.seeds))} "
        f"--attacks {quoted} --rules {' '.join(args.rules)} --column \"{args.column}\"`; each run is "
        f"`mpiexec -n {args.ranks} python -m krum_mpi run --from-study jobs/attack-table.toml --cell attack.name=A --cell aggregator.name=R --set run.seed=S` (worker momentum adds "
        "`--set optimizer.momentum=0.9 --set optimizer.momentum_at=worker`).",
        "",
    ]
    for mom in MOMENTUM:
        lines += [f"## {mom}", "", f"| rule | attack | {args.column} | steps selecting the blinding worker "
                  "| steps selecting a crafted worker |", "|---|---|---|---|---|"]
        for rule in args.rules:
            for attack in args.attacks:
                key = (mom, attack, rule)
                blind = attack.partition(":")[0] == "blind"
                sel = [cell(measure(runs[key], lambda r, w=w: blind_selected(r, w)), percent=True) if blind else "-"
                       for w in ("blinding", "crafted")]
                lines.append(f"| {rule} | {attack} | {cell(measure(runs[key], final_error))} | {sel[0]} | {sel[1]} |")
        if all(a in args.attacks for a in NAN_TWIN):
            lines += nan_twin_lines(args, runs, mom)
        lines.append("")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
