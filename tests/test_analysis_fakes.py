"""Synthetic run files that follow the results schema of the contract exactly, for fast tests of
the analysis without MPI; plus a check that the schema's own reader accepts them.

``write_run`` writes one file as ``krum_mpi.run.results`` documents it: root attributes
(schema_version 1, config JSON, run_id, status, created, provenance JSON and the quick attributes),
``metrics/{step,loss,test_accuracy}``, ``timing/{compute_s,gather_s,aggregate_s,update_s,step_s}``
and ``selection/{selected,weights,byzantine}``.
"""
import hashlib
import json

import h5py
import numpy as np

from krum_mpi.run import results


def make_config(rule="krum", attack="none", n=10, byzantine=0, f=None, seed=0, steps=20, eval_every=5,
                **extra):
    cfg = {
        "run": {"steps": steps, "seed": seed, "eval_every": eval_every, "device": "cpu",
                "name": "", "checkpoint_every": 0},
        "workers": {"n": n, "byzantine": byzantine, "batch_size": 3, "device": "cpu"},
        "data": {"name": "synthetic", "n_train": 1000, "n_test": 200},
        "model": {"name": "logistic", "hidden": [20, 20]},
        "optimizer": {"lr": 0.1, "momentum": 0.0, "momentum_at": "server"},
        "aggregator": {"name": rule, "f": byzantine if f is None else f},
        "attack": {"name": attack},
    }
    for key, value in extra.items():
        section, name = key.split("__")
        cfg[section][name] = value
    return cfg


def write_run(path, cfg, *, status="complete", final_acc=0.8, step_s=0.01, n_ranks=2, max_selected=None,
              with_weights=False, rng=None, byz_top_every=0, steps_done=None):
    """Write a schema-1 run file; accuracy ramps to ``final_acc``; returns the arrays written."""
    rng = rng or np.random.default_rng(cfg["run"]["seed"])
    steps = cfg["run"]["steps"] if steps_done is None else steps_done
    n, nb = cfg["workers"]["n"], cfg["workers"]["byzantine"]
    rule = cfg["aggregator"]["name"]
    step = np.arange(steps, dtype=np.int64)
    acc = np.full(steps, np.nan)
    evaluated = (step % cfg["run"]["eval_every"] == 0) | (step == steps - 1)
    acc[evaluated] = final_acc * (0.5 + 0.5 * (step[evaluated] + 1) / steps)
    loss = 1.0 / (1.0 + step) + rng.uniform(0, 0.01, steps)
    timing = {"compute_s": np.full(steps, step_s * 0.5), "gather_s": np.full(steps, step_s * 0.2),
              "aggregate_s": np.full(steps, step_s * (0.25 if rule != "average" else 0.05)),
              "update_s": np.full(steps, step_s * 0.05)}
    timing["compute_s"][0] *= 10  # a slow first step, as after start-up
    timing["step_s"] = sum(timing.values())
    byzantine = np.zeros(n, bool)
    byzantine[n - nb:] = True  # Byzantine workers are the last ones
    width = max_selected or (n if rule == "average" else 1)
    selected = np.full((steps, width), -1, np.int32)
    if rule == "average":
        selected[:] = np.arange(n)
    else:
        for t in range(steps):
            choose_byz = nb > 0 and byz_top_every and t % byz_top_every == 0
            first = n - 1 if choose_byz else t % (n - nb)
            others = [i for i in range(n - nb) if i != first][: width - 1]
            selected[t, : 1 + len(others)] = [first, *others]
    cfg_json = json.dumps(cfg, sort_keys=True)
    prov = {"n_ranks": n_ranks, "n_workers": n, "device": "cpu", "hostnames": ["localhost"],
            "mpi_library_version": "fake MPI", "python": "3.11", "packages": {"numpy": np.__version__},
            "cmdline": "fake", "git_commit": "0" * 40, "blas": {}, "slurm": {}}
    with h5py.File(path, "w") as h5:
        a = h5.attrs
        a["schema_version"] = results.SCHEMA_VERSION
        a["config"] = cfg_json
        a["run_id"] = hashlib.sha256(cfg_json.encode()).hexdigest()[:16]
        a["status"] = status
        a["created"] = "2025-01-01T00:00:00+00:00"
        a["provenance"] = json.dumps(prov)
        a["n_workers"], a["n_byzantine"], a["f"] = n, nb, cfg["aggregator"]["f"]
        a["aggregator"], a["attack"] = rule, cfg["attack"]["name"]
        a["seed"], a["steps"] = cfg["run"]["seed"], cfg["run"]["steps"]
        m = h5.create_group("metrics")
        m["step"], m["loss"], m["test_accuracy"] = step, loss.astype(np.float64), acc
        t = h5.create_group("timing")
        for name, values in timing.items():
            t[name] = values.astype(np.float64)
        s = h5.create_group("selection")
        s["selected"] = selected
        s["byzantine"] = byzantine
        if with_weights:
            w = np.zeros((steps, n), np.float32)
            w[np.arange(steps)[:, None], np.maximum(selected, 0)] = 1.0
            s["weights"] = w / w.sum(axis=1, keepdims=True)
    return {"acc": acc, "timing": timing, "selected": selected, "byzantine": byzantine,
            "run_id": h5py.File(path, "r").attrs["run_id"]}


def make_fake_study(folder, seeds=(0, 1, 2), steps=20):
    """A small study: average and krum at 0 and 2 of 10 Byzantine workers (gaussian), 3 seeds.

    Accuracies are chosen so the expected tables are known: final accuracy = base - 0.01 * seed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    base = {("average", 0): 0.90, ("krum", 0): 0.85, ("average", 2): 0.50, ("krum", 2): 0.84}
    written = {}
    for (rule, nb), acc in base.items():
        for seed in seeds:
            cfg = make_config(rule=rule, attack="gaussian" if nb else "none", byzantine=nb, seed=seed,
                              steps=steps)
            path = folder / f"{rule}-b{nb}-s{seed}.h5"
            written[path.name] = write_run(path, cfg, final_acc=acc - 0.01 * seed,
                                           step_s=0.01 if rule == "average" else 0.015,
                                           byz_top_every=4 if nb else 0)
    return written


def test_fake_files_are_read_by_the_schema_reader(tmp_path):
    """The fakes follow the writer's schema: the writer's own reader takes them, values intact."""
    path = tmp_path / "run.h5"
    written = write_run(path, make_config(rule="krum", byzantine=2, attack="gaussian"))
    run = results.read_run(path)
    assert run["attrs"]["schema_version"] == results.SCHEMA_VERSION and run["attrs"]["aggregator"] == "krum"
    np.testing.assert_array_equal(run["metrics"]["test_accuracy"], written["acc"])
