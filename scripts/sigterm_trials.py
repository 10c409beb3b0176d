"""SIGTERM (or SIGUSR1, SIGINT) to mpiexec at random moments of a run, N times: every run must exit
with status 3 (then ``--resume`` must end bitwise equal to an uninterrupted run) or, only when the
signal came after the file was complete, 0 with the complete file bitwise equal; never 15.

    python scripts/sigterm_trials.py --trials 20 --ranks 2 [--signal USR1|INT] [--steps 1200]
        [--seed 0] [--table docs-table.md] [--bare] [--kinds "launch,ranks started"] [--launch-s 0.3] [--show-tree]

Runs on seeded synthetic data (no dataset needed), with worker momentum (per-worker state in the
checkpoint). Each rank is started as krum-mpi starts ranks itself, ``mpiexec -n R env
--block-signal=TERM --block-signal=INT --block-signal=USR1 python -m krum_mpi run ...``
(krum_mpi.launch.rank_command: the stop signals stay pending until the handlers are installed);
``--bare`` starts them without the ``env`` prefix, as a hand-typed ``mpiexec -n R krum-mpi run``
does, to show the difference. The moment of each signal is drawn from a recorded seed, in five
kinds: "launch" (0 to 0.3 s after mpiexec starts: the launcher and the interpreters starting),
"ranks started" (0 to 50 ms after every rank process exists, found in /proc: their interpreters
are starting), "start-up" (0.3 to 1 s: imports, MPI start, setup), "step" (once the results file
shows a step drawn uniformly below 80% of the run) and "after results" (once the run has printed
``results:``, the file complete). Prints one line per trial and a summary (with --table, also a
Markdown table of the trials); exit status 0 only when every trial passed.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIG = REPO / "configs" / "synthetic-krum-f6.toml"

from krum_mpi.launch import block_stops_prefix, mpiexec_path, rank_command  # noqa: E402  (this checkout's krum_mpi)

KINDS = ("launch", "ranks started", "start-up", "step", "after results")
WEIGHTS = (0.15, 0.15, 0.1, 0.45, 0.15)
BARE = False       # --bare: ranks started without the env prefix


def command(ranks: int, out: Path, steps: int, resume: bool = False, quiet: bool = True) -> list[str]:
    args = ["run", str(CONFIG), "--out", str(out), *(["--quiet"] if quiet else []), "--set", f"run.steps={steps}",
            "--set", "run.checkpoint_every=7", "--set", "run.eval_every=50", "--set", "optimizer.momentum=0.9",
            "--set", "optimizer.momentum_at=worker"] + (["--resume"] if resume else ["--force"])
    if BARE:
        return [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "krum_mpi", *args]
    return rank_command(mpiexec_path(), ranks, args)


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])     # after the command name, which may hold spaces


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc (Linux; {} where it cannot be read)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(_parent(int(entry)), []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue          # ended meanwhile
    return children


def _descendants(root: int) -> list[tuple[int, int, bytes]]:
    """(pid, depth, command line) of every process below ``root``, parents first."""
    children, found = _children(), []
    todo = [(pid, 1) for pid in children.get(root, [])]
    while todo:
        pid, depth = todo.pop(0)
        todo += [(child, depth + 1) for child in children.get(pid, [])]
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append((pid, depth, f.read()))
        except OSError:
            continue
    return found


def rank_pids(root: int, marker: bytes = b"krum") -> list[int]:
    """The processes below ``root`` (mpiexec) whose command line holds ``marker``: the ranks, from the
    moment they exec ``env`` (or Python, without the prefix; ``krum_mpi`` or the ``krum-mpi`` script)."""
    return [pid for pid, _, cmdline in _descendants(root) if marker in cmdline]


def process_tree(root: int) -> str:
    """The processes below ``root`` as ``depth:program`` (``2:hydra_pmi_proxy 2:python``): which ranks
    had exec'd their command when the signal came (--show-tree)."""
    names = [(depth, os.path.basename(cmdline.split(b"\0")[0].decode(errors="replace")))
             for _, depth, cmdline in _descendants(root)]
    return " ".join(f"{depth}:{name}" for depth, name in names) or "(none)"


def wait_for_ranks(proc, ranks: int, timeout_s: float = 60) -> bool:
    """Poll until ``ranks`` rank processes exist below ``proc`` (True), or it ended or timed out."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        if len(rank_pids(proc.pid)) >= ranks:
            return True
        time.sleep(0.002)
    return False


def outcome(path: Path) -> dict:
    """What must be equal after a resume: every step's loss and accuracy (functions of the
    parameters of that step), every selection, and the final parameters where the file holds them."""
    with h5py.File(path, "r") as h5:
        found = {"status": str(h5.attrs["status"]), "loss": h5["metrics/loss"][()],
                 "acc": h5["metrics/test_accuracy"][()], "selected": h5["selection/selected"][()]}
        if "checkpoint/params" in h5:
            found["params"] = h5["checkpoint/params"][()]
    return found


def steps_done(path: Path) -> int:
    try:
        with h5py.File(path, "r") as h5:
            return int(h5.attrs["steps_done"])
    except (OSError, KeyError):    # not there yet, or being replaced
        return -1


def wait_for_step(proc, path: Path, step: int) -> None:
    while proc.poll() is None and steps_done(path) < step:
        time.sleep(0.02)


def same(a: dict, b: dict) -> bool:
    keys = ["loss", "acc", "selected"] + (["params"] if "params" in a and "params" in b else [])
    return a["status"] == b["status"] == "complete" and all(a[k].tobytes() == b[k].tobytes() for k in keys)


def wait_for_results_line(proc) -> None:
    """Read the run's stdout until it prints ``results:`` (the file is complete then) or ends."""
    for line in proc.stdout:
        if line.startswith("results:"):
            return


def trial(args, rng, folder: Path, number: int, expected: dict, signum) -> dict:
    """One run signalled at a drawn moment: what it exited with, what the file held, and the verdict."""
    out = folder / f"t{number}.h5"
    kinds = [(k, w) for k, w in zip(KINDS, WEIGHTS) if k in args.kinds]
    kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
    delay = {"launch": rng.uniform(0.0, args.launch_s), "ranks started": rng.uniform(0.0, 0.05)}.get(
        kind, rng.uniform(0.3, 1.0))
    target = rng.randrange(1, int(0.8 * args.steps))
    t_launch = time.monotonic()
    proc = subprocess.Popen(command(args.ranks, out, args.steps, quiet=kind != "after results"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    if kind in ("launch", "start-up"):
        time.sleep(delay)
    elif kind == "ranks started":
        wait_for_ranks(proc, args.ranks)
        time.sleep(delay)
    elif kind == "step":
        wait_for_step(proc, out, target)
    else:
        wait_for_results_line(proc)
    tree = process_tree(proc.pid) if args.show_tree else ""
    at = time.monotonic() - t_launch
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    rc = proc.returncode
    status, done = "no file", -1
    if out.exists():
        with h5py.File(out, "r") as h5:
            status, done = str(h5.attrs["status"]), int(h5.attrs["steps_done"])
    resumed = None
    if rc == 3:
        resumed = subprocess.run(command(args.ranks, out, args.steps, resume=True), cwd=REPO, capture_output=True,
                                 text=True)
        equal = resumed.returncode == 0 and same(outcome(out), expected)
        ok = equal
    else:
        equal = rc == 0 and status == "complete" and same(outcome(out), expected)
        ok = equal
    return {"number": number, "kind": kind, "at": at, "rc": rc, "status": status, "steps_done": done,
            "resume_rc": None if resumed is None else resumed.returncode, "equal": equal, "ok": ok,
            "banner": "BAD TERMINATION" in err, "tree": tree, "err": err, "resume_err": "" if resumed is None else resumed.stderr}


def table(rows: list) -> str:
    head = ("| trial | moment | signal at | exit | file then | resume exit | final file bitwise equal | verdict |\n"
            "|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['number'] + 1} | {r['kind']} | {r['at']:.2f} s | {r['rc']}{' (BAD TERMINATION)' if r['banner'] else ''} "
        f"| {r['status']}, {max(r['steps_done'], 0)} steps | {'-' if r['resume_rc'] is None else r['resume_rc']} "
        f"| {'yes' if r['equal'] else 'no'} | {'ok' if r['ok'] else 'FAILED'} |\n" for r in rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--signal", choices=("TERM", "USR1", "INT"), default="TERM")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", type=Path, help="also write the trials as a Markdown table to this file")
    p.add_argument("--bare", action="store_true",
                   help="start the ranks without the env --block-signal prefix (as a hand-typed mpiexec does)")
    p.add_argument("--launch-s", type=float, default=0.3,
                   help="a 'launch' moment is drawn from 0 to this many seconds after mpiexec starts (default 0.3)")
    p.add_argument("--show-tree", action="store_true",
                   help="print the processes below mpiexec at each signal (which ranks had exec'd their command)")
    p.add_argument("--kinds", default=",".join(KINDS),
                   help=f"the kinds of moment to draw from, comma-separated (default: all: {','.join(KINDS)})")
    args = p.parse_args()
    args.kinds = [k.strip() for k in args.kinds.split(",")]
    if not args.kinds or any(k not in KINDS for k in args.kinds):
        p.error(f"--kinds: choose among {', '.join(KINDS)}")
    global BARE
    BARE = args.bare
    rng = random.Random(args.seed)
    signum = getattr(signal, f"SIG{args.signal}")
    folder = Path(tempfile.mkdtemp(prefix="krum-sigterm-"))
    ref = folder / "ref.h5"
    t0 = time.monotonic()
    done = subprocess.run(command(args.ranks, ref, args.steps), cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        print(f"reference run failed ({done.returncode}): {done.stderr}", file=sys.stderr)
        return 1
    expected = outcome(ref)
    form = "bare (--bare)" if BARE else " ".join(block_stops_prefix()) or "bare (this env has no --block-signal)"
    print(f"reference: {args.steps} steps on {args.ranks} ranks in {wall:.1f} s; SIG{args.signal} at random moments; "
          f"ranks started: {form}")
    rows = []
    for number in range(args.trials):
        r = trial(args, rng, folder, number, expected, signum)
        rows.append(r)
        print(f"trial {number + 1:2d}: {r['kind']:13s} signal at {r['at']:5.2f} s, exit {r['rc']:3d} "
              f"({r['status']}, {max(r['steps_done'], 0)} steps), resume exit {r['resume_rc']}, "
              f"bitwise equal: {r['equal']}  {'ok' if r['ok'] else 'FAILED'}"
              + (f"\n  processes below mpiexec at the signal: {r['tree']}" if r["tree"] else ""), flush=True)
        if not r["ok"]:
            print(f"  stderr: {r['err'].strip()[-600:]}\n  resume stderr: {r['resume_err'].strip()[-600:]}", flush=True)
    passed = sum(r["ok"] for r in rows)
    print(f"{passed} of {args.trials} trials passed (SIG{args.signal}, mpiexec -n {args.ranks}, ranks {form}); "
          f"files in {folder}")
    if args.table:
        args.table.write_text(table(rows))
    if passed == args.trials:
        shutil.rmtree(folder)
    return 0 if passed == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
