"""Shared test fixtures: real datasets, real mpiexec, the installed CLI."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# ---- Slow tests: left out of the plain `python -m pytest` (the README's command), run by CI ----
def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the tests marked slow (CI does; a plain run leaves them out)")


def _leaves_out_slow(config) -> bool:
    """A plain run over the test folder leaves the slow tests out; --runslow, a -m expression or
    files named on the command line run them (naming a slow file runs it, never 'no tests ran')."""
    return (not config.getoption("--runslow") and not config.getoption("markexpr")
            and config.args_source == pytest.Config.ArgsSource.TESTPATHS)


def pytest_collection_modifyitems(config, items):
    if not _leaves_out_slow(config):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow and len(slow) < len(items):
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
        config._krum_slow_left_out = len(slow)


def pytest_terminal_summary(terminalreporter, config):
    left_out = getattr(config, "_krum_slow_left_out", 0)
    if left_out:
        terminalreporter.write_line(f"{left_out} slow tests (long MPI, SLURM and study runs) left out: "
                                    "run them with 'python -m pytest --runslow' (CI runs them)")


def _data_root():
    env = os.environ.get("KRUM_MPI_DATA")
    return Path(env) if env else None


@pytest.fixture(scope="session")
def data_root():
    """Folder with the real datasets (``spambase/spambase.data``, ``mnist-t10k/...``).

    Found through ``KRUM_MPI_DATA``; tests that need it skip with the reason when it is absent.
    """
    root = _data_root()
    if root is None or not root.is_dir():
        pytest.skip("real datasets not found: set KRUM_MPI_DATA to a folder holding spambase/ and mnist-t10k/")
    return root


@pytest.fixture(scope="session")
def spambase_file(data_root):
    path = data_root / "spambase" / "spambase.data"
    if not path.is_file():
        pytest.skip(f"spambase not found at {path}: run 'krum-mpi data download spambase'")
    return path


@pytest.fixture(scope="session")
def mnist_dir(data_root):
    path = data_root / "mnist-t10k"
    if not (path / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST test set not found in {path}")
    return path


def mpiexec_path():
    """The mpiexec next to this Python (the mpich wheel installs it there), else on PATH."""
    env = os.environ.get("MPIEXEC")
    if env:
        return env
    local = Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return str(local)
    return shutil.which("mpiexec")


@pytest.fixture(scope="session")
def mpiexec():
    path = mpiexec_path()
    if path is None:
        pytest.skip("no mpiexec found: pip install mpich (or set MPIEXEC)")
    return path


def krum_mpi_cmd():
    """Command prefix that runs the krum-mpi CLI with this interpreter."""
    return [sys.executable, "-m", "krum_mpi"]


def run_cli(args, ranks=None, timeout=300, env=None, cwd=None):
    """Run ``krum-mpi ARGS`` (under ``mpiexec -n RANKS`` when ranks is given); return CompletedProcess."""
    cmd = krum_mpi_cmd() + [str(a) for a in args]
    if ranks is not None:
        cmd = [mpiexec_path(), "-n", str(ranks)] + cmd
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=cwd or REPO)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(params=["numpy", "array-api-strict"])
def xp(request):
    """The array namespace the rule tests make their inputs with: NumPy, and the strict array API
    namespace, where a NumPy-only call in code that CuPy runs fails (rules take xp from inputs)."""
    if request.param == "numpy":
        import numpy
        return numpy
    return pytest.importorskip("array_api_strict", reason="pip install array-api-strict")


@pytest.fixture(params=["native", "numpy"])
def kernels(request, monkeypatch):
    """Run a test on the compiled kernels and again on the NumPy ones (the reference and fallback).

    Use it with ``pytestmark = pytest.mark.usefixtures("kernels")`` in a module of rule tests."""
    import krum_mpi.native as native

    if request.param == "native" and native.library("probe") is None:
        pytest.skip("compiled kernels not built (no C compiler at install time): NumPy path only")
    monkeypatch.setattr(native, "ENABLED", request.param == "native")
    return request.param


def native_isas():
    """Every instruction-set variant of the compiled kernels this CPU runs, widest first."""
    import krum_mpi.native as native

    best = native.isa()
    order = ["avx512", "avx2", "generic"]
    return order[order.index(best):] if best in order else []


@pytest.fixture(params=["avx512", "avx2", "generic"])
def native_isa(request, monkeypatch):
    """Each ISA variant of the compiled kernels in turn (KRUM_MPI_ISA caps the dispatch; the kernel
    libraries read it once per process, so they re-read it on entry and again on exit)."""
    import krum_mpi.native as native

    if request.param not in native_isas():
        pytest.skip(f"compiled kernels: the {request.param} variant does not run on this CPU or is not built")
    with monkeypatch.context() as patch:
        patch.setenv("KRUM_MPI_ISA", request.param)
        native.reset_isa()
        yield request.param
    native.reset_isa()


@pytest.fixture(params=["avx512", "avx2", "generic", "numpy"])
def kernel_path(request, monkeypatch):
    """The compiled kernels capped at each ISA this CPU runs, then the NumPy path (KRUM_MPI_NATIVE=0)."""
    import krum_mpi.native as native

    if request.param == "numpy":
        monkeypatch.setattr(native, "ENABLED", False)
        yield request.param
        return
    if request.param not in native_isas():
        pytest.skip(f"compiled kernels: the {request.param} variant does not run on this CPU or is not built")
    monkeypatch.setattr(native, "ENABLED", True)
    with monkeypatch.context() as patch:
        patch.setenv("KRUM_MPI_ISA", request.param)
        native.reset_isa()
        yield request.param
    native.reset_isa()


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(size) -> a real tmpfs of that size (e.g. "1m"), unmounted after the test; skips
    where the machine does not allow mounting (needs root and mount rights)."""
    mounted = []

    def mount(size):
        mnt = tmp_path / f"tmpfs-{len(mounted)}"
        mnt.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


class LoopbackServer:
    """An HTTP server on 127.0.0.1 (an ephemeral port) with the given request handler, for the
    duration of a with-block (downloads are tested against it: no network)."""

    def __init__(self, handler):
        import http.server
        import threading

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def steps_done(path):
    """The steps a results file records as done, or -1 while it cannot be read (not written yet)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return int(h5.attrs["steps_done"])
    except (OSError, KeyError):
        return -1


def sigterm_after_steps(args, out, at_least, ranks):
    """Start ``krum-mpi run ARGS`` (its results file ``out``) on ``ranks`` MPI ranks, send SIGTERM
    once the file records ``at_least`` steps (or the run ended, or 120 s passed); returns
    (exit status, stderr)."""
    import signal
    import time

    cmd = [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "krum_mpi", "run", *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while steps_done(out) < at_least and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def checkpoint_header(path):
    """A checkpoint file's bytes, the room kept for its JSON header, and the header itself."""
    import json
    import struct

    raw = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", raw[12:20])
    return raw, length, json.loads(raw[20:20 + length])


SMALL_RUN = """
[run]
steps = {steps}
checkpoint_every = 5
eval_every = 10
[workers]
n = 4
batch_size = 4
[data]
name = "synthetic"
n_train = {n_train}
n_test = 100
n_features = 8
[model]
hidden = [8]
"""


def small_run_config(steps=20, n_train=400) -> str:
    """A run config that takes a second or two on one rank: synthetic data, 4 workers, a tiny MLP."""
    return SMALL_RUN.format(steps=steps, n_train=n_train)


def one_line_error(done, *needles):
    """The command failed with exit 2 and one stderr line, krum-mpi's error, holding every needle."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("krum-mpi: error:"), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
