"""Does a rerun reproduce a report's tables, timings aside? Row by row, and why a row differs.

    python scripts/check_review_reproduces.py docs/review/tables studies/review/report/tables
    python scripts/check_review_reproduces.py docs/review/tables rerun/report/tables --part point1-attack

REFERENCE and RERUN are the ``tables/`` folders of two reports. The run table (``runs.csv``) is
compared row by row, each run matched by its ``run`` file name (the run id: a hash of the run's
config, so the same run has the same name in both), on every column but the timing columns (seconds,
milliseconds, ratios, speed-ups) and the provenance columns (``prov.*``). Each compared row is printed
as "agree" or "differ", and a differing row says why as far as the tables tell: the BLAS kernel
(``prov.blas_kernel``: library, version and core type), the BLAS threads (``prov.blas_threads``) or the
code version (``prov.git_commit``) that differ between the two runs, or "same kernel, threads and code"
(or that a table does not record them: reports written before these columns existed). A row that
agrees although a recorded condition differs says so too ("agree ... (although kernel A against B)").

A slice: ``--part NAME`` (repeatable) compares only the runs of those study parts (``run.name``), and
``--slice`` compares only the runs the rerun holds (a ``--limit N`` rerun); both skip the reference
rows the rerun lacks and the aggregated tables (their rows pool every run). Without them every
reference row must be in the rerun, and every other CSV (timing tables aside) is compared as text
with its rows sorted. Exit status 0 when everything compared agrees; 1 otherwise; 2 for bad arguments.
"""
import argparse
import re
import sys
from pathlib import Path

import pandas as pd

TIMING_FILES = re.compile(r"timing|time_per_phase|scaling")
TIMING_COLUMNS = re.compile(r"(_s|_s_ci|_ms|_ms_ci|_ratio|_share)$|^(speedup|efficiency|n_timed)$")
WHY = (("prov.blas_kernel", "kernel"), ("prov.blas_threads", "threads"), ("prov.git_commit", "code version"))
RUNS = "runs.csv"
MAX_TABLE_LINES = 20


def table_files(folder: Path) -> dict:
    return {p.name: p for p in sorted(folder.glob("*.csv")) if not TIMING_FILES.search(p.stem)}


def compared_columns(frame: pd.DataFrame) -> list:
    return [c for c in frame.columns if not TIMING_COLUMNS.search(c) and not c.startswith("prov.")]


def read_table(path: Path) -> pd.DataFrame:
    """A whole table as text cells without its timing columns, rows sorted."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = frame[[c for c in frame.columns if not TIMING_COLUMNS.search(c)]]
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


def compare_tables(first: Path, second: Path) -> list:
    """One line per difference between the aggregated tables of two folders (runs.csv aside)."""
    a, b = table_files(first), table_files(second)
    problems = [f"{name}: only in {first if name in a else second}" for name in sorted(set(a) ^ set(b))]
    for name in sorted((set(a) & set(b)) - {RUNS}):
        x, y = read_table(a[name]), read_table(b[name])
        if list(x.columns) != list(y.columns):
            problems.append(f"{name}: columns differ: {list(x.columns)} against {list(y.columns)}")
        elif len(x) != len(y):
            problems.append(f"{name}: {len(x)} rows against {len(y)}")
        else:
            for row, col in zip(*(x != y).to_numpy().nonzero()):
                problems.append(f"{name}: row {row}, {x.columns[col]}: {x.iat[row, col]!r} against {y.iat[row, col]!r}")
    return problems


def differing_conditions(ref: pd.Series, new: pd.Series) -> list:
    """["kernel A against B", ...]: the recorded conditions (kernel, threads, code version) that differ."""
    return [f"{label} {ref.get(column)} against {new.get(column)}" for column, label in WHY
            if ref.get(column) not in (None, "") and new.get(column) not in (None, "")
            and ref.get(column) != new.get(column)]


def why(ref: pd.Series, new: pd.Series) -> str:
    """The recorded conditions that differ between two runs of the same config."""
    reasons = differing_conditions(ref, new)
    unknown = [label for column, label in WHY if ref.get(column) in (None, "") or new.get(column) in (None, "")]
    if reasons:
        return "; ".join(reasons)
    if unknown:
        return f"not recorded in both tables: {', '.join(unknown)}"
    return "same kernel, threads and code version: not explained by the recorded conditions"


# Display labels name a rule or an attack with the keys the whole study varies ("krum(placement=gather)",
# "alie(z_formula=paper)"): a slice that does not vary them labels the same run "krum", "alie". The run
# is matched by its id (a digest of its config), so a slice compares these labels by their base name.
LABEL_COLUMNS = ("rule", "attack_label")


def _cell(row: pd.Series, column: str, in_slice) -> object:
    value = row.get(column, "<no column>")
    if in_slice and column in LABEL_COLUMNS and isinstance(value, str):
        return value.split("(", 1)[0]
    return value


def compare_runs(ref: pd.DataFrame, new: pd.DataFrame, parts=(), slice_only=False):
    """(lines, n_agree, n_differ, n_missing): one line per compared run, in the reference's order."""
    if parts:
        if "run.name" not in ref.columns:
            raise SystemExit("--part needs the run.name column in the reference runs.csv (reports "
                             "written before it existed: compare the whole table or use --slice)")
        ref = ref[ref["run.name"].isin(parts)]
    new_by_run = {r["run"]: r for _, r in new.iterrows()}
    columns = [c for c in compared_columns(ref) if c != "run"]
    if parts or slice_only:   # a slice's report leaves out the columns its own runs do not vary
        columns = [c for c in columns if c in new.columns]
    lines, agree, differ, missing = [], 0, 0, 0
    for _, row in ref.iterrows():
        other = new_by_run.get(row["run"])
        if other is None:
            missing += 1
            if not (parts or slice_only):
                lines.append(f"missing {row['run']}: not in the rerun")
            continue
        changed = [c for c in columns if _cell(row, c, parts or slice_only) != _cell(other, c, parts or slice_only)]
        if not changed:
            agree += 1
            conditions = differing_conditions(row, other)
            lines.append(f"agree   {row['run']}" + (f" (although {'; '.join(conditions)})" if conditions else ""))
            continue
        differ += 1
        shown = ", ".join(f"{c} {row[c]!r} against {other.get(c, '<no column>')!r}" for c in changed[:3])
        more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
        lines.append(f"differ  {row['run']}: {shown}{more}; why: {why(row, other)}")
    return lines, agree, differ, missing


def compare(first: Path, second: Path) -> list:
    """Every difference between two whole reports' tables, as lines (empty: they agree): the runs that
    differ or are missing, then the aggregated tables."""
    first, second = Path(first), Path(second)
    ref = pd.read_csv(first / RUNS, dtype=str, keep_default_na=False)
    new = pd.read_csv(second / RUNS, dtype=str, keep_default_na=False)
    lines = compare_runs(ref, new)[0]
    return [line for line in lines if not line.startswith("agree")] + compare_tables(first, second)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reference", type=Path, help="tables/ folder of the reference report")
    p.add_argument("rerun", type=Path, help="tables/ folder of the rerun's report")
    p.add_argument("--part", action="append", default=[], metavar="NAME", help="only the runs of this study part")
    p.add_argument("--slice", action="store_true", help="only the runs the rerun holds")
    return p.parse_args(argv)


def main(argv) -> int:
    args = parse(argv)
    for folder in (args.reference, args.rerun):
        if not (folder / RUNS).is_file():
            print(f"{folder}: no {RUNS} in it: give the tables/ folder of each report", file=sys.stderr)
            return 2
    ref = pd.read_csv(args.reference / RUNS, dtype=str, keep_default_na=False)
    new = pd.read_csv(args.rerun / RUNS, dtype=str, keep_default_na=False)
    try:
        lines, agree, differ, missing = compare_runs(ref, new, args.part, args.slice)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    partial = bool(args.part or args.slice)
    problems = [] if partial else compare_tables(args.reference, args.rerun)
    for line in problems[:MAX_TABLE_LINES]:
        print(line)
    if len(problems) > MAX_TABLE_LINES:
        print(f"... and {len(problems) - MAX_TABLE_LINES} more table differences")
    skipped = f", {missing} reference rows not in the rerun" + (" (skipped: a slice)" if partial else "")
    print(f"runs: {agree} agree, {differ} differ{skipped if missing else ''}; "
          + ("aggregated tables not compared (a slice)" if partial else
             f"aggregated tables: {'agree' if not problems else f'{len(problems)} differences'}"))
    ok = differ == 0 and not problems and (partial or missing == 0) and agree > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
