"""The sharded placement under real ``mpiexec`` with 1 to 4 ranks and uneven coordinate blocks:
the same selections as the gathered rules and the same aggregate to float32 rounding."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import mpiexec_path

pytestmark = pytest.mark.mpi
CHECK = Path(__file__).parent / "sharded_mpi_check.py"


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_sharded_equals_gathered_across_ranks(ranks):
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich")
    done = subprocess.run([mpiexec_path(), "-n", str(ranks), sys.executable, str(CHECK)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ranks"] == ranks
    assert report["failures"] == []


KRUM_F6 = Path(__file__).parents[1] / "configs" / "synthetic-krum-f6.toml"
SHORT = ["--set", "run.steps=30", "--set", "run.eval_every=10"]
COLLUDING = ["--set", "attack.adversary=colluding"]


@pytest.mark.parametrize("rule, attack, adversary", [
    ("krum", "gaussian", "colluding"), ("bulyan", "gaussian", "colluding"), ("multi-krum", "nan", "colluding"),
    ("mda", "sign-flip", "colluding"), ("krum", "alie", "omniscient"), ("multi-krum", "omniscient", "omniscient"),
    ("krum", "inf", "omniscient"),
    ("krum", "shard-target", "omniscient"), ("multi-krum", "shard-target", "colluding")])
def test_sharded_training_selects_what_gather_selects(tmp_path, rule, attack, adversary):
    """Same seed, 3 ranks (uneven blocks of the 1,622 MLP parameters, the block exchange at any d):
    the same workers at every step (Multi-Krum and MDA: the same set)."""
    import h5py
    import numpy as np

    from conftest import run_cli
    config = tmp_path / "config.toml"   # the preset without its Gaussian attack's sigma
    config.write_text("\n".join(line for line in KRUM_F6.read_text().splitlines() if not line.startswith("sigma")))
    files = {}
    for placement in ("gather", "sharded"):
        files[placement] = tmp_path / f"{placement}.h5"
        f = ["--set", "aggregator.f=2", "--set", "workers.byzantine=2"] if rule == "bulyan" else []
        done = run_cli(["run", config, "--out", files[placement], *SHORT, "--set", f"aggregator.name={rule}",
                        "--set", f'attack.name="{attack}"', "--set", f"attack.adversary={adversary}",
                        "--set", f"aggregator.placement={placement}", "--set", "aggregator.sharded_min_d=0",
                        *f], ranks=3)
        assert done.returncode == 0, done.stderr
    with h5py.File(files["gather"]) as g, h5py.File(files["sharded"]) as s:
        want, got = g["selection/selected"][()], s["selection/selected"][()]
        if rule in ("multi-krum", "mda"):   # an exact set, listed in the order of the bounds
            want, got = np.sort(want, axis=1), np.sort(got, axis=1)
        assert np.array_equal(want, got)
        assert np.isfinite(s["metrics/loss"][()]).all()
        assert s["comm/bytes_received"].shape == (30, 3) and s["comm/bytes_sent"].shape == (30, 3)
        assert (s["comm/bytes_received"][()] > 0).all()
        phases = s["timing/rank_phase_s"][()]
        assert phases.shape == (30, 3, 4) and (phases >= 0).all()
        assert g["timing/rank_phase_s"].shape == (30, 3, 4)
        assert "Bcast" in g.attrs["rank_phases"] and "allgather" in s.attrs["rank_phases"]
        # the accounting: rank 0 receives the other ranks' rows (4 d bytes) and metadata (16 bytes)
        d = json.loads(g.attrs["provenance"])["n_params"]
        others = int((g["selection/worker_rank"][()] != 0).sum())
        assert (g["comm/bytes_received"][:, 0] == others * (4 * d + 16)).all()
        # sharded: the rows' blocks of the other workers, the parameters' other blocks, the partials
        ranks = s["selection/worker_rank"][()]
        widths = np.diff([0, *[(d // 3) * (q + 1) + min(q + 1, d % 3) for q in range(3)]])
        for r in range(3):
            floor = 4 * int((ranks != r).sum()) * int(widths[r]) + 4 * (d - int(widths[r]))
            assert (s["comm/bytes_received"][1:, r] > floor).all()
            assert (s["comm/bytes_received"][1:, r] < floor + 200_000).all()
        # the gathered placement funnels every row into rank 0: the busiest rank receives more
        assert g["comm/bytes_received"][1:].max() > s["comm/bytes_received"][1:].max()


def test_per_shard_records_each_blocks_selection(tmp_path):
    import h5py

    from conftest import run_cli
    out = tmp_path / "per-shard.h5"
    done = run_cli(["run", KRUM_F6, "--out", out, *SHORT, *COLLUDING, "--set", "aggregator.placement=per-shard"],
                   ranks=2)
    assert done.returncode == 0, done.stderr
    with h5py.File(out) as h5:
        table = h5["selection/per_block"][()]
        assert table.shape == (30, 2, 1)
        assert ((table >= 0) & (table < 20)).all()


@pytest.mark.parametrize("sets, words", [
    (["aggregator.placement=sharded"], "block by block"),
    (["aggregator.placement=sharded", "attack.adversary=colluding", "aggregator.name=clipping+krum"],
     "placement = 'gather'"),
    (["aggregator.placement=everywhere"], "aggregator.placement"),
])
def test_placement_refusals_are_one_line(tmp_path, sets, words):
    from conftest import run_cli
    args = ["run", KRUM_F6, "--out", tmp_path / "x.h5"]
    for s in sets:
        args += ["--set", s]
    done = run_cli(args)
    assert done.returncode != 0
    lines = [line for line in done.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and words in lines[0], done.stderr
    assert not (tmp_path / "x.h5").exists()
