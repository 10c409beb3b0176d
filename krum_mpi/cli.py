"""The ``krum-mpi`` command line.

    krum-mpi run CONFIG [--set key=value ...] [--out FILE.h5] [--device auto|cpu|gpu] [--force]
    krum-mpi run --from-study SPEC --cell KEY=VALUE ... [--set ...]   one run (cell) of a study's sweep
    krum-mpi demo [--ranks 4]          the quick-start comparison: Krum vs averaging, 0 and 6 Byzantine
    krum-mpi summary FILE.h5 ...       one line per results file
    krum-mpi bench | data | study | report ...   (see ``krum-mpi SUB --help``)

User errors print one line, ``krum-mpi: error: ...``, and exit with status 2. Under MPI, an
unexpected exception on any rank aborts the whole job (as ``python -m mpi4py`` does), so a run never
hangs with one rank gone.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

from .errors import KrumMPIError

# Exit statuses of `krum-mpi run`, one meaning each (docs/reliability.md): 0 complete; 2 the run
# cannot go on, one line says why (bad input, or the file system refused a write: the last flush
# is kept); 3 stopped by SIGTERM/SIGUSR1/SIGINT with a checkpoint (job scripts requeue on it);
# 4 ended by the watchdog; 131 SIGQUIT (krum_mpi.run.stop.EXIT_QUIT); 1 an unexpected error.
EXIT_INTERRUPTED = 3
FINALIZE_BOUND_S = 20.0   # after a stop: how long MPI_Finalize may take before the rank leaves anyway

DELEGATED = {  # subcommand -> module with main(argv) -> int
    "bench": "krum_mpi.bench.aggregate",
    "data": "krum_mpi.data.cli",
    "study": "krum_mpi.study.cli",
    "report": "krum_mpi.analysis.report",
}


# optional dependencies -> the extra that installs them (pyproject.toml)
EXTRAS = {"pandas": "analysis", "dask": "analysis", "distributed": "analysis", "matplotlib": "analysis",
          "nbformat": "analysis", "nbclient": "analysis", "ipykernel": "analysis", "cupy": "gpu"}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The one-line fix for a missing optional dependency, None for any other missing module."""
    top = (exc.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    return f"{top} is not installed: it comes with the {EXTRAS[top]} extra, pip install 'krum-mpi[{EXTRAS[top]}]'"


def launcher_rank() -> int:
    """This process's rank as the MPI launcher set it (0 when not launched by one), read from the
    environment so that errors found before MPI starts are printed once, by rank 0, not by every rank."""
    for key in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def _error(message: str) -> int:
    print(f"krum-mpi: error: {message}", file=sys.stderr, flush=True)
    return 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags in our one-line form (exit 2)."""

    def error(self, message):
        self.exit(2, f"krum-mpi: error: {message} (see '{self.prog} --help')\n" if launcher_rank() == 0 else None)


def default_out(cfg, config_path) -> Path:
    from .config import run_id

    stem = cfg.run.name or (Path(config_path).stem if config_path else "run")
    return Path("results") / f"{stem}-{run_id(cfg)}.h5"


def run_parser():
    p = _Parser(prog="krum-mpi run", description="Train with robust aggregation over MPI ranks "
                "(launch with mpiexec -n R or srun).")
    p.add_argument("config", nargs="?", help="run config (.toml or .yaml); or --from-study")
    p.add_argument("--from-study", metavar="SPEC", help="take the config of one run of this study spec")
    p.add_argument("--cell", action="append", default=[], metavar="KEY=VALUE",
                   help="with --from-study: a swept value of the run (repeatable), or its run id")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set run.steps=100 (repeatable)")
    p.add_argument("--out", help="results file (.h5); default results/<name>-<run id>.h5")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), help="aggregation device (sets run.device)")
    p.add_argument("--force", action="store_true", help="overwrite an existing results file")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out if there is one (else start); for requeued jobs")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def run_config(args):
    """The validated config (a frozen config.Config) of ``krum-mpi run``: a file, or one cell of a
    study, plus --set."""
    from . import config

    if (args.config is None) == (args.from_study is None):
        raise KrumMPIError("give a run config file, or --from-study SPEC with --cell KEY=VALUE (not both)")
    if args.cell and not args.from_study:
        raise KrumMPIError("--cell selects a run of a study: give --from-study SPEC too")
    overrides = list(args.overrides) + ([f"run.device={args.device}"] if args.device else [])
    if args.config is not None:
        return config.load(args.config, overrides)
    from .study.cell import cell_config

    cfg, cell = cell_config(args.from_study, args.cell, overrides)
    if launcher_rank() == 0 and not args.quiet:
        print(f"cell {cell.id} of {args.from_study}: " + " ".join(f"{k}={v}" for k, v in cell.labels.items())
              + f" (the study runs it on {cell.ranks} ranks)", flush=True)
    return config.Config.from_dict(cfg)   # the cell's resolved dict


def cmd_run(argv, stop=None) -> int:
    args = run_parser().parse_args(argv)

    from .run import results, train
    from .launch import mark_started
    from .parallel.comm import Comm, launched_under_mpi
    from .run.stop import process_stop

    stop = stop or process_stop()

    if args.resume and not args.out:
        raise KrumMPIError("--resume needs --out FILE.h5: the results file that holds the checkpoint")
    try:
        cfg = run_config(args)   # same on every rank: all fail alike
    except KrumMPIError:
        if launcher_rank() != 0:
            raise SystemExit(2)                             # rank 0 reports it
        raise
    out = Path(args.out) if args.out else default_out(cfg, args.config or args.from_study)
    comm = Comm(cfg.workers.n)
    lock = None
    try:
        if comm.is_root:
            error, lock, state = None, None, "go"
            try:
                lock, state = _claim_out(out, cfg, args)
            except Exception as exc:    # any failure: the other ranks must not wait for a verdict
                error = exc
            verdict = comm.bcast_flag(1 if error is not None else 2 if state == "complete" else 0)
            mark_started(comm.size)     # past MPI_Init, whose PMI exchange every rank has joined
            if error is not None:
                raise error
        else:
            verdict = comm.bcast_flag(0)
            if verdict == 1:
                raise SystemExit(2)
        if verdict == 2:       # --resume of a finished run: nothing to do
            stop.ignore_further()
            return 0
        if comm.size == 1 and not launched_under_mpi() and not args.quiet:
            print(f"krum-mpi: note: not started by mpiexec or srun: running on 1 MPI rank (all {cfg.workers.n} "
                  "workers in this process); for R ranks: mpiexec -n R krum-mpi run ...", file=sys.stderr, flush=True)
        try:
            summary = train.run(cfg, out, comm, resume=args.resume, stop=stop, quiet=args.quiet)
        except (KrumMPIError, SystemExit):
            raise
        except BaseException:
            if comm.size > 1:  # one rank failing alone would leave the others blocked in a collective
                traceback.print_exc()
                comm.abort(1)
            raise
        stop.ignore_further()   # the file is complete or checkpointed: a late signal changes nothing now
        if comm.is_root and not args.quiet and summary["status"] == "complete":
            from .summary import format_table
            print(format_table([summary]))
            print(f"results: {summary['path']}")
        if summary["status"] == "interrupted":
            if comm.is_root:
                print(f"krum-mpi: interrupted by a signal after step {summary['steps'] - 1}: checkpoint saved in "
                      f"{out}; continue with the same command plus --resume", file=sys.stderr, flush=True)
            # The checkpoint is on disk: every rank leaves together with the status job scripts
            # requeue on, finalized (see Comm.finalize_within) but within a bound, so that a stalled
            # finalize cannot eat the time left before the limit.
            if lock is not None:
                lock.release()
            comm.finalize_within(FINALIZE_BOUND_S, EXIT_INTERRUPTED)
            raise SystemExit(EXIT_INTERRUPTED)
        return 0
    finally:
        if lock is not None:
            lock.release()


def _claim_out(out: Path, cfg, args):
    """Rank 0, before any setup: check what ``out`` is (nothing is written or opened that could
    block), take its lock, and check it may be written. Returns (lock, "go" or "complete")."""
    from .config import run_id
    from .run import outfiles, resume

    outfiles.check_out_path(out)
    lock = outfiles.OutLock(out).acquire()
    try:
        outfiles.check_can_write(out, args.force, args.resume)
        state = resume.state_before_start(out, cfg.to_dict(), run_id(cfg)) if args.resume else "go"
    except BaseException:
        lock.release()
        raise
    if lock.note and not args.quiet:
        print(f"krum-mpi: note: {lock.note}", file=sys.stderr, flush=True)
    if args.resume and not args.quiet and state in ("fresh", "complete"):
        print(resume.STATE_LINES[state].format(out=out, steps=cfg.run.steps), file=sys.stderr, flush=True)
    return lock, state


def cmd_summary(argv) -> int:
    p = _Parser(prog="krum-mpi summary", description="One line per results file.")
    p.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    from .summary import flagged, format_table, summarize_file
    rows = [summarize_file(f) for f in args.files]
    print(format_table(rows))
    return 1 if flagged(rows) else 0   # a file no run could have written (its line says why)


def cmd_demo(argv) -> int:
    from .demo import main as demo_main
    return demo_main(argv)


COMMANDS = {"run": cmd_run, "summary": cmd_summary, "demo": cmd_demo}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from .run.stop import process_stop, unblock_stops
    if argv[:1] != ["run"]:
        unblock_stops()      # no handler but run's: a stop signal ends any other command, as for any program
    names = sorted(list(COMMANDS) + list(DELEGATED))
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__
        print(f"krum-mpi {__version__}")
        return 0
    sub, rest = argv[0], argv[1:]
    try:
        if sub == "run":     # stop signals handled from the first moment (see krum_mpi/run/stop.py)
            return cmd_run(rest, process_stop())
        if sub in COMMANDS:
            return COMMANDS[sub](rest)
        if sub in DELEGATED:
            return importlib.import_module(DELEGATED[sub]).main(rest)
        return _error(f"unknown command {sub!r}: use one of {', '.join(names)}")
    except KrumMPIError as exc:
        return _error(" ".join(str(exc).split()))
    except ModuleNotFoundError as exc:
        fix = missing_extra(exc)
        if fix is None:
            raise
        return _error(f"krum-mpi {sub}: {fix}")
    except KeyboardInterrupt:
        return _error("interrupted")


if __name__ == "__main__":
    sys.exit(main())
