"""Model parallelism at small d (docs/sharded.md, "Model parallelism at small d"): below
``aggregator.sharded_min_d`` (the whole model's d) rank 0 gathers the shards' rows and runs the
gather's rule once (placements/model.py, SmallModelPlacement); at or above it the block exchange.
Either way the run records which exchange ran and why, and selects, loses, evaluates and ends
(parameters and every worker's momentum, shard by shard) bit for bit as the block exchange does,
with a rank corrupting its group's activations as well."""
import h5py
import numpy as np
import pytest

from conftest import REPO, checkpoint_header, mpiexec_path, run_cli
from krum_mpi import config
from krum_mpi.parallel.placements.blocks import exchange_for
from krum_mpi.run import checkpoint

KRUM_F6 = REPO / "configs" / "synthetic-krum-f6.toml"   # MLP 57-20-20-2: d = 1,622
D = 1622
BLOCKS = ["--set", "aggregator.sharded_min_d=0"]
# Krum under ALIE (crafted where the rows meet), worker momentum, a checkpoint in between
COMMON = ["--set", "run.steps=12", "--set", "run.eval_every=4", "--set", "run.checkpoint_every=5",
          "--set", "optimizer.momentum=0.9", "--set", "optimizer.momentum_at=worker", "--quiet"]
LYING = ["--set", "attack.name=none", "--set", "workers.byzantine=0", "--set", "byzantine_ranks.ranks=[5]",
         "--set", "byzantine_ranks.behaviour=corrupt-activations"]


def test_corrupt_activations_leave_the_exchange_to_d_and_lies_in_the_exchange_keep_the_blocks():
    """Corrupt activations lie inside the groups' compute, which both exchanges carry alike;
    lie-distances and corrupt-block lie in the block exchange, so they keep it at any d."""
    model = config.load(None, ["parallel.model=2", "byzantine_ranks.ranks=[3]", "aggregator.f=8",
                               "byzantine_ranks.behaviour=corrupt-activations"])
    exchange, why = exchange_for(model, D)
    assert exchange == "gather" and f"d = {D} < aggregator.sharded_min_d = 35000" in why
    assert exchange_for(model, 35_000)[0] == "sharded"
    for behaviour in ("lie-distances", "corrupt-block"):
        lying = config.load(KRUM_F6, ["aggregator.placement=sharded", "attack.adversary=colluding",
                                      "byzantine_ranks.ranks=[2]", f"byzantine_ranks.behaviour={behaviour}"])
        exchange, why = exchange_for(lying, D)
        assert exchange == "sharded" and "byzantine_ranks.ranks = [2]" in why, behaviour


def preset_without_sigma(folder):
    config_path = folder / "synthetic-krum-f6.toml"
    config_path.write_text("\n".join(line for line in KRUM_F6.read_text().splitlines()
                                     if not line.startswith("sigma")))
    return config_path


def finished(path):
    """The records of a run (all but timings and traffic), its exchange attributes, the final shards."""
    with h5py.File(path) as h5:
        assert h5.attrs["status"] == "complete"
        records = {}
        h5.visititems(lambda k, v: records.__setitem__(k, v[()].tobytes())
                      if isinstance(v, h5py.Dataset) and not k.startswith(("timing/", "comm/")) else None)
        attrs = (str(h5.attrs["exchange"]), str(h5.attrs["exchange_reason"]))
        received = h5["comm/bytes_received"][:, 0]
    raw, _, header = checkpoint_header(checkpoint.path_for(path))
    arrays = {e["name"]: raw[e["offset"]:e["offset"] + e["nbytes"]] for e in header["arrays"]}
    return records, attrs, received, (header["step"], arrays)


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("p, ranks, extra", [(2, 4, ["--set", "attack.name=alie"]),
                                             (4, 4, ["--set", "attack.name=alie"]),
                                             (2, 6, LYING)], ids=["p2", "p4", "p2-corrupt-activations"])
def test_the_gathered_exchange_equals_the_block_exchange_bit_for_bit(tmp_path, p, ranks, extra):
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich")
    cfg = preset_without_sigma(tmp_path)
    runs = {}
    for name, sets in (("small", []), ("blocks", BLOCKS)):
        out = tmp_path / f"{name}.h5"
        done = run_cli(["run", cfg, "--out", out, *COMMON, *extra, "--set", f"parallel.model={p}", *sets], ranks=ranks)
        assert done.returncode == 0, done.stderr
        runs[name] = finished(out)
    (records, attrs, received, final), (want_records, want_attrs, want_received, want_final) = runs["small"], runs["blocks"]
    assert attrs[0] == "gather" and f"d = {D} < aggregator.sharded_min_d = 35000" in attrs[1]
    assert want_attrs[0] == "sharded" and f"d = {D} >= aggregator.sharded_min_d = 0" in want_attrs[1]
    assert (received[1:] > want_received[1:]).all()     # rank 0 received every worker's rows, not a block
    assert sorted(records) == sorted(want_records)
    assert [k for k in records if records[k] != want_records[k]] == []
    assert final[0] == want_final[0] == 11 and sorted(final[1]) == sorted(want_final[1])
    assert [k for k in final[1] if final[1][k] != want_final[1][k]] == []
    if extra is LYING:
        with h5py.File(tmp_path / "small.h5") as h5:
            through = h5["selection/byzantine_through_ranks"][()]
            assert through.shape == (12, 20) and list(np.flatnonzero(through[0])) == list(range(14, 20))
            assert not np.isin(h5["selection/selected"][()], np.arange(14, 20)).any()
