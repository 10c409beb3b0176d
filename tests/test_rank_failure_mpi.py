"""An error that one rank meets alone, mid-run, ends the whole job with its message: no hang."""
import h5py
import numpy as np
import pytest

from conftest import run_cli
from krum_mpi import config, data
from krum_mpi.data import store

pytestmark = pytest.mark.mpi


def test_bad_row_seen_by_one_rank_ends_every_rank(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    path = tmp_path / "d.h5"
    store.write_arrays(path, X, y, X[:50], y[:50], name="toy", n_classes=2)
    settings = {"data": {"name": "hdf5", "path": str(path)}, "workers": {"n": 4, "batch_size": 8},
                "model": {"name": "logistic"}, "run": {"steps": 200, "eval_every": 50}}
    cfg = config.validate(settings)
    rows = np.sort(data.open_dataset(cfg["data"], seed=0).shard(3, 4).indices)  # worker 3: on rank 1 of 2
    with h5py.File(path, "r+") as h5:          # corrupt that worker's rows only, after conversion
        Xtrain = h5["train/X"][()]
        Xtrain[rows, 0] = np.nan
        h5["train/X"][...] = Xtrain
    overrides = [f"--set={k}.{n}={v!r}".replace("'", '"') if isinstance(v, str) else f"--set={k}.{n}={v}"
                 for k, body in settings.items() for n, v in body.items()]
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("")
    done = run_cli(["run", cfg_file, "--out", tmp_path / "r.h5", *overrides], ranks=2, timeout=120)
    assert done.returncode != 0
    assert "NaN or infinite feature" in done.stderr and "in /train row" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    with h5py.File(tmp_path / "r.h5", "r") as h5:
        assert h5.attrs["status"] in ("failed", "running")
