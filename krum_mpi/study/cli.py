"""``krum-mpi study``: sweeps of runs, planned, run here with mpiexec, or submitted to SLURM.

    krum-mpi study plan SPEC                     expand, check every run's config, print runs and cost
    krum-mpi study run SPEC [--jobs N]           run here, N runs at a time (skips complete runs)
    krum-mpi study submit SPEC [--profile P]     SLURM job arrays + an analysis job (skips complete runs)
    krum-mpi study status SPEC|DIR               done / running / failed (with log tails) / pending
    krum-mpi study render SPEC [--profile P]     write the job scripts, to read (submit renders its own)

Every verb names the study folder --dir, else study.dir of the spec, else studies/<name>
(relative to here); render writes its scripts to --out (default DIR/slurm/rendered).
run, submit and render take --part NAME (repeatable: the runs of those parts of a spec with
[parts]) and --limit N (the first N of the runs to do): a slice of a study, to try it out.
Job scripts are rendered at submit time for the site profile given then (--profile, else
study.profile); jobs/ holds only the specs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..errors import ConfigError, KrumMPIError
from . import bench_job, kernel, slurm, tuning
from .folder import PLAN_FILE, SLURM_DIR, StudyFolder, is_complete
from .plan import format_table, make_plan, select_runs
from .spec import load_spec
from .status import format_failures, format_status, run_states


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"krum-mpi: error: {message} (see '{self.prog} --help')\n")


def _planned(spec, check_models: bool = True, folder=None, record: bool = True):
    """Plan the spec; print every invalid run (one line each) and raise if any. With the study
    ``folder``, a tuning part whose runs are all complete makes its choice (``tuning.choose``, written
    to tuning.json) and the parts that take it get their runs; ``plan.waiting`` says why not."""
    plan = make_plan(spec, check_models=check_models)
    waiting = {}
    if folder is not None and any(p.tune is not None for p in spec.parts):
        choices, waiting = tuning.choose(spec, plan, folder, record)
        if choices:
            plan = make_plan(spec, check_models=check_models, choices=choices)
    for line in plan.invalid:
        print(f"krum-mpi study: invalid {line}", file=sys.stderr)
    plan.check()
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    plan.waiting = waiting
    return plan


def _refuse_waiting(plan, parts, with_tuning: bool) -> None:
    """One line and exit 2 for a named part whose tuned values are not chosen yet (``with_tuning``:
    unless its tuning part is named too, so that this command runs the tuning first)."""
    by_part = {p.name: p for p in plan.spec.parts}
    for name in dict.fromkeys(r.labels.get("part", "") for r in plan.awaiting):
        tuned = by_part[name].tuned
        if name in parts and not (with_tuning and tuned in parts):
            keys = ", ".join(next(p for p in plan.spec.parts if p.name == tuned).tune.grid)
            raise ConfigError(f"part {name} takes {keys} from tuning part {tuned}, which has not chosen them yet "
                              f"({plan.waiting.get(tuned, 'not run')}): run 'krum-mpi study run "
                              f"{plan.spec.path} --part {tuned}' first")


def _folder(spec, given) -> StudyFolder:
    return StudyFolder(given or spec.dir or Path("studies") / spec.name)


def _profile(args, spec) -> dict:
    return slurm.load_profile(args.profile or spec.profile)


def _note_waiting(plan) -> None:
    """SLURM runs what exists now: the runs waiting for a tuning stage are submitted after it."""
    for name, why in plan.waiting.items():
        count = sum(next(p for p in plan.spec.parts if p.name == r.labels.get("part")).tuned == name
                    for r in plan.awaiting)
        if count:
            print(f"note: {count} runs wait for tuning part {name} ({why}): submit again once it has run",
                  file=sys.stderr)


def cmd_plan(args) -> int:
    spec = load_spec(args.spec)
    if spec.bench:
        print(bench_job.describe(spec))
        return 0
    plan = _planned(spec, folder=_folder(spec, args.dir), record=False)
    print(format_table(plan))
    print(f"study folder: {_folder(spec, args.dir).path}")
    return 0


def cmd_run(args) -> int:
    # `run` always runs here (`submit` is the SLURM path); --local is kept for the scripts that say it
    from .local import mpiexec_path

    spec = load_spec(args.spec)
    jobs = spec.jobs if args.jobs is None else args.jobs
    if jobs < 1:
        raise KrumMPIError(f"--jobs {jobs} must be >= 1")
    folder = _folder(spec, args.dir)
    if spec.bench:
        return bench_job.run_here(spec, folder)
    plan = _planned(spec, folder=folder)
    _refuse_waiting(plan, args.part, with_tuning=True)
    mpiexec = args.mpiexec or mpiexec_path()
    pin, note = kernel.pinned_env(spec.name, spec.blas_coretype, plan.to_dict()["runs"], folder, os.environ)
    print(f"note: {note}", file=sys.stderr)
    rc, limit = _run_stage(args, spec, plan, folder, jobs, mpiexec, pin, args.limit)
    wanted = [r for r in plan.awaiting if not args.part or r.labels.get("part") in args.part]
    if rc is not None or not wanted or (args.limit and limit <= 0):
        return rc or 0
    plan = _planned(spec, folder=folder)      # the tuning stage has run: the choice, then its parts
    for part, entry in tuning.read_record(folder.path).items():
        for line in tuning.at_grid_edge(entry):
            print(f"note: tuning part {part}: {line}: the best value may lie beyond the grid", file=sys.stderr)
    if plan.awaiting:
        for name, why in plan.waiting.items():
            print(f"krum-mpi study: {len(wanted)} runs wait for tuning part {name}, which cannot choose: {why}",
                  file=sys.stderr)
        return 1
    pin, _ = kernel.pinned_env(spec.name, spec.blas_coretype, plan.to_dict()["runs"], folder, os.environ)
    return _run_stage(args, spec, plan, folder, jobs, mpiexec, pin, limit)[0] or 0


def _run_stage(args, spec, plan, folder, jobs, mpiexec, pin, limit):
    """Run the selected runs of ``plan`` that exist now; (exit status or None to go on, limit left)."""
    from .local import StudyStopped, run_local

    folder.write_plan(plan.to_dict(), plan.base_name, plan.base_text)
    selected = select_runs(plan.to_dict()["runs"], args.part, 0, plan.to_dict()["awaiting"])
    if limit:
        selected = [r for r in selected if not is_complete(folder.result(r["id"]))][:limit]
    try:
        outcome = run_local(dict(plan.to_dict(), runs=selected), folder, jobs=jobs, mpiexec=mpiexec, extra_env=pin)
    except StudyStopped as stopped:   # SIGTERM/SIGINT: the runs were stopped (checkpointed); 3 as krum-mpi run
        print(f"krum-mpi study: stopped by signal {stopped.signum}: {len(stopped.stopped)} running run(s) stopped "
              f"({', '.join(stopped.stopped) or 'none'}); run the same command again to continue", file=sys.stderr)
        return 3, 0
    busy = f", {len(outcome['busy'])} being written by another process" if outcome["busy"] else ""
    print(f"study {spec.name}: {len(outcome['done'])} runs done, {len(outcome['failed'])} failed, "
          f"{len(outcome['skipped'])} already complete{busy}; results in {folder.runs}")
    if outcome["failed"]:
        print("\n".join(format_failures(folder, run_states(plan.to_dict(), folder, None), args.tail)))
        return 1, 0
    return None, limit - len(selected) if limit else 0


def cmd_submit(args) -> int:
    spec = load_spec(args.spec)
    profile = _profile(args, spec)
    folder = _folder(spec, args.dir)
    if spec.bench:
        return bench_job.submit(spec, profile, folder, args.dry_run)
    plan = _planned(spec, folder=folder)
    _refuse_waiting(plan, args.part, with_tuning=False)
    _note_waiting(plan)
    if not args.dry_run:
        slurm.check_reachable()
    folder.write_plan(plan.to_dict(), plan.base_name, plan.base_text)
    plan_dict = plan.to_dict()

    # skip runs that are done, and runs still queued or running from an earlier submission
    states = run_states(plan_dict, folder, None if args.dry_run else _slurm_states(folder))
    in_flight = {s.id for s in states if s.job}
    done = {s.id for s in states if s.state == "done"}
    todo = select_runs([r for r in plan_dict["runs"] if r["id"] not in done | in_flight], args.part, args.limit)
    print(f"study {spec.name}: {len(plan_dict['runs'])} runs: {len(done)} complete, {len(in_flight)} "
          f"queued or running, {len(todo)} to submit")
    if not todo:
        return 0
    script_dir = folder.next_submission_dir()
    files, tasks = slurm.render(plan_dict, todo, profile, str(folder.path), plan.base_text, str(script_dir),
                                report=not args.no_report)
    slurm.write_scripts(files, script_dir)
    if args.dry_run:
        print(f"dry run: job scripts in {script_dir} (submit with: bash {script_dir / 'submit.sh'})")
        return 0
    (folder.slurm / "logs").mkdir(parents=True, exist_ok=True)
    submitted_at = time.time()
    jobs = slurm.submit(script_dir)
    folder.add_submission({"time": submitted_at, "scripts": str(script_dir), "arrays": jobs["arrays"],
                           "tasks": tasks, "report": jobs["report"]})
    for script, job in jobs["arrays"].items():
        print(f"submitted array job {job}: {script} ({len(tasks[script])} tasks)")
    if jobs["report"]:
        print(f"submitted analysis job {jobs['report']} (after all of them)")
    print(f"follow with: krum-mpi study status {folder.path}")
    return 0


def _slurm_states(folder: StudyFolder):
    """SLURM states of the study's jobs, or None (with a note) when SLURM cannot be asked."""
    records = folder.submissions()
    job_ids = [j for r in records for j in r["arrays"].values()]
    job_ids += [r[k] for r in records for k in ("report", "bench") if r.get(k)]
    if not job_ids:
        return {}
    try:
        return slurm.job_states(job_ids)
    except KrumMPIError as exc:
        print(f"note: {exc}", file=sys.stderr)
        return None


def cmd_status(args) -> int:
    target = Path(args.target)
    if target.is_dir():
        folder = StudyFolder(target)
        plan_dict = folder.read_plan()
    else:
        spec = load_spec(target)
        folder = _folder(spec, args.dir)
        if spec.bench:
            print(bench_job.status(spec, folder, _slurm_states(folder)))
            return 0
        has_plan = (folder.path / PLAN_FILE).is_file()
        plan_dict = folder.read_plan() if has_plan else _planned(spec, check_models=False).to_dict()
    states_slurm = _slurm_states(folder)
    records = folder.submissions()
    report = None
    if records and records[-1]["report"]:
        job = records[-1]["report"]
        report = f"{job} {(states_slurm or {}).get(job, 'unknown').lower()}"
    states = run_states(plan_dict, folder, states_slurm)
    print(format_status(plan_dict, folder, states, args.tail, report))
    return 0


def cmd_render(args) -> int:
    spec = load_spec(args.spec)
    profile = _profile(args, spec)
    if args.study_dir:
        print("note: render --study-dir is now --dir (the study folder, as in every study verb)", file=sys.stderr)
    study_path = str(args.dir or args.study_dir or spec.dir or f"studies/{spec.name}")
    out = Path(args.out) if args.out else Path(study_path) / SLURM_DIR / "rendered"
    if spec.bench:
        files = slurm.render_bench(spec, profile, study_path, str(out))
    else:
        plan = _planned(spec, folder=StudyFolder(study_path), record=False)
        _refuse_waiting(plan, args.part, with_tuning=False)
        _note_waiting(plan)
        runs = select_runs(plan.to_dict()["runs"], args.part, args.limit)
        files, _ = slurm.render(plan.to_dict(), runs, profile, study_path, plan.base_text, str(out))
    slurm.write_scripts(files, out)
    print(f"wrote {', '.join(sorted(files))} to {out} (study folder {study_path}, profile {profile['name']})")
    return 0


# Arguments several subcommands take: (flags, argparse keywords).
SPEC = (("spec",), {})
DIR = (("--dir",), {"help": "study folder (default: study.dir, else studies/<name>)"})
PROFILE = (("--profile",), {"help": "site profile: a name in hpc/profiles/ or a .toml path"})
PART = (("--part",), {"action": "append", "default": [], "metavar": "NAME",
                      "help": "only the runs of this part of the spec (repeatable)"})
LIMIT = (("--limit",), {"type": int, "default": 0, "metavar": "N",
                        "help": "only the first N runs still to do (0: all)"})
TAIL = (("--tail",), {"type": int, "default": 8, "help": "log lines shown per failed run"})


def command(sub, name, help_text, func, *arguments):
    """A subcommand with its arguments, each given as (flags, argparse keywords)."""
    parser = sub.add_parser(name, help=help_text)
    for flags, keywords in arguments:
        parser.add_argument(*flags, **keywords)
    parser.set_defaults(func=func)


def main(argv) -> int:
    p = _Parser(prog="krum-mpi study", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    command(sub, "plan", "expand the spec, check every run, print runs and a cost estimate", cmd_plan,
            SPEC, DIR)
    command(sub, "run", "run the study on this machine", cmd_run, SPEC,
            (("--local",), {"action": "store_true", "help": "run here (the default), each run under mpiexec -n RANKS"}),
            (("--jobs", "-j"), {"type": int, "default": None,
                                "help": "runs at a time (default: study.jobs of the spec, else 1)"}), DIR, PART, LIMIT,
            (("--mpiexec",), {"help": "mpiexec to use (default: $MPIEXEC, the one beside python, PATH)"}), TAIL)
    command(sub, "submit", "submit SLURM job arrays and an analysis job", cmd_submit, SPEC, PROFILE, DIR, PART, LIMIT,
            (("--dry-run",), {"action": "store_true", "help": "render the job scripts, submit nothing"}),
            (("--no-report",), {"action": "store_true", "help": "submit no analysis job"}))
    command(sub, "status", "done / running / failed / pending runs of a study", cmd_status,
            (("target",), {"metavar": "SPEC|DIR"}), (("--dir",), {"help": "study folder, when SPEC is given"}), TAIL)
    command(sub, "render", "write the study's job scripts, to read or to submit with plain sbatch", cmd_render,
            SPEC, PROFILE, PART, LIMIT,
            (("--dir",), {"help": "study folder as the jobs see it (default: study.dir, else studies/<name>, "
                                  "relative to where submit.sh is run)"}),
            (("--out",), {"help": "folder for the scripts (default: DIR/slurm/rendered)"}),
            (("--study-dir",), {"help": argparse.SUPPRESS}))   # the old name of --dir, kept for scripts
    args = p.parse_args(argv)
    return args.func(args)
