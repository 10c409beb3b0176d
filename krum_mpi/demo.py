"""``krum-mpi demo``: the quick-start job.

Runs the Krum paper's Figure 4 setting (spambase, n = 20 workers, 0 or 6 Gaussian Byzantine
workers, averaging vs Krum) as four real MPI runs with ``mpiexec``, then prints a summary table and
where the HDF5 files are. If spambase is not on disk it is downloaded; if that is impossible (no
network), the demo says so and runs the same comparison on seeded synthetic data instead.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .errors import KrumMPIError
from .launch import mpiexec_path

PRESETS = ["paper-fig4-average-f0", "paper-fig4-average-f6", "paper-fig4-krum-f0", "paper-fig4-krum-f6"]
SYNTHETIC = ["data.name=synthetic", "data.n_features=57", "data.n_train=4000", "data.n_test=1000"]


def configs_dir() -> Path:
    """configs/ of the current folder, else of the source tree this package lives in."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / "configs" / f"{PRESETS[0]}.toml").is_file():
            return base / "configs"
    raise KrumMPIError("configs/paper-fig4-*.toml not found: run the demo from the krum-mpi source folder")


def spambase_available() -> bool:
    from .data import data_dir

    if (data_dir() / "spambase" / "spambase.data").is_file():
        return True
    print("spambase not found locally: downloading it (krum-mpi data download spambase) ...", flush=True)
    done = subprocess.run([sys.executable, "-m", "krum_mpi", "data", "download", "spambase"])
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
    extra = [] if spambase_available() else SYNTHETIC
    if extra:
        print("NOTE: spambase could not be downloaded; running the same comparison on synthetic data "
              "(57 features, 4000 samples). Set KRUM_MPI_DATA to a folder holding spambase/spambase.data "
              "to run the paper's setting.", flush=True)
    if args.steps:
        extra = extra + [f"run.steps={args.steps}"]
    files = []
    for name in PRESETS:
        path = out / f"{name}.h5"
        cmd = [mpiexec, "-n", str(args.ranks), sys.executable, "-m", "krum_mpi", "run",
               str(cfg_dir / f"{name}.toml"), "--out", str(path), "--force", "--quiet"]
        for item in extra:
            cmd += ["--set", item]
        print(f"running {name} on {args.ranks} MPI ranks ...", flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise KrumMPIError(f"the run {name} failed (command: {' '.join(cmd)})")
        files.append(path)

    from .summary import format_table, summarize_file
    print()
    print(format_table([summarize_file(f) for f in files]))
    print(f"\nHDF5 results: {out.resolve()}/ ({len(files)} files; schema in docs/results-schema.md)")
    return 0
