"""scripts/check_review_reproduces.py on two small fake report tables: row by row, a slice (--part,
--slice), and the reason a row differs (kernel, threads, code version)."""
import importlib.util
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "check_review_reproduces.py"
HASWELL, SKYLAKE = "openblas 0.3.31 Haswell", "openblas 0.3.31 SkylakeX"


def load():
    spec = importlib.util.spec_from_file_location("check_review", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runs_table(kernel=HASWELL, threads="1", commit="abc", step_s=0.01, drop=(), prov=True):
    rows = []
    for i, (part, rule) in enumerate([("point1", "krum"), ("point1", "median"), ("point2", "krum"),
                                      ("point2", "average")]):
        rows.append({"run": f"runs/{i:010x}.h5", "status": "complete", "rule": rule, "seed": str(i % 2),
                     "final_accuracy": f"0.{80 + i}", "final_loss": f"0.4{i}1234567", "step_s": step_s * (i + 1),
                     "run.name": part, "prov.blas_kernel": kernel, "prov.blas_threads": threads,
                     "prov.git_commit": commit})
    frame = pd.DataFrame(rows)
    frame = frame[~frame["run"].isin([f"runs/{i:010x}.h5" for i in drop])]
    return frame if prov else frame[[c for c in frame.columns if not c.startswith("prov.")]]


def write(folder, runs, accuracy=0.85):
    folder.mkdir(parents=True)
    runs.to_csv(folder / "runs.csv", index=False)
    pd.DataFrame({"rule": ["krum"], "accuracy": [accuracy]}).to_csv(folder / "point1_accuracy.csv", index=False)
    pd.DataFrame({"rule": ["krum"], "step_ms": [accuracy * 7]}).to_csv(folder / "point1_timing.csv", index=False)
    return folder


def check(*args):
    done = subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def test_same_rows_timings_aside_agree(tmp_path):
    ref = write(tmp_path / "a", runs_table())
    new = write(tmp_path / "b", runs_table(step_s=0.5))
    rc, out, _ = check(ref, new)
    assert rc == 0, out
    assert out.count("agree   runs/") == 4 and "runs: 4 agree, 0 differ; aggregated tables: agree" in out
    assert load().compare(ref, new) == []


def test_a_differing_row_names_the_kernel(tmp_path):
    changed = runs_table(kernel=SKYLAKE)
    changed.loc[1, "final_loss"] = "0.411234568"
    rc, out, _ = check(write(tmp_path / "a", runs_table()), write(tmp_path / "b", changed))
    assert rc == 1
    lines = out.splitlines()
    assert lines[1] == (f"differ  runs/0000000001.h5: final_loss '0.411234567' against '0.411234568'; "
                        f"why: kernel {HASWELL} against {SKYLAKE}")
    assert sum(line.startswith("agree") for line in lines) == 3


@pytest.mark.parametrize("kwargs, reason", [
    ({"threads": "2"}, "why: threads 1 against 2"),
    ({"commit": "def"}, "why: code version abc against def"),
    ({}, "why: same kernel, threads and code version: not explained by the recorded conditions"),
    ({"prov": False}, "why: not recorded in both tables: kernel, threads, code version"),
])
def test_the_reason_is_what_differs_in_the_recorded_conditions(tmp_path, kwargs, reason):
    changed = runs_table(**kwargs)
    changed.loc[0, "final_accuracy"] = "0.79"
    rc, out, _ = check(write(tmp_path / "a", runs_table()), write(tmp_path / "b", changed))
    assert rc == 1 and out.splitlines()[0].endswith(reason)


def test_a_slice_compares_only_the_rows_the_rerun_holds(tmp_path):
    ref = write(tmp_path / "a", runs_table())
    part = write(tmp_path / "b", runs_table(drop=(2, 3)), accuracy=0.5)   # its aggregated table pools less
    rc, out, _ = check(ref, part, "--slice")
    assert rc == 0, out
    assert "runs: 2 agree, 0 differ, 2 reference rows not in the rerun (skipped: a slice); " \
           "aggregated tables not compared (a slice)" in out
    rc, out, _ = check(ref, part)                       # the whole report: missing rows and tables fail
    assert rc == 1 and "missing runs/0000000002.h5: not in the rerun" in out
    assert "point1_accuracy.csv: row 0, accuracy: '0.85' against '0.5'" in out


def test_a_slice_compares_rule_labels_by_their_base_name(tmp_path):
    """The whole study labels a rule with the keys it varies ("krum(placement=gather)"); a slice that
    does not vary them says "krum" for the same run: agree. Another base name still differs, and a
    whole-report comparison keeps the labels as they are."""
    full = runs_table()
    full["rule"] = full["rule"].map(lambda r: f"{r}(placement=gather)")
    ref = write(tmp_path / "a", full)
    part = write(tmp_path / "b", runs_table(drop=(2, 3)))
    rc, out, _ = check(ref, part, "--slice")
    assert rc == 0 and "runs: 2 agree, 0 differ" in out, out
    other = runs_table(drop=(2, 3))
    other.loc[0, "rule"] = "median"
    rc, out, _ = check(ref, write(tmp_path / "c", other), "--slice")
    assert rc == 1 and "rule 'krum(placement=gather)' against 'median'" in out, out
    rc, out, _ = check(ref, write(tmp_path / "d", runs_table()))
    assert rc == 1 and "rule 'krum(placement=gather)' against 'krum'" in out, out


def test_part_picks_the_runs_of_a_study_part(tmp_path):
    ref = write(tmp_path / "a", runs_table())
    changed = runs_table(kernel=SKYLAKE)
    changed.loc[3, "final_accuracy"] = "0.5"           # a point2 run
    new = write(tmp_path / "b", changed)
    rc, out, _ = check(ref, new, "--part", "point1")
    assert rc == 0 and "runs: 2 agree, 0 differ" in out
    rc, out, _ = check(ref, new, "--part", "point2")
    assert rc == 1 and "runs: 1 agree, 1 differ" in out and f"kernel {HASWELL} against {SKYLAKE}" in out


def test_bad_arguments_are_one_line_and_exit_2(tmp_path):
    rc, _, err = check(tmp_path / "none", tmp_path / "none2")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no runs.csv" in err
    old = runs_table().drop(columns=["run.name"])
    rc, _, err = check(write(tmp_path / "a", old), write(tmp_path / "b", old), "--part", "point1")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "run.name" in err


def test_an_agreeing_row_names_the_conditions_that_differed(tmp_path):
    rc, out, _ = check(write(tmp_path / "a", runs_table()), write(tmp_path / "b", runs_table(threads="2")))
    assert rc == 0, out
    assert out.splitlines()[0] == "agree   runs/0000000000.h5 (although threads 1 against 2)"


OTHER_CORETYPE = {"Haswell": "Sandybridge"}   # a core type another DYNAMIC_ARCH OpenBLAS kernel serves


@pytest.mark.mpi
@pytest.mark.slow
def test_a_real_rerun_agrees_row_by_row_and_another_kernel_is_named(tmp_path, mpiexec):
    """A tiny study (real mpiexec runs) run and reported twice on the same kernel: every row agrees,
    bitwise (runs.csv holds the values as written); a third time with OPENBLAS_CORETYPE forcing another
    core type: its runs.csv records that kernel, and every row that differs names the kernel."""
    from conftest import run_cli
    from krum_mpi.study.kernel import coretype_of

    spec = tmp_path / "study.toml"
    spec.write_text(
        '[study]\nname = "repro"\njobs = 2\n[base.run]\nname = "point1-clean"\nsteps = 12\neval_every = 4\n'
        '[base.workers]\nn = 6\nbatch_size = 16\n[base.data]\nname = "synthetic"\nn_train = 2000\nn_test = 200\n'
        'n_features = 40\n[base.model]\nname = "mlp"\nhidden = [64, 64]\n[launch]\nranks = 1\ntime = "00:03:00"\n'
        '[parts.point1-clean.sweep]\n"aggregator.name" = ["average", "krum"]\n"aggregator.f" = [1]\n"run.seed" = [0, 1]\n')

    def study(name, env=None):
        folder = tmp_path / name
        done = run_cli(["study", "run", spec, "--dir", folder], timeout=600, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        report = run_cli(["report", folder, "--out", tmp_path / f"{name}-report"], timeout=600)
        assert report.returncode == 0, report.stdout + report.stderr
        return tmp_path / f"{name}-report" / "tables"

    first, second = study("first"), study("second")
    rc, out, err = check(first, second)
    assert rc == 0, out + err
    assert out.count("agree   runs/") == 4 and "runs: 4 agree, 0 differ" in out
    kernel = pd.read_csv(first / "runs.csv", dtype=str)["prov.blas_kernel"].iloc[0]
    other = OTHER_CORETYPE.get(coretype_of(kernel), "Haswell")
    third = study("third", env={"OPENBLAS_CORETYPE": other})
    recorded = pd.read_csv(third / "runs.csv", dtype=str)["prov.blas_kernel"]
    if (recorded == kernel).all():
        pytest.skip(f"OPENBLAS_CORETYPE={other} did not change the kernel ({kernel}): not a DYNAMIC_ARCH OpenBLAS")
    rc, out, _ = check(first, third, "--slice")
    rows = [line for line in out.splitlines() if line.startswith(("agree", "differ"))]
    assert len(rows) == 4
    for line in rows:
        assert f"kernel {kernel} against {recorded.iloc[0]}" in line, line
