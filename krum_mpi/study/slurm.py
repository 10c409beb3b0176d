"""SLURM: site profiles, job script rendering, submission, and job states from squeue / sacct.

A study becomes one array job per launch shape (ranks, nodes, GPUs, time limit), one array task
per run (or per ``launch.group`` runs), and an analysis job that depends on them with ``afterany``.
Everything a job needs is in its script (the base config inline, each run's overrides in a ``case``),
so a rendered script can be submitted with plain ``sbatch`` too. Scripts are rendered when a study is
submitted, for the site profile chosen then; ``krum-mpi study render`` writes them for reading.
"""
from __future__ import annotations

import getpass
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from .. import config
from ..errors import ConfigError, KrumMPIError
from ..launch import BLOCK_STOPS, STARTED_FILE_ENV
from . import templates
from .folder import EXIT, LOG, LOGS_DIR, RESULT, RUNS_DIR, STARTED
from .spec import format_time, parse_time

PROFILE_DIRS = [Path(__file__).resolve().parents[2] / "hpc" / "profiles", Path("hpc") / "profiles"]
PROFILE_DEFAULTS = {
    "slurm": {
        "partition": "",        # -p; "" = the cluster's default partition
        "gpu_partition": "",    # -p for jobs that need GPUs; "" = partition
        "account": "",          # -A
        "qos": "",              # --qos
        "constraint": "",       # -C, e.g. "a100"
        "cpus_per_task": 1,     # CPU cores per MPI rank
        "mem_per_cpu": "",      # e.g. "2G"; "" = the cluster's default
        "gpus_per_node": 1,     # GPUs per node for runs on a GPU (run.device or workers.device = gpu)
        "max_parallel": 0,      # at most this many array tasks at once (0: no limit)
        "report_time": "00:30:00",  # time limit of the analysis job
        "extra": [],            # more #SBATCH options, e.g. ["--exclusive"]
    },
    "env": {
        "setup": [],            # shell lines run first in every job: module load ..., conda activate ...
        "python": "python3",    # interpreter with krum-mpi installed; "" = the one running `krum-mpi study`
        "vars": {},             # environment variables exported in every job, e.g. OMP_NUM_THREADS = "1"
    },
    "mpi": {
        "srun": "srun --mpi=pmi2",  # first choice of launcher (PMI-2 works with the mpich wheel)
        "mpiexec": "mpiexec",       # fallback inside the allocation, if none is found beside python
        "start_s": 300,             # a run whose MPI world is not up after this many seconds (every
                                    # rank blocked in MPI_Init) is stopped and started again with the
                                    # next launcher; 0: wait as long as the job lasts
    },
}
QUERY_TIMEOUT_S = 15
BASE_END = "KRUM_MPI_BASE"   # the end mark of the base config's here-document in the array scripts


# ---------------------------------------------------------------------------------------------
# Site profiles
def find_profile(name: str) -> Path:
    if name.endswith(".toml") or "/" in name:
        return Path(name)
    for folder in PROFILE_DIRS:
        if (folder / f"{name}.toml").is_file():
            return folder / f"{name}.toml"
    known = sorted({p.stem for folder in PROFILE_DIRS if folder.is_dir() for p in folder.glob("*.toml")})
    raise ConfigError(f"site profile {name!r} not found: use one of {', '.join(known) or '(none)'} "
                      "or the path of a profile .toml (see hpc/profiles/)")


def load_profile(name: str) -> dict:
    """A site profile merged over PROFILE_DEFAULTS; unknown keys are errors (typos cost queue time)."""
    path = find_profile(name) if name else None
    raw = config.load_file(path) if path else {}
    profile = {section: dict(body) for section, body in PROFILE_DEFAULTS.items()}
    for section, body in raw.items():
        if section not in PROFILE_DEFAULTS or not isinstance(body, dict):
            raise ConfigError(f"{path}: unknown profile section [{section}]: use {', '.join(PROFILE_DEFAULTS)}")
        for key, value in body.items():
            if key not in PROFILE_DEFAULTS[section]:
                raise ConfigError(f"{path}: unknown profile key {section}.{key}: known keys are "
                                  f"{', '.join(PROFILE_DEFAULTS[section])}")
            default = PROFILE_DEFAULTS[section][key]
            if type(value) is not type(default):
                raise ConfigError(f"{path}: {section}.{key} = {value!r} must be a {type(default).__name__}")
            profile[section][key] = value
    if profile["mpi"]["start_s"] < 0:
        raise ConfigError(f"{path}: mpi.start_s = {profile['mpi']['start_s']} must be 0 (no limit) or a number of "
                          "seconds")
    profile["name"] = name or "(defaults)"
    return profile


# ---------------------------------------------------------------------------------------------
# Rendering
def launch_groups(runs: list, gpus_per_node: int) -> dict:
    """Runs grouped by what one array job must share: ranks, nodes, GPUs, time limit, runs per task.

    A run on a GPU (``needs_gpu``) without ``launch.gpus`` gets the profile's ``gpus_per_node``.
    """
    groups = {}
    for run in runs:
        gpus = run["gpus"] or (gpus_per_node if run["needs_gpu"] else 0)
        key = (run["ranks"], run["nodes"], gpus, run["time"], run["group"])
        groups.setdefault(key, []).append(run)
    return groups


def _sbatch_lines(profile: dict, nodes: int = 0, gpus: int = 0, cpus_per_task: bool = True) -> str:
    s = profile["slurm"]
    options = []
    if nodes:
        options.append(f"--nodes={nodes}")
    if cpus_per_task:
        options.append(f"--cpus-per-task={s['cpus_per_task']}")
    if gpus:
        options.append(f"--gpus-per-node={gpus}")
    partition = (gpus and s["gpu_partition"]) or s["partition"]
    if partition:
        options.append(f"--partition={partition}")
    for key, flag in (("account", "--account"), ("qos", "--qos"), ("constraint", "--constraint"),
                      ("mem_per_cpu", "--mem-per-cpu")):
        if s[key]:
            options.append(f"{flag}={s[key]}")
    options += list(s["extra"])
    return "".join(f"#SBATCH {o}\n" for o in options)


def _setup_lines(profile: dict) -> str:
    lines = list(profile["env"]["setup"])
    lines += [f"export {k}={shlex.quote(str(v))}" for k, v in profile["env"]["vars"].items()]
    return "\n".join(lines)


def render(plan: dict, runs: list, profile: dict, study_path: str, base_text: str,
           script_dir: str = ".", report: bool = True):
    """The job scripts of ``runs`` (study.json entries): ({file name: text}, {array script: [[run ids
    of task 0], [run ids of task 1], ...]}).

    ``study_path`` is the study folder as the jobs see it (absolute, or relative to the submit
    directory); ``script_dir`` is where the scripts will live, as written in submit.sh's comment.
    """
    if BASE_END in base_text.splitlines():
        raise ConfigError(f"the base run config of study {plan['name']} holds the line {BASE_END}, which ends "
                          "it inside the job script: remove that line")
    study = shlex.quote(study_path)
    log_dir = f"{study_path.rstrip('/')}/{LOGS_DIR}"
    python = profile["env"]["python"] or sys.executable
    common = {"STUDY_NAME": plan["name"], "STUDY": study, "PYTHON": shlex.quote(python),
              "SETUP": _setup_lines(profile), "LOG_DIR": shlex.quote(log_dir)}
    files, tasks_of = {}, {}
    groups = launch_groups(runs, profile["slurm"]["gpus_per_node"])
    for (ranks, nodes, gpus, run_time, per_task), members in groups.items():
        tasks = [members[i:i + per_task] for i in range(0, len(members), per_task)]
        name = f"array-r{ranks}" + (f"-n{nodes}" if nodes else "") + (f"-g{gpus}" if gpus else "") \
            + f"-t{parse_time(run_time) // 60}m" + (f"-x{per_task}" if per_task > 1 else "")
        throttle = profile["slurm"]["max_parallel"]
        body = "".join(f"{i})  " + "\n    ".join(_run_line(r) for r in task) + "\n    ;;\n"
                       for i, task in enumerate(tasks))
        files[f"{name}.sbatch"] = templates.fill(templates.ARRAY, {
            **common, "SPEC": plan["spec"], "PROFILE": profile["name"], "N_RUNS": len(members),
            "RANKS": ranks, "N_TASKS": len(tasks), "JOB_NAME": f"{plan['name']}-{name}",
            "LAST_TASK": len(tasks) - 1, "THROTTLE": f"%{throttle}" if throttle else "",
            "SBATCH_LINES": _sbatch_lines(profile, nodes, gpus),
            "TIME": format_time(parse_time(run_time) * per_task + 60),
            "BASE_NAME": plan["base"], "BASE_TEXT": base_text, "RUNS_DIR": RUNS_DIR,
            "RESULT": RESULT, "LOG": LOG, "EXIT": EXIT,
            "MPIEXEC": shlex.quote(profile["mpi"]["mpiexec"]), "SRUN": profile["mpi"]["srun"],
            "START_S": profile["mpi"]["start_s"], "STARTED": STARTED, "STARTED_ENV": STARTED_FILE_ENV,
            "BLOCK_STOPS": " ".join(BLOCK_STOPS),
            "TASKS": body})
        tasks_of[f"{name}.sbatch"] = [[r["id"] for r in task] for task in tasks]
    if report:
        files["report.sbatch"] = templates.fill(templates.REPORT, {
            **common, "JOB_NAME": f"{plan['name']}-report",
            "SBATCH_LINES": _sbatch_lines(profile, cpus_per_task=False),
            "TIME": format_time(parse_time(profile["slurm"]["report_time"]))})
    files["submit.sh"] = templates.fill(templates.SUBMIT, {
        "STUDY_NAME": plan["name"], "HERE": script_dir, "LOG_DIR": shlex.quote(log_dir),
        "ARRAYS": " ".join(tasks_of), "AND_REPORT": ", then its analysis job" if report else "",
        "REPORT_BLOCK": templates.SUBMIT_REPORT if report else ""})
    return files, tasks_of


def render_bench(spec, profile: dict, study_path: str, script_dir: str = ".") -> dict:
    """The job script of a [bench] spec, and its submit.sh: {file name: text}."""
    log_dir = f"{study_path.rstrip('/')}/{LOGS_DIR}"
    args = " ".join(shlex.quote(a) for a in spec.bench["args"])
    files = {"bench.sbatch": templates.fill(templates.BENCH, {
        "STUDY_NAME": spec.name, "ARGS": args, "SPEC": str(spec.path), "PROFILE": profile["name"],
        "JOB_NAME": spec.name, "SBATCH_LINES": _sbatch_lines(profile, gpus=spec.bench["gpus"]),
        "TIME": spec.bench["time"], "LOG_DIR": shlex.quote(log_dir), "STUDY": shlex.quote(study_path),
        "PYTHON": shlex.quote(profile["env"]["python"] or sys.executable), "SETUP": _setup_lines(profile)})}
    files["submit.sh"] = templates.fill(templates.SUBMIT_BENCH, {"STUDY_NAME": spec.name, "HERE": script_dir,
                                                        "LOG_DIR": shlex.quote(log_dir)})
    return files


def _run_line(run: dict) -> str:
    args = [run["id"]] + [a for item in run["overrides"] for a in ("--set", item)]
    return "run_one " + " ".join(shlex.quote(a) for a in args)


def write_scripts(files: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = folder / name
        path.write_text(text)
        path.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# Talking to SLURM
def _call(cmd: list[str], timeout: float = QUERY_TIMEOUT_S) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise KrumMPIError(f"SLURM not reachable: {cmd[0]} not found on PATH: run this on a cluster login "
                           "node, or use 'krum-mpi study run SPEC --local'")
    except subprocess.TimeoutExpired:
        raise KrumMPIError(f"SLURM not reachable: '{' '.join(cmd)}' did not answer in {timeout:.0f}s: "
                           "check that slurmctld is up (scontrol ping) and SLURM_CONF")


def check_reachable() -> None:
    """Raise KrumMPIError (one line) unless sbatch exists and slurmctld answers."""
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():   # SLURM's tools would retry for a minute, then fail
        raise KrumMPIError(f"SLURM not reachable: SLURM_CONF={conf} does not exist: point it to the "
                           "cluster's slurm.conf, or unset it")
    for tool in ("sbatch", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            raise KrumMPIError(f"SLURM not reachable: {tool} not found on PATH: run this on a cluster login "
                               "node, or use 'krum-mpi study run SPEC --local'")
    ping = _call(["scontrol", "ping"])
    if ping.returncode != 0 or "UP" not in ping.stdout:
        said = " ".join((ping.stdout + ping.stderr).split())[:200]
        raise KrumMPIError(f"SLURM not reachable: 'scontrol ping' says: {said or 'nothing'}: check that "
                           "slurmctld is up and SLURM_CONF points to its slurm.conf")


def submit(script_dir: Path) -> dict:
    """Run the rendered submit.sh; return {"arrays": {script: job id}, "report": job id}."""
    result = _call(["bash", str(script_dir / "submit.sh")], timeout=120)
    if result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split())[-300:]
        raise KrumMPIError(f"sbatch failed ({said}); nothing of this submission is left queued")
    jobs = {"arrays": {}, "report": None, "bench": None}
    for line in result.stdout.splitlines():
        kind, job_id, script = line.split()
        if kind == "array":
            jobs["arrays"][script] = job_id
        else:
            jobs[kind] = job_id
    return jobs


def job_states(job_ids: list[str]) -> dict:
    """{"JOB_TASK" or "JOB": state} for the given array / plain jobs, from squeue, then sacct.

    squeue knows queued and running jobs (and ended ones for MinJobAge seconds); sacct knows ended
    ones when the cluster keeps accounting. ``sacct -c`` (the job completion log) answers for
    plain jobs only: it does not understand array ids.
    """
    if not job_ids:
        return {}
    wanted = set(job_ids)
    states = {}
    out = _call(["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T"])
    if out.returncode == 0:
        for line in out.stdout.splitlines():
            job, _, state = line.partition("|")
            if job.split("_")[0] in wanted:
                states[job] = state.strip()
    missing = [j for j in job_ids if not any(k == j or k.startswith(j + "_") for k in states)]
    if missing:
        for cmd in (["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", "JobID,State"],
                    ["sacct", "-c", "-n", "-P", "-j", ",".join(missing), "-o", "JobID,State"]):
            out = _call(cmd)
            if out.returncode == 0 and out.stdout.strip():
                for line in out.stdout.splitlines():
                    job, _, state = line.partition("|")
                    if job.split("_")[0] in wanted and job not in states:
                        states[job] = state.split()[0] if state.strip() else "UNKNOWN"
                break
    return states

