"""PyTorch workers under real mpiexec: the MNIST CNN with Krum and with averaging under an attack,
synthetic images, your own module from a file, and kill -9 then --resume (bitwise)."""
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import REPO, mpiexec_path, run_cli, steps_done

pytest.importorskip("torch", reason="PyTorch not installed: pip install 'krum-mpi[torch]'")
pytestmark = pytest.mark.mpi

CONFIG = REPO / "configs" / "mnist-t10k-average.toml"
# n = 10 workers, 2 of them Byzantine (sign-flip), ByzFL's batch 25 and lr 0.1, 50 steps
CNN = ["--set", "model.name=mnist-cnn", "--set", "run.steps=50", "--set", "run.eval_every=25",
       "--set", "workers.n=10", "--set", "workers.batch_size=25", "--set", "optimizer.lr=0.1",
       "--set", "workers.byzantine=2", "--set", "attack.name=sign-flip"]
SYNTHETIC_IMAGES = ["--set", "data.name=synthetic", "--set", "data.generator=mixture",
                    "--set", "data.image_shape=[1, 28, 28]", "--set", "data.n_classes=10",
                    "--set", "data.n_train=20000", "--set", "data.n_test=500"]


def _loss_and_status(path):
    with h5py.File(path, "r") as h5:
        return h5["metrics/loss"][()], str(h5.attrs["status"])


def _assert_loss_falls(path, steps, factor=0.7):
    loss, status = _loss_and_status(path)
    assert status == "complete" and loss.shape == (steps,)
    assert np.isfinite(loss).all()
    assert loss[-10:].mean() < factor * loss[:5].mean(), f"loss did not fall: {loss[:5]} ... {loss[-10:]}"


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["krum", "average"])
def test_mnist_cnn_four_ranks_under_sign_flip(tmp_path, mnist_dir, rule):
    out = tmp_path / f"{rule}.h5"
    done = run_cli(["run", CONFIG, "--out", out, *CNN, "--set", f"aggregator.name={rule}"], ranks=4,
                   env={"KRUM_MPI_DATA": str(mnist_dir.parent)})
    assert done.returncode == 0, done.stderr
    _assert_loss_falls(out, 50)
    with h5py.File(out, "r") as h5:
        assert int(np.asarray(h5["selection/selected"]).shape[0]) == 50


@pytest.mark.slow
def test_mnist_cnn_on_synthetic_images(tmp_path):
    """The same run without any dataset on disk: seeded synthetic 28 x 28 images."""
    out = tmp_path / "synthetic.h5"
    done = run_cli(["run", CONFIG, "--out", out, *CNN, *SYNTHETIC_IMAGES, "--set", "aggregator.name=krum"],
                   ranks=4)
    assert done.returncode == 0, done.stderr
    _assert_loss_falls(out, 50)


def test_your_own_module_from_a_file_trains(tmp_path):
    out = tmp_path / "own.h5"
    settings = ["--set", "model.name=torch", "--set", "model.factory=tests/torch_user_model.py:mlp",
                "--set", "model.kwargs={hidden = [64]}", "--set", "data.name=synthetic",
                "--set", "data.generator=mixture", "--set", "data.n_classes=4", "--set", "data.n_features=30",
                "--set", "run.steps=60", "--set", "run.eval_every=60", "--set", "workers.n=4",
                "--set", "workers.batch_size=16", "--set", "optimizer.lr=0.1"]
    done = run_cli(["run", CONFIG, "--out", out, *settings], ranks=2)
    assert done.returncode == 0, done.stderr
    _assert_loss_falls(out, 60)
    with h5py.File(out, "r") as h5:
        assert h5["metrics/test_accuracy"][-1] > 0.6     # 4 classes: chance is 0.25


def test_a_failing_factory_stops_every_rank_with_one_line(tmp_path):
    out = tmp_path / "bad.h5"
    done = run_cli(["run", CONFIG, "--out", out, "--set", "model.name=torch",
                    "--set", "model.factory=tests/torch_user_model.py:broken", *SYNTHETIC_IMAGES], ranks=2)
    assert done.returncode == 2
    assert "this factory always fails" in done.stderr and "Traceback" not in done.stderr


# -- kill -9 and --resume ---------------------------------------------------------------------
RESUME = ["--set", "model.name=lenet5", *SYNTHETIC_IMAGES, "--set", "workers.n=5",
          "--set", "workers.batch_size=8", "--set", "run.steps=250", "--set", "run.checkpoint_every=7",
          "--set", "run.eval_every=50", "--set", "optimizer.momentum=0.9",
          "--set", "optimizer.momentum_at=worker", "--set", "aggregator.name=krum",
          "--set", "workers.byzantine=1", "--set", "attack.name=gaussian"]


def _record(path):
    with h5py.File(path, "r") as h5:
        assert h5.attrs["status"] == "complete"
        return (h5["metrics/loss"][()], h5["metrics/test_accuracy"][()], h5["selection/selected"][()])


@pytest.mark.slow
def test_kill9_then_resume_is_bitwise_identical_with_a_torch_model(tmp_path):
    ref = tmp_path / "ref.h5"
    done = run_cli(["run", CONFIG, "--out", ref, *RESUME], ranks=2)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "killed.h5"
    cmd = [mpiexec_path(), "-n", "2", sys.executable, "-m", "krum_mpi", "run", str(CONFIG),
           "--out", str(out), *RESUME]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    target = int(np.random.default_rng().integers(20, 120))
    deadline = time.monotonic() + 180
    while steps_done(out) < target:
        assert proc.poll() is None, f"run ended before step {target}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"no step {target} within 180 s"
        time.sleep(0.05)
    found = subprocess.run(["pgrep", "-f", f"krum_mpi run .* --out {out}"], capture_output=True, text=True)
    pids = [int(p) for p in found.stdout.split() if int(p) != proc.pid]
    assert pids, "no rank process found"
    os.kill(pids[-1], signal.SIGKILL)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert 0 < steps_done(out) < 250
    resumed = run_cli(["run", CONFIG, "--out", out, "--resume", *RESUME], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    for got, want in zip(_record(out), _record(ref)):
        assert got.tobytes() == want.tobytes(), "the resumed run differs from the uninterrupted one"


@pytest.mark.slow
def test_char_transformer_learns_text(tmp_path):
    """The character model on a text file (the package's own source), small, 2 ranks."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(p.read_text() for p in sorted((REPO / "krum_mpi").glob("*.py"))))
    out = tmp_path / "text.h5"
    settings = ["--set", "data.name=text", "--set", f"data.path={corpus}", "--set", "data.context=32",
                "--set", "model.name=char-transformer",
                "--set", "model.kwargs={d_model = 64, n_layers = 2, n_heads = 4, d_ff = 128}",
                "--set", "run.steps=40", "--set", "run.eval_every=40", "--set", "workers.n=4",
                "--set", "workers.batch_size=8", "--set", "optimizer.lr=0.5"]
    done = run_cli(["run", CONFIG, "--out", out, *settings], ranks=2)
    assert done.returncode == 0, done.stderr
    _assert_loss_falls(out, 40, factor=0.85)     # from ln(vocabulary) ~ 4.5 towards character statistics
