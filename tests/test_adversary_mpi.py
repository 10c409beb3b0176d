"""The two adversary models under real mpiexec: omniscient (crafted at the gather) and colluding
(Byzantine ranks share only their own gradients over a sub-communicator)."""
import json

import h5py
import numpy as np
import pytest

from conftest import REPO, run_cli

pytestmark = pytest.mark.mpi

BASE = REPO / "configs" / "synthetic-krum-f0.toml"   # no dataset needed
ATTACKED = ["--set", "workers.byzantine=6", "--set", "run.steps=20", "--set", "run.eval_every=10"]


def _run(tmp_path, name, extra, ranks=4, env=None):
    out = tmp_path / f"{name}.h5"
    done = run_cli(["run", BASE, "--out", out, *ATTACKED, *extra], ranks=ranks, env=env)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("attack", ["alie", "ipm-opt"])
def test_colluding_ranks_never_receive_honest_gradients(tmp_path, attack):
    audit = tmp_path / "audit"
    out = _run(tmp_path, attack, ["--set", f"attack.name={attack}", "--set", "attack.adversary=colluding"],
               env={"KRUM_MPI_AUDIT_DIR": str(audit)})
    with h5py.File(out, "r") as h5:
        assert h5.attrs["adversary"] == "colluding"
        assert json.loads(h5.attrs["config"])["attack"]["adversary"] == "colluding"
        byz = h5["selection/byzantine"][()]
        worker_rank = h5["selection/worker_rank"][()]
    assert byz.sum() == 6
    records = [json.loads(p.read_text()) for p in sorted(audit.glob("rank*.json"))]
    assert len(records) == 4
    byz_ranks = {int(worker_rank[w]) for w in np.flatnonzero(byz)}
    assert 0 not in byz_ranks, "the server rank must not host a Byzantine worker"
    for rec in records:
        if rec["rank"] not in byz_ranks:
            continue
        assert all(byz[w] for w in rec["workers"]), f"rank {rec['rank']} hosts honest and Byzantine workers"
        for item in rec["received"]:
            if item["op"] == "bcast_params":
                assert item["from"] == [0]          # parameters, not gradients
            else:
                assert item["op"] == "byzantine_allgather", item
                assert set(item["from"]) <= byz_ranks, item
    ops = {item["op"] for rec in records for item in rec["received"]}
    assert "byzantine_allgather" in ops       # the adversary really talked over MPI


def test_omniscient_model_is_recorded(tmp_path):
    out = _run(tmp_path, "omni", ["--set", "attack.name=alie"])
    with h5py.File(out, "r") as h5:
        assert h5.attrs["adversary"] == "omniscient"
        assert h5["selection/byzantine"][()].sum() == 6
        cfg = json.loads(h5.attrs["config"])
        assert cfg["attack"]["name"] == "alie" and cfg["workers"]["byzantine"] == 6


def test_colluding_needs_two_ranks(tmp_path):
    done = run_cli(["run", BASE, "--out", tmp_path / "x.h5", *ATTACKED, "--set", "attack.name=alie",
                    "--set", "attack.adversary=colluding"], ranks=1)
    assert done.returncode == 2 and "needs at least 2 MPI ranks" in done.stderr


def test_colluding_refuses_a_gather_deadline(tmp_path):
    """Its Byzantine ranks agree in collectives, which steps without waiting would mismatch."""
    done = run_cli(["run", BASE, "--out", tmp_path / "x.h5", *ATTACKED, "--set", "attack.name=alie",
                    "--set", "attack.adversary=colluding", "--set", "run.gather_deadline_s=0.5"], ranks=2)
    assert done.returncode == 2 and "run.gather_deadline_s" in done.stderr and "Traceback" not in done.stderr
