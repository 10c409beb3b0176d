"""The reliability probe's bad inputs, rerun as tests: ``krum-mpi run`` (one rank, no mpiexec) on each
bad config value, config file, dataset file or size exits 2 with one line on stderr, no traceback,
no results file, and in bounded time.

Each case is one kind of finding of the probe (issue: "34 tracebacks", "hangs", "unclear messages",
"data silently altered"): before the fixes these were tracebacks (run.seed = -1, 12 HDF5 layouts,
sizes beyond memory), hangs (YAML alias bombs, workers.n = 1e9) or misleading messages (a FIFO as
config "not found", n_classes = 1e6 "lower model.hidden").
"""
import os

import h5py
import numpy as np
import pytest

from conftest import run_cli
from krum_mpi.data import store

BASE = """
[run]
steps = 2
eval_every = 1
[workers]
n = 4
[data]
name = "synthetic"
n_train = 200
n_test = 40
n_features = 5
[model]
name = "softmax"
"""


def laughs(levels: int) -> str:
    """A YAML 'billion laughs' as run.name: item i lists item i-1 ten times (10**levels strings)."""
    items = ["    - &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"    - &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "run:\n  name:\n" + "\n".join(items) + "\n"


# -- config values (--set on the base config) -------------------------------------------------------
SETS = {
    "negative seed": (["run.seed=-1"], ["run.seed", ">= 0"]),
    "seed beyond int64": (["run.seed=18446744073709551616"], ["run.seed", "64-bit"]),
    "steps beyond int64": (["run.steps=99999999999999999999"], ["run.steps", "64-bit"]),
    "a billion workers": (["workers.n=1000000000"], ["memory", "lower workers.n"]),
    "1e8 features": (["data.n_features=100000000"], ["memory", "lower data.n_features"]),
    "1e10 test rows": (["data.n_test=10000000000"], ["memory", "lower data.n_test"]),
    "1e6 classes": (["data.n_classes=1000000"], ["memory", "lower data.n_classes"]),
    "features beyond int64 product": (["data.image_shape=[10000000000,10000000000,10000000000]"],
                                      ["data.image_shape"]),
    "fractional features": (["data.n_features=6.7"], ["data.n_features", "integer"]),
    "huge batch": (["workers.batch_size=9000000000000000000"], ["lower workers.batch_size"]),
    "char model on synthetic rows": (["model.name=char-transformer"], ["data.name = 'text'"]),
    "hidden list of 5000 layers": (["model.name=mlp", "model.hidden=[" + ",".join(["1"] * 5000) + "]"],
                                   ["model.hidden has 5000 entries"]),
    "10k-character run.name": (["run.name=" + "n" * 10_000], ["run.name", "at most 200"]),
}


def write_base(tmp_path, text=BASE, name="run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def assert_one_line_exit_2(proc, out, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("krum-mpi: error: "), proc.stderr[-2000:]
    assert len(lines[0]) < 700, lines[0][:300]
    for word in words:
        assert word in lines[0], lines[0]
    assert not os.path.exists(out)


@pytest.mark.parametrize("case", list(SETS))
def test_bad_value(tmp_path, case):
    sets, words = SETS[case]
    out = tmp_path / "r.h5"
    args = ["run", write_base(tmp_path)] + [a for s in sets for a in ("--set", s)] + ["--out", out, "--quiet"]
    assert_one_line_exit_2(run_cli(args, timeout=120), out, *words)


# -- config files -------------------------------------------------------------------------------------
def config_dir(tmp_path):
    path = tmp_path / "config.toml"
    path.mkdir()
    return path


def config_fifo(tmp_path):
    path = tmp_path / "config.toml"
    os.mkfifo(path)
    return path


FILES = {
    "YAML alias bomb": (lambda t: write_base(t, laughs(9), "bomb.yaml"), ["alias"]),
    "YAML duplicate key": (lambda t: write_base(t, "run:\n  steps: 3\n  steps: 4\n", "dup.yaml"), ["duplicate key"]),
    "config is a directory": (config_dir, ["is a directory"]),
    "config is a FIFO": (config_fifo, ["FIFO", "not a regular file"]),
    "config is /dev/zero": (lambda t: "/dev/zero", ["character device", "not a regular file"]),
}


@pytest.mark.parametrize("case", list(FILES))
def test_bad_config_file(tmp_path, case):
    make, words = FILES[case]
    out = tmp_path / "r.h5"
    proc = run_cli(["run", make(tmp_path), "--out", out, "--quiet"], timeout=120)
    assert_one_line_exit_2(proc, out, *words)
    assert "not found" not in proc.stderr


def test_config_with_byte_order_mark_runs(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    out = tmp_path / "r.h5"
    proc = run_cli(["run", path, "--out", out, "--quiet"], timeout=300)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-2000:]


# -- dataset files ------------------------------------------------------------------------------------
def good_h5(path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((200, 5)), np.arange(200) % 2
    return store.write_arrays(path, X, y, X[:40], y[:40], name="d", n_classes=2)


def redo(name, data):
    def mutate(f):
        del f[name]
        f[name] = data
    return mutate


def make_group(f):
    del f["train/X"]
    f.create_group("train/X")


def soft_loop(f):
    del f["train"]
    f["train"] = h5py.SoftLink("/train")


def external(f):
    del f["train/X"]
    f["train/X"] = h5py.ExternalLink("other.h5", "/X")


def huge_rows(f):
    for split in ("train", "test"):
        del f[f"{split}/X"], f[f"{split}/y"]
        f.create_dataset(f"{split}/X", shape=(10**12, 5), dtype=np.float32, chunks=(1024, 5))
        f.create_dataset(f"{split}/y", shape=(10**12,), dtype=np.int64, chunks=(1024,))


def attr(key, value):
    return lambda f: f.attrs.__setitem__(key, value)


H5 = {
    "X strings": (redo("train/X", np.array([["a"] * 5] * 200, dtype="S1")), ["/train/X"]),
    "y strings": (redo("train/y", np.array(["0", "1"] * 100, dtype="S1")), ["/train/y"]),
    "complex X": (redo("train/X", np.ones((200, 5)) * 1j), ["complex"]),
    "float labels": (redo("train/y", np.array([0.7, 1.7] * 100)), ["labels must be integers"]),
    "mean missing": (lambda f: f.__delitem__("train/mean"), ["/train/mean missing"]),
    "std misshaped": (redo("train/std", np.ones(7)), ["/train/std has shape"]),
    "NaN mean": (redo("train/mean", np.array([0, np.nan, 0, 0, 0.0])), ["/train/mean", "NaN"]),
    "zero std": (redo("train/std", np.array([1, 1, 0, 1, 1.0])), ["/train/std[2]"]),
    "non-numeric attribute": (attr("n_classes", "two"), ["'n_classes'"]),
    "fractional n_features": (attr("n_features", 5.5), ["'n_features' = 5.5"]),
    "unknown scaling": (attr("scaling", "log"), ["'scaling'"]),
    "/train/X a group": (make_group, ["/train/X is a group"]),
    "external link": (external, ["external link"]),
    "soft-link loop": (soft_loop, ["soft link"]),
    "1e12 declared rows": (huge_rows, ["declares", "available"]),
}


@pytest.mark.parametrize("case", list(H5))
def test_bad_dataset_file(tmp_path, case):
    mutate, words = H5[case]
    data = good_h5(tmp_path / "d.h5")
    with h5py.File(data, "a") as f:
        mutate(f)
    out = tmp_path / "r.h5"
    proc = run_cli(["run", write_base(tmp_path), "--set", "data.name=hdf5", "--set", f"data.path={data}",
                    "--out", out, "--quiet"], timeout=120)
    assert_one_line_exit_2(proc, out, str(data), *words)


def test_features_beyond_float32_stop_the_run_with_one_line(tmp_path):
    data = good_h5(tmp_path / "d.h5")
    with h5py.File(data, "a") as f:
        X = f["train/X"][...].astype(np.float64)
        X[:, 1] = 1e300
        redo("train/X", X)(f)
    proc = run_cli(["run", write_base(tmp_path), "--set", "data.name=hdf5", "--set", f"data.path={data}",
                    "--set", "data.standardize=false", "--out", tmp_path / "r.h5", "--quiet"], timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "float32" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]


@pytest.mark.parametrize("what", ["folder", "fifo", "/dev/zero"])
def test_data_path_says_what_it_is(tmp_path, what):
    if what == "folder":
        path, words = tmp_path / "d.h5", ["is a directory"]
        path.mkdir()
    elif what == "fifo":
        path, words = tmp_path / "d.h5", ["FIFO", "not a regular file"]
        os.mkfifo(path)
    else:
        path, words = "/dev/zero", ["character device"]
    out = tmp_path / "r.h5"
    proc = run_cli(["run", write_base(tmp_path), "--set", "data.name=hdf5", "--set", f"data.path={path}",
                    "--out", out, "--quiet"], timeout=120)
    assert_one_line_exit_2(proc, out, *words)


# -- model and benchmark sizes --------------------------------------------------------------------------
def test_unknown_model_name_without_torch_says_unknown(tmp_path):
    """Without torch (blocked here by a sitecustomize on the path, as on a machine without the extra),
    models.make says "unknown model.name" for an unknown name, and "needs PyTorch" only for a torch one."""
    import subprocess
    import sys

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    code = ("from krum_mpi import models\nfrom krum_mpi.errors import ConfigError\n"
            "for name in ('resnet', 'lenet5'):\n"
            "    try:\n        models.make({'name': name}, 5, 3)\n"
            "    except ConfigError as exc:\n        print(name, '|', exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    lines = dict(line.split(" | ", 1) for line in proc.stdout.splitlines())
    assert "unknown model.name 'resnet'" in lines["resnet"], proc.stdout + proc.stderr
    assert "needs PyTorch" in lines["lenet5"], proc.stdout + proc.stderr


def test_factory_with_extra_outputs_is_refused(tmp_path):
    pytest.importorskip("torch")
    factory = tmp_path / "factory.py"
    factory.write_text("from torch import nn\n\ndef build(n_features, n_classes, input_shape=None):\n"
                       "    return nn.Linear(n_features, n_classes + 3)\n")
    out = tmp_path / "r.h5"
    proc = run_cli(["run", write_base(tmp_path), "--set", "model.name=torch", "--set", f"model.factory={factory}:build",
                    "--out", out, "--quiet"], timeout=300)
    assert_one_line_exit_2(proc, out, "output has shape (2, 5)", "expected (batch, 2)")


@pytest.mark.parametrize("d, words", [("1e12", ["GiB", "lower --d"]), ("6.7", ["positive integers"]),
                                      ("inf", ["positive integers"])])
def test_bench_aggregate_sizes(tmp_path, d, words):
    out = tmp_path / "bench.h5"
    proc = run_cli(["bench", "aggregate", "--d", d, "--out", out, "--quiet"], timeout=120)
    assert_one_line_exit_2(proc, out, *words)


@pytest.mark.parametrize("what", ["fifo", "folder"])
def test_data_convert_never_replaces_what_is_not_a_file(tmp_path, what):
    src = tmp_path / "s.csv"
    src.write_text("1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    out = tmp_path / "out.h5"
    os.mkfifo(out) if what == "fifo" else out.mkdir()
    proc = run_cli(["data", "convert", "csv", src, out], timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a" in proc.stderr, proc.stderr
    assert (out.is_fifo() if what == "fifo" else out.is_dir())


@pytest.mark.parametrize("flag, value", [("--n-classes", "1000000000000000000000"), ("--seed", "-1")])
def test_data_convert_integer_options_are_bounded(tmp_path, flag, value):
    src = tmp_path / "s.csv"
    src.write_text("1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    proc = run_cli(["data", "convert", "csv", src, tmp_path / "o.h5", flag, value], timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and flag in proc.stderr, proc.stderr
