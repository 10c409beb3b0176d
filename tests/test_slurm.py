"""`krum-mpi study submit|status` against a real SLURM: the single-node test cluster of hpc/slurm-test,
started once per session with two slurmd (nodes n1 and n2) on this host, and stopped even on failure.

Needs Debian's slurm-wlm and munge (hpc/slurm-test/install.sh) and root; skips with the reason otherwise.
"""
import json
import os
import shutil
import subprocess
import textwrap
import time
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import run_cli
from krum_mpi.launch import block_stops_prefix
from krum_mpi.study import load_spec, make_plan

pytestmark = [pytest.mark.slurm, pytest.mark.mpi, pytest.mark.slow]  # slow: minutes (left out of a plain run)

REPO = Path(__file__).resolve().parents[1]
SLURM_TEST = REPO / "hpc" / "slurm-test"
JOB_TIMEOUT_S = 180
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"}

# Two training runs on 2 ranks, and one that passes every check but fails when it starts (its data
# file does not exist), in array tasks of two runs.
SPEC = """
[study]
name = "slurm-small"

[base.run]
steps = 20
eval_every = 10
[base.workers]
n = 8
[base.data]
name = "synthetic"
n_train = 1000
n_test = 100
n_features = 8
[base.model]
name = "logistic"

[launch]
ranks = 2
time = "00:03:00"
group = 2

[sweep]
"aggregator.name" = ["average", "krum"]
data = [{ "data.name" = "synthetic" }, { "data.name" = "spambase", "data.path" = "/nonexistent/spambase.data" }]

[[exclude]]
"data.name" = "spambase"
"aggregator.name" = "krum"
"""


class Cluster:
    def __init__(self, folder: Path):
        self.folder = folder
        self.env = {"SLURM_CONF": str(folder / "slurm.conf")}

    def states(self) -> dict:
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T"], capture_output=True,
                             text=True, timeout=30, env={**os.environ, **self.env})
        return dict(line.split("|") for line in out.stdout.split())

    def wait(self, job_ids, timeout=JOB_TIMEOUT_S) -> dict:
        """Wait until every task of the given jobs has ended; return their states."""
        deadline = time.monotonic() + timeout
        while True:
            mine = {k: v for k, v in self.states().items() if k.split("_")[0] in set(job_ids)}
            seen = {k.split("_")[0] for k in mine}
            if seen == set(job_ids) and not ACTIVE & set(mine.values()):
                return mine
            if time.monotonic() > deadline:
                logs = "".join(p.read_text()[-2000:] for p in (self.folder / "log").glob("*.log"))
                pytest.fail(f"jobs {job_ids} not done after {timeout}s: {mine}\n{logs}")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    sbin = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    if shutil.which("slurmctld", path=sbin) is None or shutil.which("munged", path=sbin) is None:
        pytest.skip("no test SLURM: slurmctld/munged not installed (run hpc/slurm-test/install.sh, which "
                    "installs Debian's slurm-wlm and munge)")
    if os.geteuid() != 0:
        pytest.skip("the test SLURM runs its daemons as root")
    folder = tmp_path_factory.mktemp("slurm")
    try:
        start = subprocess.run([SLURM_TEST / "start.sh", folder, "--nodes", "2"], capture_output=True,
                               text=True, timeout=90)
        assert start.returncode == 0, f"test SLURM did not start: {start.stderr}"
        yield Cluster(folder)
    finally:
        subprocess.run([SLURM_TEST / "stop.sh", folder], capture_output=True, timeout=90)


@pytest.fixture(scope="module")
def study(slurm_cluster, tmp_path_factory):
    """The small study, submitted once and waited for (array tasks and the analysis job)."""
    root = tmp_path_factory.mktemp("study")
    spec = root / "study.toml"
    spec.write_text(textwrap.dedent(SPEC))
    folder = root / "out"
    submit = run_cli(["study", "submit", spec, "--profile", "local-test", "--dir", folder],
                     env=slurm_cluster.env, cwd=root, timeout=120)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    (record,) = json.loads((folder / "slurm" / "submissions.json").read_text())
    jobs = list(record["arrays"].values()) + [record["report"]]
    states = slurm_cluster.wait(jobs)
    plan = make_plan(load_spec(spec))
    good = [r.id for r in plan.runs if r.config["data"]["name"] == "synthetic"]
    bad = [r.id for r in plan.runs if r.config["data"]["name"] == "spambase"]
    return dict(spec=spec, folder=folder, record=record, states=states, good=good, bad=bad, root=root)


def test_array_tasks_run_mpi_through_srun_and_write_results(study):
    assert len(study["good"]) == 2 and len(study["bad"]) == 1
    (array_job,) = study["record"]["arrays"].values()
    ids = [r.id for r in make_plan(load_spec(study["spec"])).runs]
    assert list(study["record"]["tasks"].values()) == [[ids[:2], ids[2:]]]   # launch.group = 2
    for run_id in study["good"]:
        with h5py.File(study["folder"] / "runs" / f"{run_id}.h5", "r") as f:
            assert f.attrs["status"] == "complete"
            prov = json.loads(f.attrs["provenance"])
            assert prov["n_ranks"] == 2 and prov["env"]["SLURM_ARRAY_JOB_ID"] == array_job
    logs = list((study["folder"] / "slurm" / "logs").glob(f"*-{array_job}_*.out"))
    assert len(logs) == 2   # two array tasks (two runs each at most)
    for log in logs:
        assert "launcher: srun --mpi=pmi2 gives one MPI world of 2 ranks" in log.read_text()


def test_failed_run_reported_with_its_log_tail(study, slurm_cluster):
    status = run_cli(["study", "status", study["folder"]], env=slurm_cluster.env, timeout=60)
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert "2 done, 0 running, 1 failed, 0 pending (of 3 runs)" in out
    (bad,) = study["bad"]
    assert f"--- failed run {bad} (exit status 2 in SLURM job" in out
    tail = out.split(f"--- failed run {bad}")[1]
    assert "spambase not found at /nonexistent/spambase.data" in tail


def test_analysis_job_runs_after_every_array_task(study):
    report = study["record"]["report"]
    assert study["states"][report] in ("COMPLETED", "FAILED")   # it ran (not cancelled, not stuck)
    (log,) = (study["folder"] / "slurm" / "logs").glob(f"*-report-{report}.out")
    started = datetime.fromisoformat(log.read_text().split("report: started ")[1].split()[0])
    ends = [datetime.fromisoformat(line.split(", ")[-1])
            for p in (study["folder"] / "runs").glob("*.log")
            for line in p.read_text().splitlines() if line.startswith("== exit ")]
    assert len(ends) == 3 and started >= max(ends)


def test_local_run_of_the_same_study_selects_the_same_workers(study, tmp_path):
    local = run_cli(["study", "run", study["spec"], "--local", "--jobs", "2", "--dir", tmp_path],
                    cwd=study["root"], timeout=120)
    assert local.returncode == 1   # the same run fails here too
    for run_id in study["good"]:
        with h5py.File(study["folder"] / "runs" / f"{run_id}.h5", "r") as a, \
                h5py.File(tmp_path / "runs" / f"{run_id}.h5", "r") as b:
            assert a["selection/selected"].shape[0] == 20
            np.testing.assert_array_equal(a["selection/selected"][()], b["selection/selected"][()])
            np.testing.assert_array_equal(a["metrics/loss"][()], b["metrics/loss"][()])


def test_second_submit_runs_nothing_already_finished(study, slurm_cluster):
    folder = study["folder"]
    stamps = {i: os.stat(folder / "runs" / f"{i}.h5").st_mtime_ns for i in study["good"]}
    again = run_cli(["study", "submit", study["spec"], "--profile", "local-test", "--dir", folder,
                     "--no-report"], env=slurm_cluster.env, cwd=study["root"], timeout=120)
    assert again.returncode == 0, again.stderr
    assert "3 runs: 2 complete, 0 queued or running, 1 to submit" in again.stdout
    records = json.loads((folder / "slurm" / "submissions.json").read_text())
    assert len(records) == 2 and records[1]["report"] is None
    assert [ids for tasks in records[1]["tasks"].values() for ids in tasks] == [study["bad"]]
    slurm_cluster.wait(list(records[1]["arrays"].values()))
    assert stamps == {i: os.stat(folder / "runs" / f"{i}.h5").st_mtime_ns for i in study["good"]}
    assert (folder / "runs" / f"{study['bad'][0]}.log").read_text().count("== run ") == 2


def test_two_node_job_runs_one_training_across_both_nodes(slurm_cluster, tmp_path):
    spec = tmp_path / "study.toml"
    spec.write_text(textwrap.dedent(SPEC).split("[launch]")[0] +
                    '[launch]\nranks = 2\nnodes = 2\ntime = "00:03:00"\n[sweep]\n"aggregator.name" = ["krum"]\n')
    submit = run_cli(["study", "submit", spec, "--profile", "local-test", "--dir", tmp_path / "out",
                      "--no-report"], env=slurm_cluster.env, cwd=tmp_path, timeout=120)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    (record,) = json.loads((tmp_path / "out" / "slurm" / "submissions.json").read_text())
    (script, job), = record["arrays"].items()
    assert "-n2-" in script
    states = slurm_cluster.wait([job])
    assert states == {f"{job}_0": "COMPLETED"}
    (log,) = (tmp_path / "out" / "slurm" / "logs").glob(f"*-{job}_0.out")
    assert "gives one MPI world of 2 ranks on nodes: n1 n2" in log.read_text()
    (h5,) = (tmp_path / "out" / "runs").glob("*.h5")
    with h5py.File(h5, "r") as f:
        assert f.attrs["status"] == "complete"
        prov = json.loads(f.attrs["provenance"])
    assert prov["n_ranks"] == 2
    assert prov["env"]["SLURM_JOB_NUM_NODES"] == "2" and prov["env"]["SLURM_JOB_NODELIST"] == "n[1-2]"


def test_unreachable_slurm_is_reported_before_anything_is_written(slurm_cluster, tmp_path):
    spec = tmp_path / "study.toml"
    spec.write_text(textwrap.dedent(SPEC))
    conf = tmp_path / "down.conf"   # the test cluster's config, but a port nobody listens on
    text = (slurm_cluster.folder / "slurm.conf").read_text()
    conf.write_text("\n".join("SlurmctldPort=9" if line.startswith("SlurmctldPort=") else line
                              for line in text.splitlines()) + "\n")
    out = run_cli(["study", "submit", spec, "--profile", "local-test", "--dir", tmp_path / "out"],
                  env={"SLURM_CONF": str(conf)}, cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 + out.stderr.count("note: ")
    assert "krum-mpi: error: SLURM not reachable: 'scontrol ping' says:" in out.stderr
    assert not (tmp_path / "out").exists()


def _one_krum_run_under(profile, slurm_cluster, tmp_path) -> str:
    """Submit one Krum run of SPEC (2 ranks, one node) with the site profile ``profile``, wait for its
    array task to complete; return the task's log."""
    spec = tmp_path / "study.toml"
    spec.write_text(textwrap.dedent(SPEC).split("[sweep]")[0] + '[sweep]\n"aggregator.name" = ["krum"]\n')
    submit = run_cli(["study", "submit", spec, "--profile", profile, "--dir", tmp_path / "out", "--no-report"],
                     env=slurm_cluster.env, cwd=tmp_path, timeout=120)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    (record,) = json.loads((tmp_path / "out" / "slurm" / "submissions.json").read_text())
    (job,) = record["arrays"].values()
    assert slurm_cluster.wait([job]) == {f"{job}_0": "COMPLETED"}
    return next((tmp_path / "out" / "slurm" / "logs").glob(f"*-{job}_0.out")).read_text()


def test_a_launcher_that_starts_singletons_is_caught_and_mpiexec_takes_over(slurm_cluster, tmp_path):
    """`srun --mpi=none` starts SLURM_NTASKS worlds of size 1: the job's probe sees it and falls back
    to mpiexec inside the allocation, which gives one world of SLURM_NTASKS ranks."""
    profile = tmp_path / "singletons.toml"
    profile.write_text((REPO / "hpc" / "profiles" / "local-test.toml").read_text()
                       .replace('srun = "srun --mpi=pmi2"', 'srun = "srun --mpi=none"'))
    text = _one_krum_run_under(profile, slurm_cluster, tmp_path)
    assert "launcher: srun --mpi=none does not give one MPI world of 2 ranks (got: 1 n1 1 n1)" in text
    assert "mpiexec -n 2 gives one MPI world of 2 ranks" in text
    (h5,) = (tmp_path / "out" / "runs").glob("*.h5")
    with h5py.File(h5, "r") as f:
        assert f.attrs["status"] == "complete" and json.loads(f.attrs["provenance"])["n_ranks"] == 2


def test_a_run_whose_world_never_comes_up_is_stopped_and_started_with_the_next_launcher(slurm_cluster, tmp_path):
    """A launcher that passes the probe but leaves the run's ranks blocked before their world is up
    (srun's PMI-2 has done it on two nodes, ranks stuck in MPI_Init): here a wrapper around srun
    whose run ranks never start krum-mpi. After the profile's mpi.start_s without the run's
    .started file, the job stops that run and starts it again under mpiexec, which completes it."""
    wrapper = tmp_path / "srun-stuck-run"
    wrapper.write_text('#!/bin/bash\ncase " $* " in *" -m krum_mpi run "*) exec srun --mpi=pmi2 sleep 600 ;; esac\n'
                       'exec srun --mpi=pmi2 "$@"\n')
    wrapper.chmod(0o755)
    profile = tmp_path / "stuck.toml"
    profile.write_text((REPO / "hpc" / "profiles" / "local-test.toml").read_text()
                       .replace('srun = "srun --mpi=pmi2"', f'srun = "{wrapper}"')
                       .replace("start_s = 30 ", "start_s = 5 "))
    text = _one_krum_run_under(profile, slurm_cluster, tmp_path)
    assert f"launcher: {wrapper} gives one MPI world of 2 ranks" in text
    assert "mpiexec -n 2 gives one MPI world of 2 ranks" in text
    (h5,) = (tmp_path / "out" / "runs").glob("*.h5")
    log = h5.with_suffix(".log").read_text()
    assert f"== the run's MPI world was not up after 5 s under {wrapper}: stopping it" in log
    assert log.count("-m krum_mpi run") == 2 and "== exit 0" in log
    assert not h5.with_suffix(".started").exists()       # removed once the run has ended
    with h5py.File(h5, "r") as f:
        assert f.attrs["status"] == "complete" and json.loads(f.attrs["provenance"])["n_ranks"] == 2


def test_preempted_run_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    """SIGTERM to the batch script (as preemption sends it; `--signal=B:USR1@120` before a time limit
    goes the same way) is forwarded through srun to every rank: they stop at one step, rank 0
    checkpoints, the run exits 3, the task requeues itself and the requeued start resumes from the
    checkpoint to a complete run."""
    spec = tmp_path / "study.toml"
    long_run = SPEC.replace("steps = 20", "steps = 4000\ncheckpoint_every = 20")
    spec.write_text(textwrap.dedent(long_run).split("[launch]")[0] +
                    '[launch]\nranks = 2\nnodes = 2\ntime = "00:03:00"\n[sweep]\n"aggregator.name" = ["krum"]\n')
    submit = run_cli(["study", "submit", spec, "--profile", "local-test", "--dir", tmp_path / "out", "--no-report"],
                     env=slurm_cluster.env, cwd=tmp_path, timeout=120)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    (record,) = json.loads((tmp_path / "out" / "slurm" / "submissions.json").read_text())
    (job,) = record["arrays"].values()
    runs = tmp_path / "out" / "runs"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:                                   # wait until the run has checkpointed a few times
        files = list(runs.glob("*.h5"))
        if files:
            try:
                with h5py.File(files[0], "r") as f:
                    if f.attrs["steps_done"] >= 100:
                        break
            except (OSError, KeyError):
                pass
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.2)
    signal = subprocess.run(["scancel", "--batch", "--signal=TERM", f"{job}_0"], capture_output=True, text=True,
                            timeout=30, env={**os.environ, **slurm_cluster.env})
    assert signal.returncode == 0, signal.stderr
    env = {**os.environ, **slurm_cluster.env}
    run_log = files[0].with_suffix(".log")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while "requeueing" not in run_log.read_text():       # the task checkpointed and requeued itself
        assert time.monotonic() < deadline, f"no requeue after the signal:\n{run_log.read_text()[-3000:]}"
        time.sleep(0.2)
    while True:   # SLURM holds a requeued job for a while (BeginTime); a test need not wait for that
        state = subprocess.run(["squeue", "-h", "-t", "all", "-j", f"{job}_0", "-o", "%T"], capture_output=True,
                               text=True, timeout=30, env=env).stdout.strip()
        if state != "PENDING" and "== run" in run_log.read_text().split("requeueing", 1)[1]:
            break                                            # the requeued task has started again
        if state == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job}_0", "StartTime=now"], capture_output=True,
                           timeout=30, env=env)
        assert time.monotonic() < deadline, f"the requeued task did not start again (state {state!r})"
        time.sleep(0.5)
    assert slurm_cluster.wait([job]) == {f"{job}_0": "COMPLETED"}
    (h5,) = files
    with h5py.File(h5, "r") as f:
        assert f.attrs["status"] == "complete" and f.attrs["steps_done"] == 4000
        resumed = list(f.attrs["resumed_at_steps"])
        np.testing.assert_array_equal(f["metrics/step"][()], np.arange(4000))
    assert len(resumed) == 1 and 100 <= resumed[0] < 4000
    log = h5.with_suffix(".log").read_text()
    assert "interrupted with a checkpoint, requeueing" in log
    assert "interrupted by a signal" in log
    if block_stops_prefix():   # each rank started with the stop signals blocked until its handlers are in
        assert " env --block-signal=TERM --block-signal=INT --block-signal=USR1 " in log


def test_a_two_task_slice_of_the_review_cluster_spec_completes(slurm_cluster, tmp_path, spambase_file):
    """`--part point2-batch --limit 6` submits 6 runs of studies/review-cluster.toml (4 ranks each, groups
    of 5): two array tasks, then the analysis job; all complete and the report has point 2."""
    spec = REPO / "studies" / "review-cluster.toml"
    folder = tmp_path / "out"
    submit = run_cli(["study", "submit", spec, "--profile", "local-test", "--dir", folder, "--part", "point2-batch",
                      "--limit", "6"], env={**slurm_cluster.env, "KRUM_MPI_DATA": str(spambase_file.parents[1])},
                     cwd=tmp_path, timeout=300)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    (record,) = json.loads((folder / "slurm" / "submissions.json").read_text())
    tasks = [ids for script_tasks in record["tasks"].values() for ids in script_tasks]
    assert [len(ids) for ids in tasks] == [5, 1]
    states = slurm_cluster.wait(list(record["arrays"].values()) + [record["report"]], timeout=900)
    assert set(states.values()) == {"COMPLETED"}, states
    for run_id in (i for ids in tasks for i in ids):
        with h5py.File(folder / "runs" / f"{run_id}.h5", "r") as h5:
            assert h5.attrs["status"] == "complete" and json.loads(h5.attrs["config"])["run"]["name"] == "point2-batch"
    report = (folder / "report" / "report.md").read_text()
    assert "## 2. How cost and payoff change" in report and "By minibatch size" in report
