"""The first hour's outputs: the demo offline names the data it used, ``summary`` flags files no run
could have written, and every study verb names the study folder ``--dir``."""
import shutil
from pathlib import Path

import h5py
import pytest

from conftest import REPO, run_cli

OFFLINE = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",   # a refused port:
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}   # no network


@pytest.mark.mpi
def test_demo_offline_says_synthetic_without_an_error_line(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    done = run_cli(["demo", "--steps", "3", "--ranks", "2", "--out", tmp_path / "demo"],
                   env={"KRUM_MPI_DATA": str(empty), **OFFLINE}, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    assert "offline: running the same comparison on synthetic data" in said
    assert "error" not in said.lower(), said
    files = sorted(p.name for p in (tmp_path / "demo").glob("*.h5"))
    assert files == ["synthetic-average-f0.h5", "synthetic-average-f6.h5", "synthetic-krum-f0.h5",
                     "synthetic-krum-f6.h5"]
    assert "paper-fig4" not in done.stdout
    table = [line for line in done.stdout.splitlines() if ".h5" in line and "synthetic-" in line]
    assert len(table) == 4 and all("synthetic (57 features)" in line for line in table), done.stdout
    assert "data: synthetic" in done.stdout


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("summary")
    out = folder / "good.h5"
    done = run_cli(["run", REPO / "configs" / "synthetic-krum-f6.toml", "--set", "run.steps=6",
                    "--set", "run.eval_every=3", "--out", out, "--quiet"], timeout=120)
    assert done.returncode == 0, done.stderr
    return out


def _altered(good, folder, name, change):
    path = folder / f"{name}.h5"
    shutil.copyfile(good, path)
    with h5py.File(path, "r+") as h5:
        change(h5)
    return path


def _set(**attrs):
    def change(h5):
        h5.attrs.update(attrs)
    return change


def _drop_loss(h5):
    del h5["metrics/loss"]


def _short_rows(h5):
    for name in ("metrics/step", "metrics/loss", "metrics/test_accuracy"):
        h5[name].resize((2,))


def _accuracy_above_one(h5):
    h5["metrics/test_accuracy"][2] = 1.5


IMPOSSIBLE = {  # file name -> (change, what its line must say)
    "beyond-plan": (_set(steps_done=900), "900 steps done of 6 planned"),
    "negative": (_set(steps_done=-2), "negative step count -2"),
    "complete-too-soon": (_set(steps=10), "complete after 6 of 10 steps"),
    "no-loss": (_drop_loss, "no loss recorded"),
    "too-few-rows": (_short_rows, "6 steps but 2 rows"),
    "accuracy-1.5": (_accuracy_above_one, "test accuracy outside [0, 1]"),
    "odd-status": (_set(status="fine"), "unknown status 'fine'"),
    "no-config": (lambda h5: h5.attrs.__delitem__("config"), "UNREADABLE"),
}


def test_summary_flags_each_impossible_file_on_its_own_line(good_run, tmp_path):
    paths = {name: _altered(good_run, tmp_path, name, change) for name, (change, _) in IMPOSSIBLE.items()}
    done = run_cli(["summary", good_run, *paths.values()], timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr   # some file is impossible
    assert "Traceback" not in done.stderr
    by_name = {Path(word).stem: line for line in done.stdout.splitlines()[1:]
               for word in line.split() if word.endswith(".h5")}
    assert by_name["good"].rstrip().endswith("ok"), done.stdout
    for name, (_, said) in IMPOSSIBLE.items():
        assert said in by_name[name], f"{name}: {by_name[name]}"
        assert "IMPOSSIBLE" in by_name[name] or "UNREADABLE" in by_name[name]


def test_summary_of_good_files_exits_0(good_run):
    done = run_cli(["summary", good_run], timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6/6" in done.stdout and "synthetic (57 features)" in done.stdout


def test_study_render_takes_dir_like_every_study_verb(tmp_path):
    spec = REPO / "configs" / "study-synthetic-quick.toml"
    study = tmp_path / "study"
    done = run_cli(["study", "render", spec, "--profile", "local-test", "--dir", study], timeout=120)
    assert done.returncode == 0, done.stderr
    rendered = study / "slurm" / "rendered"
    array = next(rendered.glob("array-*.sbatch")).read_text()
    assert str(study) in array
    for verb in ("plan", "run", "submit", "status", "render"):
        usage = run_cli(["study", verb, "--help"], timeout=60)
        assert "--dir" in usage.stdout, verb
        assert "--study-dir" not in usage.stdout, verb
    old = run_cli(["study", "render", spec, "--profile", "local-test", "--study-dir", study,
                   "--out", tmp_path / "old"], timeout=120)
    assert old.returncode == 0 and "now --dir" in old.stderr, old.stderr
