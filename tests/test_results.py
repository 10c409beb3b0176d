"""The results writer and reader: schema fields, atomic flushes, bad files."""
import json

import h5py
import numpy as np
import pytest

from krum_mpi import config
from krum_mpi.run import results
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
    with pytest.raises(ResultsError, match="not a krum-mpi results file"):   # --force replaces only our files
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


# -- the appended layout: cost, crash safety, OS errors -------------------------------------------
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WRITER_LOOP = """
import sys, numpy as np
from krum_mpi import config
from krum_mpi.run import results
cfg = config.validate({"run": {"steps": 10**6}, "workers": {"n": 4}})
w = results.ResultsWriter(sys.argv[1], cfg, config.run_id(cfg), {}, np.zeros(4, bool), 2, True, True)
step = 0
while True:
    for _ in range(37):
        w.record(step, float(step), np.nan, {k: float(step) for k in results.TIMINGS}, [step % 4],
                 np.full(4, 0.25), np.zeros(4, bool), np.full(4, float(step)))
        step += 1
    w.flush("running")
    print(step, flush=True)
"""


def _wchar():
    return int(next(l for l in Path("/proc/self/io").read_text().splitlines() if l.startswith("wchar:")).split()[1])


def test_kill9_at_any_moment_leaves_a_readable_consistent_file(tmp_path):
    """A writer flushing as fast as it can, killed with SIGKILL at random moments, 25 times: the file
    always opens, and holds rows 0..k-1 exactly as recorded (the last flush, whole, or the one before)."""
    out = tmp_path / "r.h5"
    rng = np.random.default_rng(1234)
    for trial in range(25):
        proc = subprocess.Popen([sys.executable, "-c", WRITER_LOOP, str(out)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline(), "the writer did not flush"
        time.sleep(float(rng.uniform(0, 0.4)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        run = results.read_run(out)
        k = run["attrs"]["steps_done"]
        assert k > 0 and k % 37 == 0
        np.testing.assert_array_equal(run["metrics"]["step"], np.arange(k))
        np.testing.assert_array_equal(run["metrics"]["loss"], np.arange(k, dtype=float))
        np.testing.assert_array_equal(run["timing"]["worker_compute_s"][:, 3], np.arange(k, dtype=float))
        np.testing.assert_array_equal(run["selection"]["selected"][:, 0], np.arange(k) % 4)
    # hidden files of killed writers: its two spares, and a fresh copy when a reader held one
    assert len(list(tmp_path.glob(".r.h5.*"))) <= 3 * 25


def test_flush_writes_what_changed_not_the_whole_run(tmp_path):
    """Bytes written by a flush of 10 new rows stay the same whether 100 or 30,000 rows are done."""
    w = _writer(tmp_path / "r.h5", steps=100_000)
    def flush_bytes(rows):
        for _ in range(rows):
            w.record(w.done, 0.5, np.nan, _timing(0.1), [1], np.full(4, 0.25))
        w.flush("running")          # the two files alternate: both catch up before measuring
        w.flush("running")
        for _ in range(10):
            w.record(w.done, 0.5, np.nan, _timing(0.1), [1], np.full(4, 0.25))
        before = _wchar()
        w.flush("running")
        return _wchar() - before
    small = flush_bytes(100)
    large = flush_bytes(30_000)
    whole = (tmp_path / "r.h5").stat().st_size
    assert whole > 1_000_000
    assert large < 2 * small + 65536, (small, large)
    assert large < whole / 5, (large, whole)


def test_the_file_out_names_is_never_modified_in_place(tmp_path):
    """Flushes go to the other file, then a rename; a reader holding <out> open (HDF5 locks it) keeps
    its file unchanged, also when that file's turn to be written comes again (the writer copies)."""
    path = tmp_path / "r.h5"
    w = _writer(path)
    w.record(0, 1.0, np.nan, _timing(0.1), [0])
    w.flush()
    with h5py.File(path, "r") as reader, open(path, "rb") as raw:
        first = raw.read()
        for step in range(1, 5):
            w.record(step, 1.0, np.nan, _timing(0.1), [0])
            w.flush()
        raw.seek(0)
        assert raw.read() == first
        assert reader["metrics/step"][()].tolist() == [0]
    assert results.read_run(path)["attrs"]["steps_done"] == 5
    w.flush("complete", final={"step": 4, "params": np.ones(3, np.float32)})
    assert os.stat(path).st_nlink == 1 and not list(tmp_path.glob(".r.h5.*"))   # one plain file at the end
    assert results.read_run(path)["checkpoint"]["params"].tolist() == [1, 1, 1]


def test_two_runs_with_the_same_out_do_not_share_a_temporary_name(tmp_path):
    path = tmp_path / "r.h5"
    a, b = _writer(path), _writer(path)
    assert not set(a.spares) & set(b.spares)
    for step in range(6):
        for w in (a, b):
            w.record(step, 1.0, np.nan, _timing(0.1), [0])
            w.flush()
    assert results.read_run(path)["attrs"]["steps_done"] == 6


def test_one_line_adds_a_per_step_dataset(tmp_path, monkeypatch):
    extra = results.PerStep("selection/example", np.int32, -1)
    monkeypatch.setattr(results, "PER_STEP", results.PER_STEP + (extra,))
    w = _writer(tmp_path / "r.h5")
    w.record(0, 1.0, np.nan, _timing(0.1), [0], values={"selection/example": 3})
    w.record(1, 1.0, np.nan, _timing(0.1), [0])
    w.flush()
    assert results.read_run(tmp_path / "r.h5")["selection"]["example"].tolist() == [3, -1]


@pytest.fixture
def tmpfs(mount_tmpfs):
    return mount_tmpfs("1m")


def test_full_disk_is_one_line_and_keeps_the_last_flush(tmpfs):
    path = tmpfs / "r.h5"
    cfg = config.validate({"run": {"steps": 10**6}, "workers": {"n": 64}})
    w = results.ResultsWriter(path, cfg, "x", {}, np.zeros(64, bool), 64, True, True)
    kept, error = 0, None
    while error is None:
        for _ in range(50):
            w.record(w.done, 1.0, np.nan, _timing(0.1), np.arange(64), np.full(64, 1 / 64), np.zeros(64, bool),
                     np.full(64, 0.1))
        try:
            w.flush("running")
            kept = w.done
        except ResultsError as exc:
            error = str(exc)
    assert "No space left on device" in error and f"results up to {kept} steps kept" in error
    assert "\n" not in error and "--resume" in error
    run = results.read_run(path)
    assert run["attrs"]["steps_done"] == kept and run["metrics"]["step"].tolist() == list(range(kept))
    inodes = {p.stat().st_ino for p in tmpfs.iterdir()}
    assert inodes == {path.stat().st_ino}, "a half-written file still holds the space"
    w.flush("failed")   # after a failed flush nothing more is written (and nothing raised twice)


def test_read_only_folder_is_found_before_setup(tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(ResultsError, match="cannot write results in .*Read-only file system.*--out"):
        results.check_can_write(tmpfs / "sub" / "r.h5", force=False)
    with pytest.raises(ResultsError, match="cannot write results in .*Read-only file system"):
        results.check_can_write(tmpfs / "r.h5", force=False)


def test_permission_denied_is_found_before_setup(tmp_path):
    """As an unprivileged user (root writes anywhere): a forked child drops to nobody."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user")
    import tempfile
    folder = Path(tempfile.mkdtemp(prefix="krum-perm-", dir="/tmp"))   # traversable by anyone, writable by root
    folder.chmod(0o755)
    messages = []
    for target in (folder / "r.h5", folder / "sub" / "r.h5", tmp_path / "r.h5"):   # tmp_path: not traversable
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            message = "no error"
            try:
                os.close(read)
                os.setgid(65534)
                os.setuid(65534)
                results.check_can_write(target, force=False)
            except ResultsError as exc:
                message = str(exc)
            except BaseException as exc:
                message = f"unexpected {type(exc).__name__}: {exc}"
            finally:
                os.write(write, message.encode())
                os._exit(0)
        os.close(write)
        messages.append(os.read(read, 4096).decode())
        os.close(read)
        os.waitpid(pid, 0)
    folder.rmdir()
    for message in messages:
        assert message.startswith("cannot write results in") and "Permission denied" in message, message
