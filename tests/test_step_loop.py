"""One step loop for every placement (krum_mpi.run.steps.StepLoop.run), the placements as classes of
one interface (krum_mpi.parallel.placements), and, under real ``mpiexec``, every placement giving
the selections (and where the arithmetic is the same, the parameters) the gather gives."""
import re
from pathlib import Path

import numpy as np
import pytest

import krum_mpi
from conftest import mpiexec_path, run_cli

PACKAGE = Path(krum_mpi.__file__).resolve().parent
PLACEMENTS = PACKAGE / "parallel" / "placements"


def test_the_step_loop_is_written_once():
    hits = [(path.relative_to(PACKAGE).as_posix(), text.count("for step in range("))
            for path in sorted(PACKAGE.rglob("*.py")) for text in [path.read_text()] if "for step in range(" in text]
    assert hits == [("run/steps.py", 1)]


def test_nothing_but_the_builder_reads_the_placement_name():
    """The run and the parallel layer ask the placement object, never ``cfg.aggregator.placement``
    (or the dict's ``["placement"]``): only placements/__init__.py (which builds them) and two config
    checks read it: model_parallel.resolve (it turns 'gather' into 'sharded' under parallel.model)
    and byzantine_ranks.check_config (which behaviours a placement can express)."""
    allowed = {"parallel/placements/__init__.py", "parallel/model_parallel.py", "parallel/byzantine_ranks.py"}
    pattern = re.compile(r"\[\s*[\"']placement[\"']\s*\]|placement\s*(==|!=)|\.aggregator\.placement\b")
    readers = sorted(path.relative_to(PACKAGE).as_posix()
                     for folder in ("run", "parallel") for path in (PACKAGE / folder).rglob("*.py")
                     if pattern.search(path.read_text()))
    assert set(readers) <= allowed, readers


def test_every_placement_is_a_class_of_the_one_interface():
    from krum_mpi.parallel import placements
    from krum_mpi.parallel.placements.base import Placement
    phases = ("start_step", "exchange", "craft", "aggregate", "apply")
    classes = [placements.GatherPlacement, placements.DeadlinePlacement, placements.ShardedPlacement,
               placements.PerShardPlacement, placements.ModelParallelPlacement, placements.SmallShardedPlacement,
               placements.SmallModelPlacement]
    for cls in classes:
        assert issubclass(cls, Placement)
        for phase in phases:   # each phase filled in, none left to the interface's NotImplementedError
            assert getattr(cls, phase) is not getattr(Placement, phase), (cls.__name__, phase)
        assert cls.PHASES and len(cls.PHASE_MARKS) == 5
    for path in PLACEMENTS.glob("*.py"):
        lines = path.read_text().splitlines()
        assert len(lines) <= 400, path.name


KRUM_F6 = Path(__file__).parents[1] / "configs" / "synthetic-krum-f6.toml"
PLACEMENT_RUNS = {
    "gather": [],
    "deadline": ["--set", "run.gather_deadline_s=120"],   # long enough that no row is ever late
    "sharded": ["--set", "aggregator.placement=sharded", "--set", "aggregator.sharded_min_d=0"],   # blocks at any d
    "per-shard": ["--set", "aggregator.placement=per-shard"],
    "model-parallel": ["--set", "parallel.model=2"],
}


@pytest.mark.mpi
def test_every_placement_runs_the_same_steps_as_the_gather(tmp_path):
    """4 ranks, 12 steps of Krum under ALIE with a checkpoint in between. The deadline and sharded
    placements do the gather's arithmetic: the same selections, losses and final parameters, bit for
    bit. Model parallelism sums the split forward pass in another order (losses differ in the last
    bits) but selects the same workers. Per-shard selects block by block: its blocks' selections
    are recorded, block 0's is the step's selection, and each block's traffic is counted."""
    import h5py

    from krum_mpi.run import results
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich")
    config = tmp_path / "config.toml"
    config.write_text(KRUM_F6.read_text().replace('name = "gaussian"', 'name = "alie"').replace("sigma = 200.0", ""))
    runs = {}
    for name, extra in PLACEMENT_RUNS.items():
        out = tmp_path / f"{name}.h5"
        done = run_cli(["run", config, "--out", out, "--set", "run.steps=12", "--set", "run.eval_every=4",
                        "--set", "run.checkpoint_every=5", *extra], ranks=4)
        assert done.returncode == 0, done.stderr
        runs[name] = results.read_run(out)
        assert int(runs[name]["attrs"]["steps_done"]) == 12
    gather = runs["gather"]
    for name in ("deadline", "sharded"):
        assert np.array_equal(runs[name]["selection"]["selected"], gather["selection"]["selected"]), name
        assert np.array_equal(runs[name]["metrics"]["loss"], gather["metrics"]["loss"]), name
        assert np.array_equal(runs[name]["checkpoint"]["params"], gather["checkpoint"]["params"]), name
    model = runs["model-parallel"]
    assert np.array_equal(model["selection"]["selected"], gather["selection"]["selected"])
    assert np.allclose(model["metrics"]["loss"], gather["metrics"]["loss"], rtol=1e-4)
    with h5py.File(tmp_path / "per-shard.h5") as h5:
        per_block = h5["selection/per_block"][()]
        assert per_block.shape[:2] == (12, 4)
        assert np.array_equal(per_block[:, 0, :1], h5["selection/selected"][:, :1])
        assert (h5["comm/bytes_received"][()] > 0).all()
    for name in ("gather", "sharded", "per-shard", "model-parallel"):   # phases and bytes of every step
        with h5py.File(tmp_path / f"{name}.h5") as h5:
            assert h5["timing/rank_phase_s"].shape == (12, 4, 4), name
            assert (h5["comm/bytes_sent"][()] >= 0).all(), name
