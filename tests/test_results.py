"""The results writer and reader: schema fields, atomic flushes, bad files."""
import json

import h5py
import numpy as np
import pytest

from krum_mpi import config, results
from krum_mpi.errors import ResultsError


def _writer(path, steps=5, n=4, max_selected=1):
    cfg = config.validate({"run": {"steps": steps}, "workers": {"n": n}})
    byz = np.array([False, True, False, False])[:n]
    prov = results.provenance("test-mpi", ["host"], 1, n, "cpu")
    return results.ResultsWriter(path, cfg, config.run_id(cfg), prov, byz, max_selected, record_weights=True)


def _timing(x):
    return {k: x for k in results.TIMINGS}


def test_flush_is_readable_at_every_point(tmp_path):
    path = tmp_path / "r.h5"
    w = _writer(path)
    w.flush("running")
    assert results.read_run(path)["attrs"]["steps_done"] == 0
    for step in range(3):
        w.record(step, loss=1.0 / (step + 1), test_accuracy=np.nan if step < 2 else 0.9,
                 timing=_timing(0.01 * step), selected=[step], weights=np.full(4, 0.25))
    w.flush("running")
    run = results.read_run(path)
    assert run["attrs"]["status"] == "running"
    np.testing.assert_array_equal(run["metrics"]["step"], [0, 1, 2])
    np.testing.assert_allclose(run["metrics"]["loss"], [1.0, 0.5, 1 / 3])
    assert np.isnan(run["metrics"]["test_accuracy"][:2]).all()
    assert run["metrics"]["test_accuracy"][2] == pytest.approx(0.9)
    np.testing.assert_array_equal(run["selection"]["selected"][:, 0], [0, 1, 2])
    assert run["selection"]["selected"].dtype == np.int32
    assert run["selection"]["weights"].shape == (3, 4)
    assert run["selection"]["byzantine"].dtype == bool
    assert not (tmp_path / "r.h5.tmp").exists()
    w.flush("complete")
    run = results.read_run(path)
    assert run["attrs"]["status"] == "complete"
    assert run["attrs"]["schema_version"] == results.SCHEMA_VERSION
    assert run["attrs"]["config"]["run"]["steps"] == 5
    assert run["attrs"]["provenance"]["mpi_library_version"] == "test-mpi"


def test_selection_padding(tmp_path):
    w = _writer(tmp_path / "r.h5", max_selected=3)
    w.record(0, 0.0, np.nan, _timing(0.0), selected=[2], weights=None)
    w.flush()
    sel = results.read_run(tmp_path / "r.h5")["selection"]["selected"]
    np.testing.assert_array_equal(sel, [[2, -1, -1]])


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "r.h5"
    path.write_bytes(b"x")
    with pytest.raises(ResultsError, match="already exists.*--force"):
        results.check_can_write(path, force=False)
    results.check_can_write(path, force=True)
    with pytest.raises(ResultsError, match="is a folder"):
        results.check_can_write(tmp_path, force=True)


def test_bad_files(tmp_path):
    with pytest.raises(ResultsError, match="not found"):
        results.read_run(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(ResultsError, match="not a readable HDF5 file"):
        results.read_run(junk)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as h5:
        h5["x"] = 1
    with pytest.raises(ResultsError, match="not a krum-mpi results file"):
        results.read_run(foreign)
    future = tmp_path / "future.h5"
    with h5py.File(future, "w") as h5:
        h5.attrs["schema_version"] = 99
    with pytest.raises(ResultsError, match="schema_version 99"):
        results.read_run(future)


def test_provenance_is_json():
    prov = results.provenance("lib", ["a", "b"], 2, 8, "cpu")
    text = json.dumps(prov)
    assert "numpy" in text and prov["n_ranks"] == 2 and prov["hostnames"] == ["a", "b"]
    assert isinstance(prov["blas"], list)
    # which aggregation kernels ran (and on which ISA) is part of what reproduces a selection
    import krum_mpi.native as native

    assert prov["native_kernels"] == native.status()
