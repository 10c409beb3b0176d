"""``krum-mpi demo``: the quick-start job.

Runs the Krum paper's Figure 4 setting (spambase, n = 20 workers, 0 or 6 Gaussian Byzantine
workers, averaging vs Krum) as four real MPI runs with ``mpiexec``, then prints a summary table and
where the HDF5 files are. If spambase is not on disk it is downloaded; if that is impossible (no
network), the demo says so and runs the same comparison on seeded synthetic data of spambase's
shape instead (the offline presets configs/synthetic-*.toml); files and table then say "synthetic".
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .errors import KrumMPIError
from .launch import mpiexec_path, rank_command

SETTINGS = ["average-f0", "average-f6", "krum-f0", "krum-f6"]
PAPER, OFFLINE = "paper-fig4", "synthetic"   # the presets' prefixes: spambase, or its synthetic twin


def configs_dir() -> Path:
    """configs/ of the current folder, else of the source tree this package lives in."""
    wanted = [f"{prefix}-{s}.toml" for prefix in (PAPER, OFFLINE) for s in SETTINGS]
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if all((base / "configs" / name).is_file() for name in wanted):
            return base / "configs"
    raise KrumMPIError("configs/paper-fig4-*.toml and configs/synthetic-*.toml not found: run the demo from "
                       "the krum-mpi source folder")


def spambase_available() -> bool:
    """spambase on disk, or downloaded now. The download's own failure message stays quiet: offline
    is an expected case here, and the demo says what it does instead."""
    from .data import data_dir

    if (data_dir() / "spambase" / "spambase.data").is_file():
        return True
    print("spambase not found locally: downloading it (krum-mpi data download spambase) ...", flush=True)
    done = subprocess.run([sys.executable, "-m", "krum_mpi", "data", "download", "spambase"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return done.returncode == 0


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="krum-mpi demo", description=__doc__.split("\n\n")[1])
    p.add_argument("--ranks", type=int, default=4, help="MPI ranks (default 4; oversubscribing is fine)")
    p.add_argument("--out", default="results/demo", help="folder for the results files")
    p.add_argument("--steps", type=int, default=None, help="override run.steps (default: the presets' 500)")
    args = p.parse_args(argv)
    if args.ranks < 1:
        raise KrumMPIError(f"--ranks {args.ranks} must be >= 1")

    mpiexec, cfg_dir, out = mpiexec_path(), configs_dir(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = PAPER if spambase_available() else OFFLINE
    if prefix == OFFLINE:
        print("offline: running the same comparison on synthetic data (spambase's shape: 57 features, "
              "3,680 training samples, seeded). 'krum-mpi data download spambase' shows why spambase could "
              "not be fetched; with it on disk (or KRUM_MPI_DATA naming a folder that holds "
              "spambase/spambase.data) the demo runs the paper's setting.", flush=True)
    extra = [f"run.steps={args.steps}"] if args.steps else []
    files = []
    for setting in SETTINGS:
        name = f"{prefix}-{setting}"
        path = out / f"{name}.h5"
        cmd = rank_command(mpiexec, args.ranks, ["run", cfg_dir / f"{name}.toml", "--out", path, "--force", "--quiet"])
        for item in extra:
            cmd += ["--set", item]
        print(f"running {name} on {args.ranks} MPI ranks ...", flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise KrumMPIError(f"the run {name} failed (command: {' '.join(cmd)})")
        files.append(path)

    from .summary import format_table, summarize_file
    print()
    print(format_table([summarize_file(f) for f in files]))
    data = "spambase (the Krum paper's Figure 4 setting)" if prefix == PAPER else \
        "synthetic, spambase's shape (spambase could not be downloaded)"
    print(f"\ndata: {data}")
    print(f"HDF5 results: {out.resolve()}/ ({len(files)} files; schema in docs/results-schema.md)")
    return 0
