"""A [bench] spec: one ``krum-mpi bench ARGS`` job (e.g. the aggregation kernels on a GPU node).

No sweep and no MPI: the benchmark runs once, in the study folder, so its output lands there.
"""
from __future__ import annotations

import subprocess
import sys
import time

from . import slurm
from .folder import StudyFolder


def describe(spec) -> str:
    b = spec.bench
    return (f"bench job {spec.name}: krum-mpi bench {' '.join(b['args'])} "
            f"(GPUs per node: {b['gpus']}, time limit {b['time']})")


def run_here(spec, folder: StudyFolder) -> int:
    folder.path.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "krum_mpi", "bench", *spec.bench["args"]]
    with open(folder.path / "bench.log", "a") as log:
        rc = subprocess.call(cmd, cwd=folder.path, stdout=log, stderr=subprocess.STDOUT)
    print(f"bench {spec.name}: exit {rc}; output in {folder.path} (log: bench.log)")
    return 0 if rc == 0 else 1


def submit(spec, profile: dict, folder: StudyFolder, dry_run: bool) -> int:
    if not dry_run:
        slurm.check_reachable()
    script_dir = folder.next_submission_dir()
    slurm.write_scripts(slurm.render_bench(spec, profile, str(folder.path), str(script_dir)), script_dir)
    if dry_run:
        print(f"dry run: job script in {script_dir}")
        return 0
    (folder.slurm / "logs").mkdir(parents=True, exist_ok=True)
    submitted_at = time.time()
    jobs = slurm.submit(script_dir)
    folder.add_submission({"time": submitted_at, "scripts": str(script_dir), "arrays": {}, "tasks": {},
                           "report": None, "bench": jobs["bench"]})
    print(f"submitted bench job {jobs['bench']}; its output: {folder.slurm / 'logs'}")
    return 0


def status(spec, folder: StudyFolder, slurm_states) -> str:
    records = [r for r in folder.submissions() if r.get("bench")]
    if not records:
        return f"bench {spec.name}: not submitted"
    job = records[-1]["bench"]
    state = (slurm_states or {}).get(job, "unknown")
    return f"bench {spec.name}: SLURM job {job} {state.lower()}; output in {folder.slurm / 'logs'}"
