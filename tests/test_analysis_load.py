"""Loading a study into Dask: one partition per file, values as in the files, bad files skipped
with their reason (never fatal), a dask.distributed cluster gives the same answers."""
import shutil

import dask.dataframe as dd
import h5py
import numpy as np
import pytest
from test_analysis_fakes import make_config, make_fake_study, write_run

from krum_mpi.analysis import load_study
from krum_mpi.analysis.derived import experiment_keys
from krum_mpi.analysis.load import read_partition
from krum_mpi.analysis.tables import summarise_runs
from krum_mpi.errors import ResultsError


@pytest.fixture
def fake_study(tmp_path):
    folder = tmp_path / "study"
    make_fake_study(folder)
    return folder


def add_bad_files(folder, good_file):
    """One of each kind of file a study folder should survive; returns {name: expected reason part}."""
    (folder / "notes.h5").write_text("not hdf5 at all")
    data = good_file.read_bytes()
    (folder / "truncated.h5").write_bytes(data[: len(data) // 3])
    with h5py.File(folder / "foreign.h5", "w") as h5:
        h5["x"] = np.arange(3)
    shutil.copy(good_file, folder / "future.h5")
    with h5py.File(folder / "future.h5", "a") as h5:
        h5.attrs["schema_version"] = 2
    shutil.copy(good_file, folder / "no_timing.h5")
    with h5py.File(folder / "no_timing.h5", "a") as h5:
        del h5["timing/gather_s"]
    shutil.copy(good_file, folder / "partial.h5.tmp")
    shutil.copy(good_file, folder / "copy-of-a-run.h5")
    (folder / "run.log").write_text("log")
    return {"notes.h5": "not an HDF5 file", "truncated.h5": "cannot be read by HDF5",
            "foreign.h5": "no schema_version", "future.h5": "schema_version 2",
            "no_timing.h5": "timing/gather_s", "partial.h5.tmp": "temporary file",
            "copy-of-a-run.h5": "same config and ranks"}


def test_run_table_has_config_provenance_and_derived_columns(fake_study):
    study = load_study(fake_study)
    runs = study.runs
    assert len(runs) == 12 and study.skipped.empty
    for col in ("run", "run_id", "file", "status", "aggregator.name", "workers.n", "workers.byzantine",
                "model.hidden", "prov.n_ranks", "prov.mpi_library_version", "rule", "attack_label",
                "byz_fraction", "n_ranks"):
        assert col in runs, col
    assert set(runs["byz_fraction"]) == {0.0, 0.2}
    assert set(runs.loc[runs["n_byzantine"] == 0, "attack_label"]) == {"none"}
    assert set(runs.loc[runs["n_byzantine"] == 2, "attack_label"]) == {"gaussian"}
    assert runs["run"].is_unique
    assert experiment_keys(runs)[:3] == ["rule", "byz_fraction", "attack_label"]
    assert "run.seed" not in experiment_keys(runs)


def test_per_step_frames_are_lazy_one_partition_per_file_and_match_h5py(fake_study):
    study = load_study(fake_study)
    for frame in (study.metrics, study.timings, study.selections):
        assert isinstance(frame, dd.DataFrame)
        assert frame.npartitions == len(study.runs)
    metrics = study.metrics.compute()
    timings = study.timings.compute()
    for run, path in zip(study.runs["run"], study.runs["file"]):
        with h5py.File(path, "r") as h5:
            acc = h5["metrics/test_accuracy"][()]
            step_s = h5["timing/step_s"][()]
        np.testing.assert_array_equal(metrics.loc[metrics["run"] == run, "test_accuracy"].to_numpy(), acc)
        np.testing.assert_array_equal(timings.loc[timings["run"] == run, "step_s"].to_numpy(), step_s)


def test_column_selection_is_pushed_into_the_read(fake_study):
    study = load_study(fake_study)
    pairs = [(study.runs["file"][0], "x")]
    assert list(read_partition(pairs, "metrics", columns=["step"]).columns) == ["step"]
    picked = study.metrics[["run", "test_accuracy"]]
    assert list(picked.compute().columns) == ["run", "test_accuracy"]


def test_files_per_partition_batches_files_without_changing_the_data(fake_study):
    one = load_study(fake_study)
    three = load_study(fake_study, files_per_partition=5)
    assert three.metrics.npartitions == 3
    a = one.metrics.compute().sort_values(["run", "step"]).reset_index(drop=True)
    b = three.metrics.compute().sort_values(["run", "step"]).reset_index(drop=True)
    assert a.equals(b)


def test_selection_flags_match_the_files(tmp_path):
    path = tmp_path / "k.h5"
    written = write_run(path, make_config(rule="krum", byzantine=3, attack="gaussian", steps=12),
                        byz_top_every=3)
    sel = load_study(tmp_path).selections.compute()
    expected = written["byzantine"][written["selected"][:, 0]].astype(float)
    np.testing.assert_array_equal(sel["byz_selected"].to_numpy(), expected)
    assert sel["byz_selected"].mean() == pytest.approx(4 / 12)


def test_byzantine_weight_share_from_weights(tmp_path):
    path = tmp_path / "avg.h5"
    write_run(path, make_config(rule="average", byzantine=2, n=10, attack="gaussian"), with_weights=True)
    sel = load_study(tmp_path).selections.compute()
    np.testing.assert_allclose(sel["byz_weight"], 0.2)
    assert (sel["byz_selected"] == 1.0).all()


def test_bad_files_are_listed_with_their_reason_never_fatal(fake_study):
    expected = add_bad_files(fake_study, fake_study / "krum-b0-s0.h5")
    study = load_study(fake_study)
    assert len(study.runs) == 12  # the good runs are all still there
    reasons = {p.split("/")[-1]: r for p, r in zip(study.skipped["file"], study.skipped["reason"])}
    skipped_names = set(reasons)
    # the copy and the original hold the same run: exactly one of them is skipped
    assert skipped_names - {"krum-b0-s0.h5", "copy-of-a-run.h5"} == set(expected) - {"copy-of-a-run.h5"}
    assert len(skipped_names & {"krum-b0-s0.h5", "copy-of-a-run.h5"}) == 1
    for name, part in expected.items():
        if name in reasons:
            assert part in reasons[name], (name, reasons[name])
    assert study.other_files == {".log": 1}
    assert len(summarise_runs(study)) == 12


def test_incomplete_runs_are_loaded_and_flagged(tmp_path):
    write_run(tmp_path / "done.h5", make_config(seed=0))
    write_run(tmp_path / "running.h5", make_config(seed=1), status="running", steps_done=7)
    study = load_study(tmp_path)
    assert dict(zip(study.runs["run"], study.runs["status"])) == {"done.h5": "complete", "running.h5": "running"}
    assert len(study.complete_runs()) == 1
    assert study.runs.set_index("run").loc["running.h5", "steps_done"] == 7


def test_file_lists_and_missing_paths(fake_study):
    files = sorted(fake_study.glob("krum-*.h5"))
    study = load_study(files)
    assert len(study.runs) == 6 and set(study.runs["run"]) == {p.name for p in files}
    with pytest.raises(ResultsError, match="does not exist"):
        load_study(fake_study / "nope")
    empty = load_study([fake_study / "missing.h5"])
    assert empty.runs.empty and "no such file" in empty.skipped["reason"][0]
    with pytest.raises(ResultsError, match="no readable run files"):
        empty.metrics  # noqa: B018


def test_same_answers_on_a_distributed_local_cluster(fake_study):
    distributed = pytest.importorskip("distributed")
    local = summarise_runs(load_study(fake_study)).sort_values("run").reset_index(drop=True)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        with distributed.get_task_stream() as stream:
            remote = summarise_runs(load_study(fake_study)).sort_values("run").reset_index(drop=True)
        assert len(stream.data) >= 12  # the reads ran on the cluster's worker, not in this process
    cols = ["run", "final_accuracy", "best_accuracy", "step_s", "byz_selected_frac"]
    assert remote[cols].equals(local[cols])


def test_a_config_key_added_later_does_not_split_experiments(tmp_path):
    from krum_mpi.config import DEFAULTS
    default = DEFAULTS["run"]["watchdog_s"]
    old = make_config(rule="krum", seed=0)  # written before the key existed
    new = make_config(rule="krum", seed=1, run__watchdog_s=default)
    write_run(tmp_path / "old.h5", old)
    write_run(tmp_path / "new.h5", new)
    study = load_study(tmp_path)
    assert "run.watchdog_s" not in experiment_keys(study.runs)
    assert study.runs["run.watchdog_s"].notna().all()
    from krum_mpi.analysis import tables
    acc = tables.accuracy_table(tables.run_summary(study))
    assert len(acc) == 1 and acc["n_seeds"].item() == 2


def test_runs_left_from_an_earlier_plan_of_a_study_folder_are_skipped(tmp_path):
    """A study folder (study.json beside runs/) keeps only the runs of its present plan: a run file
    whose id the plan no longer lists (a tuning choice made again gives the tuned parts new ids) is
    skipped with its reason instead of being pooled as an extra seed; files outside runs/ and
    folders without a plan are read as before."""
    import json

    folder = tmp_path / "study"
    make_fake_study(folder / "runs")
    names = sorted(p.name for p in (folder / "runs").glob("*.h5"))
    ids = [n.split(".", 1)[0] for n in names]
    plan = {"name": "s", "runs": [{"id": i} for i in ids[:-2]]}
    (folder / "study.json").write_text(json.dumps(plan))
    study = load_study(folder)
    assert len(study.runs) == len(names) - 2
    stale = study.skipped[study.skipped["reason"].str.contains("not a run of the study's present plan")]
    assert sorted(stale["file"].map(lambda f: f.rsplit("/", 1)[-1])) == names[-2:]
    (folder / "study.json").unlink()          # no plan: every file is read
    assert len(load_study(folder).runs) == len(names)
