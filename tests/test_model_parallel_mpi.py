"""Model parallelism under real ``mpiexec``: the split gradient on real group communicators, training
on 4 ranks with parallel.model = 2 and 4 selecting what the gathered placement selects, a resume
that is bitwise the uninterrupted run, and the refusal of another parallel.model on resume."""
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import REPO, checkpoint_header, mpiexec_path, run_cli, sigterm_after_steps
from krum_mpi.run import checkpoint

pytestmark = pytest.mark.mpi
CHECK = Path(__file__).parent / "model_parallel_mpi_check.py"
KRUM_F6 = REPO / "configs" / "synthetic-krum-f6.toml"
SPAMBASE_F6 = REPO / "configs" / "paper-fig4-krum-f6.toml"
# Krum, 6 of 20 workers Byzantine, crafted block by block (alie); the test-set accuracy every 10 steps
SHORT = ["--set", "run.steps=30", "--set", "run.eval_every=10", "--set", "attack.name=alie"]


@pytest.fixture(autouse=True)
def need_mpiexec():
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich")


def without_sigma(preset: Path, tmp_path: Path) -> Path:
    """The preset without its Gaussian attack's sigma (the tests use alie)."""
    config = tmp_path / preset.name
    config.write_text("\n".join(line for line in preset.read_text().splitlines() if not line.startswith("sigma")))
    return config


@pytest.mark.parametrize("ranks", [2, 4])
def test_split_gradient_on_real_groups_equals_the_unsplit_model(ranks):
    done = subprocess.run([mpiexec_path(), "-n", str(ranks), sys.executable, str(CHECK)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ranks"] == ranks
    assert report["failing_ranks"] == 0, report["failures"]


def _train_against_gather(config, tmp_path, extra=()):
    files = {}
    for p in (1, 2, 4):
        files[p] = tmp_path / f"p{p}.h5"
        done = run_cli(["run", config, "--out", files[p], *SHORT, *extra, "--set", f"parallel.model={p}"], ranks=4)
        assert done.returncode == 0, done.stderr
    with h5py.File(files[1]) as g:
        want, want_loss, want_acc = g["selection/selected"][()], g["metrics/loss"][()], g["metrics/test_accuracy"][()]
    for p in (2, 4):
        with h5py.File(files[p]) as h5:
            assert h5.attrs["parallel_model"] == p and h5.attrs["status"] == "complete"
            assert np.array_equal(h5["selection/selected"][()], want), f"parallel.model = {p} selected otherwise"
            np.testing.assert_allclose(h5["metrics/loss"][()], want_loss, rtol=1e-4)
            acc = h5["metrics/test_accuracy"][()]
            np.testing.assert_allclose(acc[np.isfinite(acc)], want_acc[np.isfinite(want_acc)], atol=2e-3)
            assert h5["comm/bytes_sent"].shape == (30, 4)
            assert "checkpoint" not in h5            # the final parameters stay sharded, in <out>.ckpt
            sizes = list(h5.attrs["model_shard_sizes"])
            run_id = h5.attrs["run_id"]
        expected = {f"params.shard{s}": ((m,), "float32") for s, m in enumerate(sizes)}
        step, arrays = checkpoint.read(checkpoint.path_for(files[p]), run_id, expected)
        assert step == 29 and sum(a.size for a in arrays.values()) == 1622
        assert sorted(q.name for q in tmp_path.iterdir() if q.name.startswith(".")) == []   # no spare left


@pytest.mark.slow
def test_training_on_synthetic_data_selects_what_gather_selects(tmp_path):
    _train_against_gather(without_sigma(KRUM_F6, tmp_path), tmp_path)


@pytest.mark.slow
def test_training_on_spambase_selects_what_gather_selects(tmp_path, data_root):
    _train_against_gather(without_sigma(SPAMBASE_F6, tmp_path), tmp_path)


# worker momentum: the checkpoint carries every worker's momentum, shard by shard
RESUME = ["--set", "run.steps=100", "--set", "run.checkpoint_every=7", "--set", "run.eval_every=50",
          "--set", "optimizer.momentum=0.9", "--set", "optimizer.momentum_at=worker", "--set", "attack.name=alie",
          "--set", "parallel.model=2"]


def _final(path):
    with h5py.File(path) as h5:
        assert h5.attrs["status"] == "complete"
        rows = (h5["selection/selected"][()], h5["metrics/loss"][()])
    raw, _, header = checkpoint_header(checkpoint.path_for(path))
    body = raw[min(e["offset"] for e in header["arrays"]):]
    return rows, header["step"], body


@pytest.mark.slow
def test_resume_after_sigterm_is_bitwise_the_uninterrupted_run(tmp_path):
    config = without_sigma(KRUM_F6, tmp_path)
    ref = tmp_path / "ref.h5"
    done = run_cli(["run", config, "--out", ref, *RESUME], ranks=4)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "term.h5"
    code, err = sigterm_after_steps([config, "--out", out, *RESUME], out, 14, ranks=4)
    assert code == 3, err
    with h5py.File(out) as h5:
        assert h5.attrs["status"] == "interrupted" and 14 <= h5.attrs["steps_done"] < 100
    resumed = run_cli(["run", config, "--out", out, "--resume", *RESUME], ranks=4)
    assert resumed.returncode == 0, resumed.stderr
    (want_sel, want_loss), want_step, want_body = _final(ref)
    (sel, loss), step, body = _final(out)
    assert np.array_equal(sel, want_sel) and loss.tobytes() == want_loss.tobytes()
    assert step == want_step == 99 and body == want_body, "resumed shards differ from the uninterrupted run"
    # another split cannot continue these shards: one line, nothing changed
    before = out.read_bytes()
    again = run_cli(["run", config, "--out", out, "--resume", *RESUME, "--set", "parallel.model=4"], ranks=4)
    assert again.returncode == 2
    assert "written with parallel.model = 2 but this run has parallel.model = 4" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and out.read_bytes() == before
    unsplit = run_cli(["run", config, "--out", out, "--resume", *RESUME[:-2]], ranks=4)
    assert unsplit.returncode == 2 and "parallel.model = 2 but this run has parallel.model = 1" in unsplit.stderr
    # a damaged shard is found before any rank takes its shard (each array checked, one at a time)
    ck = checkpoint.path_for(out)
    raw = bytearray(ck.read_bytes())
    header = json.loads(raw[20:20 + int.from_bytes(raw[12:20], "little")])
    entry = next(e for e in header["arrays"] if e["name"] == "worker_momentum.shard1")
    raw[entry["offset"] + 5] ^= 0x10
    ck.write_bytes(bytes(raw))
    damaged = run_cli(["run", config, "--out", out, "--resume", *RESUME], ranks=4)
    assert damaged.returncode == 2 and "checksum mismatch in worker_momentum.shard1" in damaged.stderr


def test_a_complete_sharded_run_resumes(tmp_path):
    """placement = sharded without model parallelism (p = 1): --resume of a finished run keeps it
    (the sharded step had no server momentum attribute for the resume to ask about)."""
    config, out = without_sigma(KRUM_F6, tmp_path), tmp_path / "sharded.h5"
    args = ["run", config, "--out", out, "--set", "run.steps=10", "--set", "attack.name=alie",
            "--set", "aggregator.placement=sharded"]
    assert run_cli(args, ranks=2).returncode == 0
    with h5py.File(out) as h5:
        params = h5["checkpoint/params"][()]
    again = run_cli([*args, "--resume"], ranks=2)
    assert again.returncode == 0, again.stderr
    with h5py.File(out) as h5:
        assert h5.attrs["status"] == "complete" and h5["checkpoint/params"][()].tobytes() == params.tobytes()
