"""Centered clipping under the sharded placements resumes bitwise: its centre, held block by block,
is gathered into the checkpoint and handed back block by block (3 ranks, uneven blocks). A chained
rule's step count (bucketing) resumes too, under every placement."""

import h5py
import numpy as np
import pytest

from conftest import REPO, mpiexec_path, run_cli, sigterm_after_steps, steps_done
from krum_mpi.run import checkpoint

pytestmark = pytest.mark.mpi

CONFIG = REPO / "configs" / "synthetic-krum-f6.toml"   # 1,622 parameters: blocks of 541, 541, 540
SETTINGS = ["--set", "run.steps=300", "--set", "run.checkpoint_every=7", "--set", "run.eval_every=50",
            "--set", "attack.adversary=colluding", "--set", "aggregator.sharded_min_d=0"]   # blocks at any d
# per run, not per step: wall times, and the byte counts of the steps each process ran
PER_PROCESS = ("timing/", "comm/")


def _datasets(path):
    out = {}
    with h5py.File(path, "r") as h5:
        assert h5.attrs["status"] == "complete"
        h5.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _stop_after_30_steps(out, settings):
    """Start the run on 3 ranks, SIGTERM it after at least 30 steps; returns the steps it recorded."""
    code, err = sigterm_after_steps([CONFIG, "--out", out, *settings], out, 30, ranks=3)
    assert code == 3, err
    stopped_at = steps_done(out)
    assert 30 <= stopped_at < 300
    assert b'"name": "aggregator_state.center"' in checkpoint.path_for(out).read_bytes()[:4096]
    return stopped_at


# bucketing's step count (it seeds the buckets) is state of the rule too: a 0-d array in the checkpoint
@pytest.mark.slow
@pytest.mark.parametrize("placement, rule", [("sharded", "centered-clipping"),
                                             ("per-shard", "bucketing+centered-clipping"),
                                             ("gather", "bucketing+centered-clipping")])
def test_centered_clipping_resumes_bitwise(tmp_path, placement, rule):
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich")
    settings = [*SETTINGS, "--set", f"aggregator.placement={placement}", "--set", f"aggregator.name={rule}"]
    ref = tmp_path / "ref.h5"
    done = run_cli(["run", CONFIG, "--out", ref, *settings], ranks=3)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "stopped.h5"
    stopped_at = _stop_after_30_steps(out, settings)
    resumed = run_cli(["run", CONFIG, "--out", out, "--resume", *settings], ranks=3)
    assert resumed.returncode == 0, resumed.stderr
    want, got = _datasets(ref), _datasets(out)
    assert sorted(want) == sorted(got)
    compared = [name for name in want if not name.startswith(PER_PROCESS)]
    assert {"checkpoint/params", "metrics/loss", "metrics/test_accuracy"} <= set(compared)
    for name in compared:
        assert want[name].tobytes() == got[name].tobytes(), f"{name} differs after the resume at step {stopped_at}"
    # the steps after the resume moved the same bytes as the uninterrupted run's (the first one also
    # receives the one broadcast of the parameters, as step 0 does)
    sent = got["comm/bytes_sent"]
    assert (sent[:stopped_at - 1] == -1).all() or (sent[:stopped_at] >= 0).all()
    assert np.array_equal(got["comm/bytes_received"][-100:], want["comm/bytes_received"][-100:])


def test_a_checkpoint_without_the_centre_is_refused(tmp_path):
    """A sharded centered-clipping checkpoint lacking the centre (as older versions wrote them)
    cannot resume exactly: one line, exit status 2, the files kept."""
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich")
    settings = [*SETTINGS, "--set", "aggregator.placement=sharded", "--set", "aggregator.name=centered-clipping"]
    out = tmp_path / "stopped.h5"
    _stop_after_30_steps(out, settings)
    with h5py.File(out, "r") as h5:
        run_id = h5.attrs["run_id"]
    path = checkpoint.path_for(out)
    step, arrays = checkpoint.read(path, run_id, {"params": ((1622,), "float32")})
    assert arrays.pop("aggregator_state.center").shape == (1622,)
    checkpoint.CheckpointStore(path, run_id).write(step, arrays)
    resumed = run_cli(["run", CONFIG, "--out", out, "--resume", *settings], ranks=3)
    assert resumed.returncode == 2
    lines = resumed.stderr.strip().splitlines()
    assert len(lines) == 1 and "lacks aggregator_state.center" in lines[0], resumed.stderr
    assert steps_done(out) >= 30 and path.exists()
