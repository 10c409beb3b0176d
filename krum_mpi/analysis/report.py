"""``krum-mpi report STUDY_DIR``: a self-contained report that answers the review of the Krum paper
from the runs present, and says plainly what those runs cannot answer.

The review's three points: (1) without attack Krum lags averaging and only pays off near 33%
Byzantine workers; (2) the experiments used tiny data and models; (3) only data-parallel training
was considered, so what does resilience cost as workers grow? The report is Markdown with PNGs
(``--format md``) or one HTML file with the figures embedded (``--format html``).
"""
import argparse
import datetime
import shlex
import sys
from pathlib import Path

import pandas as pd

from .. import __version__
from ..errors import KrumMPIError, ResultsError
from . import review, review_tables, sections, tables
from .load import REPORT_MARKER, load_study
from .markup import Report
from .protocol_section import protocol_section

RUN_COLUMNS = ("run", "status", "seed", "n_workers", "n_byzantine", "steps_done", "final_accuracy", "best_accuracy",
               "final_loss", "compute_s", "gather_s", "aggregate_s", "update_s", "craft_s", "step_s", "byz_selected_frac",
               "top_byzantine_frac", "byz_weight_mean", "prov.n_params",
               # what scripts/check_review_reproduces.py compares a rerun by
               "run.name", "prov.blas_kernel", "prov.blas_threads", "prov.git_commit")


def output_folder(study_dir, out_dir, write_tables):
    """The report's folder (default: STUDY/report), made with its figures/ (and tables/) and marked so
    that the study loader skips it."""
    study_path = Path(study_dir)
    out = Path(out_dir) if out_dir else (study_path if study_path.is_dir() else study_path.parent) / "report"
    for d in (out, out / "figures") + ((out / "tables",) if write_tables else ()):
        d.mkdir(parents=True, exist_ok=True)
    (out / REPORT_MARKER).write_text("written by krum-mpi report; the study loader skips this folder\n")
    return out


def save_tables(page, folder, generic=True):
    """The run summary and every table as CSV files (``generic=False``: the run summary only)."""
    summary, keys = page.summary, page.keys
    columns = [c for c in dict.fromkeys(RUN_COLUMNS[:2] + tuple(keys) + RUN_COLUMNS[2:]) if c in summary]
    summary[columns].to_csv(folder / "runs.csv", index=False)
    if not generic:
        return
    for name, frame in (("accuracy", page.t["acc"]),
                        ("cost_of_resilience", page.t["cost"]), ("time_per_phase", page.t["phases"]),
                        ("scaling", page.t["scale"]), ("byzantine_selection", page.t["selection"])):
        if len(frame):
            frame.to_csv(folder / f"{name}.csv", index=False)


def build(study_dir, out_dir=None, fmt="md", bench_files=(), figure_formats=("png", "svg"), command=None,
          write_tables=True):
    """Load the study, compute the tables, draw the figures, write the report; return its path."""
    study = load_study(study_dir)
    out = output_folder(study_dir, out_dir, write_tables)
    page = sections.Page(fig_dir=out / "figures", figure_formats=tuple(figure_formats))
    bench_paths = list(study.bench_files) + [Path(b) for b in bench_files]
    head = Report()
    head.h(1, "krum-mpi report: what Byzantine-robust aggregation costs and buys")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = command or "krum-mpi report " + shlex.quote(str(study_dir))
    head.p(f"Made with `{command}` (krum-mpi {__version__}, {stamp}) from the run files in "
           f"`{Path(study_dir).name}`: {len(study.runs)} readable runs, {len(study.skipped)} files skipped.")
    page.summary = tables.run_summary(study) if len(study.runs) else pd.DataFrame()
    if not len(page.summary):
        head.p("**No complete run could be read, so none of the review's questions can be answered "
               "from this folder.** The files and why they were skipped are listed below.")
        page.rep = head
        sections.kernels(page, bench_paths)
        sections.skipped(head, study)
        return write(head, out, fmt)

    points = review_tables.review_points(page.summary)
    if points:
        return build_review(page, study, points, head, out, fmt, bench_paths, write_tables)
    sections.compute_tables(page, study)
    if write_tables:
        save_tables(page, out / "tables")
    sections.the_study(page)
    protocol_section(page, study.source, page.summary, {})   # every report says how its numbers were made
    answers = {1: sections.point_1_cost(page), 2: sections.point_2_scale(page), 3: sections.point_3_time(page)}
    sections.kernels(page, bench_paths)
    sections.closing(page, study, write_tables)
    sections.short_answers(head, answers, page.cannot)
    head.blocks += page.rep.blocks
    return write(head, out, fmt)


def build_review(page, study, points, head, out, fmt, bench_paths, write_tables):
    """The review report (runs named by review part, see ``review``): a section per point."""
    page.keys = sections.experiment_keys(page.summary)
    if write_tables:
        save_tables(page, out / "tables", generic=False)

    def generic_point_3(runs):   # the time and scaling section, on point 3's runs only
        sub = sections.Page(fig_dir=page.fig_dir, figure_formats=page.figure_formats, rep=page.rep,
                            cannot=page.cannot, summary=runs)
        sections.compute_tables(sub, study)
        return sections.point_3_time(sub)

    answers = review.review_sections(page, study, points, out / "tables" if write_tables else None, generic_point_3)
    sections.kernels(page, bench_paths)
    review.closing(page, study, write_tables, sections.skipped)
    review.short_verdicts(head, answers, page.cannot)
    head.blocks += page.rep.blocks
    return write(head, out, fmt)


def write(rep, out, fmt):
    """The report as report.md (figures beside it) or as one report.html."""
    if fmt == "html":
        path = out / "report.html"
        path.write_text(rep.html("krum-mpi report"))
    else:
        path = out / "report.md"
        path.write_text(rep.markdown(out))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="krum-mpi report", description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study folder (searched recursively for .h5 run files) or one run file")
    parser.add_argument("--out", help="output folder (default: STUDY/report)")
    parser.add_argument("--format", choices=("md", "html"), default="md",
                        help="md: Markdown + PNG files; html: one file, figures embedded")
    parser.add_argument("--bench", action="append", default=[],
                        help="a 'krum-mpi bench aggregate' result file to include (repeatable)")
    parser.add_argument("--figure-formats", default="png,svg", help="comma-separated (default png,svg)")
    parser.add_argument("--no-tables", action="store_true", help="do not write the tables as CSV files")
    parser.add_argument("--scheduler", help="address of a dask.distributed scheduler to compute on")
    args = parser.parse_args(argv)
    formats = tuple(f.strip() for f in args.figure_formats.split(",") if f.strip())
    if "png" not in formats:
        raise KrumMPIError("--figure-formats must include png (the report shows PNGs): e.g. png,svg")
    if not Path(args.study).exists():
        raise ResultsError(f"study folder {args.study} does not exist: give the folder of the run files")
    command = "krum-mpi report " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    client = None
    if args.scheduler:
        from distributed import Client
        client = Client(args.scheduler)
    try:
        path = build(args.study, args.out, args.format, args.bench, formats, command=command,
                     write_tables=not args.no_tables)
    finally:
        if client is not None:
            client.close()
    print(f"report written to {path}")
    return 0
