"""Do two report table folders agree, timings aside? (the acceptance check of the review report)

    python scripts/check_review_reproduces.py docs/review/tables studies/review/report/tables

Compares every CSV of the first folder with the file of the same name in the second, as text, after
dropping the timing tables (``*timing*``, ``time_per_phase``, ``scaling``) and the timing columns
(seconds, milliseconds, time ratios, speed-ups). Rows are compared in sorted order, so the order in
which runs finished does not matter. Exit status 0 when they agree; otherwise 1, with one line per
difference (file, column, row).
"""
import re
import sys
from pathlib import Path

import pandas as pd

TIMING_FILES = re.compile(r"timing|time_per_phase|scaling")
TIMING_COLUMNS = re.compile(r"(_s|_s_ci|_ms|_ms_ci|_ratio|_share)$|^(speedup|efficiency|n_timed)$")
MAX_LINES = 20


def table_files(folder: Path) -> dict:
    return {p.name: p for p in sorted(folder.glob("*.csv")) if not TIMING_FILES.search(p.stem)}


def read_table(path: Path) -> pd.DataFrame:
    """The table as text cells without its timing columns, rows sorted."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = frame[[c for c in frame.columns if not TIMING_COLUMNS.search(c)]]
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


def compare(first: Path, second: Path) -> list:
    """One line per difference between the two table folders (empty: they agree)."""
    first, second = Path(first), Path(second)
    problems = []
    for folder in (first, second):
        if not folder.is_dir():
            return [f"{folder}: not a folder of report tables (give the tables/ folder of each report)"]
    a, b = table_files(first), table_files(second)
    if not a:
        return [f"{first}: no CSV tables in it"]
    for name in sorted(set(a) ^ set(b)):
        problems.append(f"{name}: only in {first if name in a else second}")
    for name in sorted(set(a) & set(b)):
        x, y = read_table(a[name]), read_table(b[name])
        if list(x.columns) != list(y.columns):
            problems.append(f"{name}: columns differ: {list(x.columns)} against {list(y.columns)}")
            continue
        if len(x) != len(y):
            problems.append(f"{name}: {len(x)} rows against {len(y)}")
            continue
        diff = (x != y)
        for row, col in zip(*diff.to_numpy().nonzero()):
            column = x.columns[col]
            problems.append(f"{name}: row {row}, {column}: {x.iat[row, col]!r} against {y.iat[row, col]!r}")
    return problems


def main(argv) -> int:
    if len(argv) != 2:
        print("usage: python scripts/check_review_reproduces.py TABLES_DIR TABLES_DIR", file=sys.stderr)
        return 2
    problems = compare(Path(argv[0]), Path(argv[1]))
    for line in problems[:MAX_LINES]:
        print(line)
    if len(problems) > MAX_LINES:
        print(f"... and {len(problems) - MAX_LINES} more differences")
    if problems:
        return 1
    print(f"the tables agree (timings aside): {len(table_files(Path(argv[0])))} tables compared")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
