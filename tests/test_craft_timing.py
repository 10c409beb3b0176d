"""timing/craft_s: rank 0's crafting of the omniscient attack's rows, a phase of its own; files
written before it existed still resume (without it) and still report (NaN)."""
import json
import struct
import zlib

import h5py
import numpy as np
import pytest

from conftest import REPO, checkpoint_header, run_cli, sigterm_after_steps
from krum_mpi.analysis import load_study
from krum_mpi.analysis.tables import phase_times, run_summary
from krum_mpi.run import digests

pytestmark = pytest.mark.mpi

PAPER = REPO / "configs" / "synthetic-krum-f6.toml"   # no dataset needed
SHORT = ["--set", "run.steps=60", "--set", "run.eval_every=20", "--set", "run.checkpoint_every=5"]


def config(tmp_path, attack):
    """The synthetic Krum setting under another attack (the file's [attack] is the Gaussian's)."""
    text = PAPER.read_text()
    text = text[:text.index("[attack]")] + f'[attack]\nname = "{attack}"\n'
    path = tmp_path / f"{attack}.toml"
    path.write_text(text)
    return path


def _timings(path):
    with h5py.File(path, "r") as h5:
        t = {k: h5[f"timing/{k}"][()] for k in ("gather_s", "aggregate_s", "update_s", "step_s")}
        t["craft_s"] = h5["timing/craft_s"][()] if "timing/craft_s" in h5 else None
        return t, h5.attrs["status"], (h5["checkpoint/params"][()] if "checkpoint/params" in h5 else None)


@pytest.mark.parametrize("attack, extra", [("alie", []), ("none", ["--set", "workers.byzantine=0"])])
def test_gathered_runs_record_the_craft_as_a_phase_of_its_own(tmp_path, attack, extra):
    out = tmp_path / "run.h5"
    done = run_cli(["run", config(tmp_path, attack), "--out", out, *SHORT, *extra], ranks=2)
    assert done.returncode == 0, done.stderr
    t, status, _ = _timings(out)
    assert status == "complete" and t["craft_s"] is not None and t["craft_s"].shape == (60,)
    assert np.isfinite(t["craft_s"]).all() and (t["craft_s"] >= 0).all()
    # the phases are disjoint spans of rank 0's step: together never longer than the step
    phases = t["craft_s"] + t["gather_s"] + t["aggregate_s"] + t["update_s"]
    assert (phases <= t["step_s"] + 1e-12).all()


def test_sharded_runs_leave_it_to_gather_s(tmp_path):
    out = tmp_path / "sharded.h5"
    done = run_cli(["run", config(tmp_path, "alie"), "--out", out, *SHORT,
                    "--set", "aggregator.placement=sharded", "--set", "aggregator.sharded_min_d=1"], ranks=2)
    assert done.returncode == 0, done.stderr
    t, status, _ = _timings(out)
    with h5py.File(out, "r") as h5:
        assert h5.attrs["exchange"] != "gather"              # the blocks' exchange, not the small-d one
    assert status == "complete" and np.isnan(t["craft_s"]).all()


def _as_written_before_craft_s(path):
    """The files as a krum-mpi without timing/craft_s wrote them: no dataset, no checksum for it in
    the results' row_digests nor in the checkpoint header's rows (the header re-padded to its room,
    its CRC-32 recomputed: checkpoint.py's format)."""
    with h5py.File(path, "r+") as h5:
        del h5["timing/craft_s"]
        meta = json.loads(h5.attrs[digests.ATTR])
        del meta["sha256"]["timing/craft_s"]
        h5.attrs[digests.ATTR] = json.dumps(meta)
    ckpt = path.with_name(path.name + ".ckpt")
    raw, length, header = checkpoint_header(ckpt)
    del header["rows"]["timing/craft_s"]
    text = json.dumps(header).encode()
    text += b" " * (length - len(text))
    ckpt.write_bytes(raw[:20] + text + struct.pack("<I", zlib.crc32(text)) + raw[20 + length + 4:])


def test_a_file_written_before_it_resumes_without_it_and_reports_nan(tmp_path):
    CONFIG = config(tmp_path, "alie")
    ref = tmp_path / "ref.h5"
    done = run_cli(["run", CONFIG, "--out", ref, *SHORT], ranks=2)
    assert done.returncode == 0, done.stderr

    (tmp_path / "study").mkdir()
    old = tmp_path / "study" / "old.h5"
    code, err = sigterm_after_steps([CONFIG, "--out", old, *SHORT], old, at_least=20, ranks=2)
    assert code == 3, err
    _as_written_before_craft_s(old)
    resumed = run_cli(["run", CONFIG, "--out", old, "--resume", *SHORT], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    t_old, status, params_old = _timings(old)
    t_ref, _, params_ref = _timings(ref)
    assert status == "complete" and t_old["craft_s"] is None          # kept as it was written
    assert params_old.tobytes() == params_ref.tobytes()                # and the run is the same run

    new = tmp_path / "study" / "new.h5"                                # another seed of the experiment
    done = run_cli(["run", CONFIG, "--out", new, *SHORT, "--set", "run.seed=1"], ranks=2)
    assert done.returncode == 0, done.stderr
    summary = run_summary(load_study(tmp_path / "study"))
    by_file = {str(f).rsplit("/", 1)[-1]: c for f, c in zip(summary["file"], summary["craft_s"])}
    assert np.isnan(by_file["old.h5"]) and np.isfinite(by_file["new.h5"]) and by_file["new.h5"] > 0
    # one experiment, two seeds: the phase table averages craft_s over the runs that recorded it
    phases = phase_times(summary)
    assert len(phases) == 1 and phases["craft_s"].iloc[0] == pytest.approx(by_file["new.h5"])
