"""The checkpoint file: round trip, every kind of damage refused with one line, atomic replacement,
a full disk (a real tmpfs where this machine lets us mount one)."""
import json
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import checkpoint_header
from krum_mpi.run import checkpoint
from krum_mpi.errors import ResultsError

D, N = 50, 4
EXPECTED = {"params": ((D,), "float32"), "worker_momentum": ((N, D), "float32")}


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"params": rng.standard_normal(D).astype(np.float32),
            "worker_momentum": rng.standard_normal((N, D)).astype(np.float32),
            "aggregator_state.center": rng.standard_normal(D).astype(np.float32)}


def _written(tmp_path, step=7, arrays=None):
    store = checkpoint.CheckpointStore(tmp_path / "run.h5.ckpt", "abc")
    store.write(step, arrays or _arrays())
    return store.path


def _rewritecheckpoint_header(path, meta):
    """Replace the header by ``meta`` with a correct header checksum (a forged, not a damaged, file)."""
    raw, length, _ = checkpoint_header(path)
    text = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    assert len(text) <= length, "forged header longer than the room kept for it"
    text = text.ljust(length)
    path.write_bytes(raw[:20] + text + struct.pack("<I", zlib.crc32(text)) + raw[24 + length:])


def test_round_trip_is_bitwise(tmp_path):
    arrays = _arrays()
    path = _written(tmp_path, arrays=arrays)
    into = np.empty((N, D), np.float32)
    step, got = checkpoint.read(path, "abc", EXPECTED, into={"worker_momentum": into})
    assert step == 7
    for name, a in arrays.items():
        assert got[name].tobytes() == a.tobytes() and got[name].dtype == a.dtype
    assert got["worker_momentum"] is into          # read in place: no second n x d buffer
    visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert visible == ["run.h5.ckpt"] and not list(tmp_path.glob("*.link"))
    # the hidden slot it was written in is the same file (a hard link), not a second copy
    assert {p.stat().st_ino for p in tmp_path.iterdir()} == {path.stat().st_ino}


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=4), name_len=st.integers(1, 60),
       rows=st.integers(0, 20), step=st.integers(-1, 10 ** 9))
def test_the_header_never_overlaps_the_first_array(tmp_path_factory, sizes, name_len, rows, step):
    """Offsets depend on the header's length and the length on the offsets: whatever the names, the
    sizes and the rows' digests it carries, every array reads back bitwise (two passes were not
    always enough: a header that grew past a 64-byte boundary overwrote the first array's start)."""
    folder = tmp_path_factory.mktemp("ck")
    rng = np.random.default_rng(len(sizes))
    arrays = {"params": rng.standard_normal(sizes[0]).astype(np.float32)}
    for i, size in enumerate(sizes[1:]):
        arrays[f"aggregator_state.{'x' * name_len}{i}"] = rng.standard_normal(size).astype(np.float32)
    digests = {f"metrics/{'y' * (i % 7)}{i}": "f" * 64 for i in range(rows)}
    store = checkpoint.CheckpointStore(folder / "run.h5.ckpt", "abc")
    store.write(step, arrays, rows=digests)
    header = {}
    got_step, got = checkpoint.read(store.path, "abc", {"params": ((sizes[0],), "float32")}, header_out=header)
    assert got_step == step and header["rows"] == digests
    assert all(got[name].tobytes() == a.tobytes() for name, a in arrays.items())


def test_a_run_that_made_nan_itself_can_resume(tmp_path):
    """Averaging under a NaN attack has NaN parameters: the file says so, and a resume goes on."""
    arrays = _arrays()
    arrays["params"][3] = np.nan
    step, got = checkpoint.read(_written(tmp_path, arrays=arrays), "abc", EXPECTED)
    assert np.isnan(got["params"][3])


@pytest.mark.parametrize("damage, message", [
    (lambda raw, off: raw[:off + 10], "truncated|does not fit|inconsistent"),
    (lambda raw, off: b"NOTACKPT" + raw[8:], "not a krum-mpi checkpoint"),
    (lambda raw, off: raw[:25] + bytes([raw[25] ^ 0x10]) + raw[26:], "header checksum"),
    (lambda raw, off: raw[:off + 5] + bytes([raw[off + 5] ^ 0x01]) + raw[off + 6:], "checksum mismatch"),
    (lambda raw, off: raw[:8] + struct.pack("<I", 99) + raw[12:], "format 99"),
    (lambda raw, off: raw[:12] + struct.pack("<Q", 1 << 40) + raw[20:], "header length"),
    (lambda raw, off: b"", "not a krum-mpi checkpoint"),
])
def test_damage_is_refused_in_one_line(tmp_path, damage, message):
    path = _written(tmp_path)
    raw, _, meta = checkpoint_header(path)
    offset = next(e["offset"] for e in meta["arrays"] if e["name"] == "worker_momentum")
    path.write_bytes(damage(raw, offset))
    with pytest.raises(ResultsError, match=message) as err:
        checkpoint.read(path, "abc", EXPECTED)
    assert "\n" not in str(err.value)


def _forge(path, edit):
    _, _, meta = checkpoint_header(path)
    edit(meta)
    _rewritecheckpoint_header(path, meta)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(run_id="zzz"), "belongs to run"),
    (lambda m: m["arrays"][0].update(shape=[D + 1]), "this run needs|inconsistent"),
    (lambda m: m["arrays"][0].update(dtype="float64"), "this run needs|inconsistent"),
    (lambda m: m["arrays"][0].update(offset=1 << 30), "inconsistent"),
    (lambda m: m["arrays"][0].update(crc32=1), "checksum mismatch"),
    (lambda m: m.update(arrays=[e for e in m["arrays"] if e["name"] != "params"]), "lacks params"),
    (lambda m: m["arrays"][0].update(name="extra"), "unexpected array"),
    (lambda m: m.update(step="7"), "not a valid checkpoint description"),
    (lambda m: m["arrays"][0].update(finite="yes"), "not a valid checkpoint description"),
])
def test_forged_fields_are_refused(tmp_path, edit, message):
    path = _written(tmp_path)
    _, _, meta = checkpoint_header(path)
    meta["arrays"].sort(key=lambda e: e["name"] != "params")   # params first: the edits aim at it
    _rewritecheckpoint_header(path, meta)
    _forge(path, edit)
    with pytest.raises(ResultsError, match=message):
        checkpoint.read(path, "abc", EXPECTED)


def test_nan_written_over_finite_parameters_is_refused(tmp_path):
    """Even with the array checksum made to match: the header says the parameters were finite."""
    path = _written(tmp_path)
    raw, _, meta = checkpoint_header(path)
    entry = next(e for e in meta["arrays"] if e["name"] == "params")
    params = np.frombuffer(raw, np.float32, D, entry["offset"]).copy()
    params[0] = np.nan
    raw = raw[:entry["offset"]] + params.tobytes() + raw[entry["offset"] + params.nbytes:]
    path.write_bytes(raw)
    _forge(path, lambda m: next(e for e in m["arrays"] if e["name"] == "params")
           .update(crc32=zlib.crc32(params.tobytes())))
    with pytest.raises(ResultsError, match="NaN or Inf, but was finite"):
        checkpoint.read(path, "abc", EXPECTED)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ResultsError, match="cannot read checkpoint"):
        checkpoint.read(tmp_path / "none.ckpt", "abc", EXPECTED)


def test_replacement_is_atomic_and_names_are_unique(tmp_path):
    """A new checkpoint replaces the old one whole; the file <out>.ckpt names is not written while it
    has that name (it is written again two checkpoints later, as a slot); two writers never share a
    temporary name."""
    a = checkpoint.CheckpointStore(tmp_path / "run.h5.ckpt", "abc")
    b = checkpoint.CheckpointStore(tmp_path / "run.h5.ckpt", "abc")
    names = {checkpoint.unique_suffix() for _ in range(100)}
    assert len(names) == 100 and all(str(os.getpid()) in n for n in names)
    assert not set(a.slots) & set(b.slots)
    for step in range(1, 6):
        a.write(step, _arrays(step))
        with open(a.path, "rb") as held:
            current = held.read()
            a.write(step + 10, _arrays(step + 10))   # the next one goes to the other slot
            held.seek(0)
            assert held.read() == current
        assert checkpoint.read(a.path, "abc", EXPECTED)[0] == step + 10
    b.write(9, _arrays(9))
    step, got = checkpoint.read(a.path, "abc", EXPECTED)
    assert step == 9 and got["params"].tobytes() == _arrays(9)["params"].tobytes()
    a.remove()
    b.remove()
    assert not list(tmp_path.iterdir())


@pytest.fixture
def tiny_tmpfs(mount_tmpfs):
    return mount_tmpfs("1m")


def test_full_disk_keeps_the_previous_checkpoint_and_frees_the_space(tiny_tmpfs):
    store = checkpoint.CheckpointStore(tiny_tmpfs / "run.h5.ckpt", "abc")
    store.write(3, _arrays(3))
    big = {"params": np.ones(D, np.float32), "worker_momentum": np.ones((N, 200_000), np.float32)}
    with pytest.raises(ResultsError, match=r"No space left on device; the previous one \(step 3\) is kept") as err:
        store.write(4, big)
    assert "\n" not in str(err.value) and "--resume" in str(err.value)
    # nothing but the kept checkpoint (and its hard-linked slot) holds the space
    assert {p.stat().st_ino for p in tiny_tmpfs.iterdir()} == {store.path.stat().st_ino}
    step, got = checkpoint.read(store.path, "abc", EXPECTED)
    assert step == 3 and got["params"].tobytes() == _arrays(3)["params"].tobytes()
