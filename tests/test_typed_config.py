"""The typed config: config.load returns frozen dataclasses generated from the one schema; the
resolved dict (results file, run id, studies) is unchanged by it."""
import copy
import dataclasses
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import h5py
import pytest

from conftest import REPO, one_line_error, run_cli
from krum_mpi import config
from krum_mpi.errors import ConfigError
from krum_mpi.inputs import schema, typed
from krum_mpi.parallel import model_parallel
from krum_mpi.run import runid

PRESETS = sorted(p for p in (REPO / "configs").glob("*.toml") if "study" not in p.name)
OVERRIDES = [
    [],
    ["parallel.model=2"],                                              # placement derived: sharded
    ["aggregator.name=multi-krum", "aggregator.m=3", "workers.byzantine=2", "attack.name=gaussian",
     "attack.sigma=200.0"],                                            # options of the open sections
    ["model.kwargs={d_model = 8}"],                                    # a table key
    ["data.name=synthetic", "data.image_shape=[1, 4, 5]"],             # a list key
    ["byzantine_ranks.ranks=[2]", "byzantine_ranks.behaviour=corrupt-activations", "parallel.model=2",
     "aggregator.f=10"],
]
# Run ids of these configs as the code before the typed config computed them (krum-mpi at ba2a715:
# config.run_id(config.load_config(path, overrides))): a run id must never move.
PINNED_IDS = {
    ("paper-fig4-krum-f6.toml", ()): "272ccf36f784",
    ("synthetic-krum-f6.toml", ()): "a4746003ebd5",
    ("mnist-t10k-average.toml", ()): "36604fb6a712",
    (None, ()): "f5c73b86eb1d",
    (None, ("parallel.model=2", "model.name=mlp")): "b02b10a3e629",
    (None, ("aggregator.name=multi-krum", "aggregator.m=3", "workers.byzantine=2", "attack.name=gaussian",
            "attack.sigma=200.0")): "229d2c308ad4",
    (None, ("model.kwargs={d_model = 8}",)): "cbaafd6298f5",
}


def resolved_by_hand(raw: dict) -> dict:
    """The resolved dict as the schema defines it, written out independently of config and typed:
    the defaults with the given keys over them; aggregator.f = -1 means workers.byzantine; parallel.model
    > 1 turns placement 'gather' into 'sharded'."""
    out = copy.deepcopy(schema.DEFAULTS)
    for section, body in raw.items():
        for name, value in body.items():
            default = schema.DEFAULTS[section].get(name)
            out[section][name] = float(value) if isinstance(default, float) and not isinstance(value, bool) else value
    if out["aggregator"]["f"] == -1:
        out["aggregator"]["f"] = out["workers"]["byzantine"]
    if out["parallel"]["model"] > 1 and out["aggregator"]["placement"] == "gather":
        out["aggregator"]["placement"] = "sharded"
    return out


def dict_path_run_id(resolved: dict) -> str:
    """The run id from the plain dict alone (runid's hash of the identity's canonical JSON)."""
    return runid.digest(json.dumps(runid.identity(resolved, schema.DEFAULTS), sort_keys=True))


def test_load_returns_a_frozen_config_of_frozen_sections():
    cfg = config.load(REPO / "configs/paper-fig4-krum-f6.toml", ["model.kwargs={width = 4}"])
    assert isinstance(cfg, config.Config) and isinstance(cfg.run, typed.SECTIONS["run"])
    assert (cfg.run.steps, cfg.aggregator.name, cfg.aggregator.f) == (500, "krum", 6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.steps = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run = cfg.workers
    with pytest.raises(TypeError):
        cfg.model.kwargs["width"] = 8          # tables are read-only mappings
    with pytest.raises(TypeError):
        cfg.attack.options["sigma"] = 0.0     # so are the options of the open sections
    assert cfg.model.hidden == (20, 20)        # lists are tuples: nothing to append to
    assert cfg.attack.option_kwargs() == {"sigma": 200.0}
    cfg.attack.option_kwargs()["sigma"] = 0.0  # a fresh dict each time: the Config is unchanged
    assert cfg.attack.options["sigma"] == 200.0


@pytest.mark.parametrize("section", list(schema.DEFAULTS))
def test_each_section_class_has_exactly_the_schema_keys(section):
    cls = typed.SECTIONS[section]
    names = [f.name for f in dataclasses.fields(cls)]
    extra = ["options"] if section in schema.OPEN_SECTIONS else []
    assert names == [*schema.DEFAULTS[section], *extra]
    for f in dataclasses.fields(cls):
        if f.name in schema.DEFAULTS[section]:
            default = schema.DEFAULTS[section][f.name]
            want = tuple if isinstance(default, list) else type(default)
            assert f.type is want or (isinstance(default, dict) and f.type.__name__ == "Mapping"), f.name
    assert [f.name for f in dataclasses.fields(config.Config)] == list(schema.DEFAULTS)


def test_a_key_added_to_the_schema_is_a_field_without_other_code():
    """Generated, not written out: a new schema key appears in its section class, with its default,
    and in to_dict (checked in a fresh interpreter whose schema gains a key before typed is imported)."""
    code = ("from krum_mpi.inputs import schema; schema.DEFAULTS['run']['new_knob'] = 3; "
            "schema.DEFAULTS['extra'] = {'flag': True}; "
            "from krum_mpi.inputs import typed; c = typed.Config.from_dict({}); "
            "print(c.run.new_knob, c.extra.flag, c.to_dict()['run']['new_knob'], typed.RunConfig.__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "True", "3", "RunConfig"]


@pytest.mark.parametrize("overrides", OVERRIDES, ids=lambda o: " ".join(o) or "defaults")
@pytest.mark.parametrize("path", [None, *PRESETS], ids=lambda p: p.name if p else "no-file")
def test_to_dict_round_trips_and_equals_the_resolved_dict(path, overrides):
    raw = config.apply_overrides(config.load_file(path) if path else {}, overrides)
    try:
        cfg = config.load(path, overrides)
    except ConfigError:   # a combination this preset refuses (a split of a torch model, say)
        pytest.skip("refused")
    resolved = cfg.to_dict()
    assert resolved == resolved_by_hand(raw)
    assert resolved == config.validate(raw) == config.load_config(path, overrides)
    assert config.Config.from_dict(resolved) == cfg
    assert json.loads(json.dumps(resolved)) == resolved   # plain lists and dicts, JSON as before
    steps = cfg.run.steps
    resolved["run"]["steps"] = steps + 1                  # a copy: the Config is not changed through it
    assert cfg.run.steps == steps and cfg.to_dict() != resolved


@pytest.mark.parametrize("key", sorted(PINNED_IDS, key=str), ids=str)
def test_run_ids_are_those_of_the_dict_path_and_of_before(key):
    name, overrides = key
    path = REPO / "configs" / name if name else None
    cfg = config.load(path, list(overrides))
    raw = config.apply_overrides(config.load_file(path) if path else {}, list(overrides))
    assert config.run_id(cfg) == dict_path_run_id(resolved_by_hand(raw)) == PINNED_IDS[key]
    assert config.run_id(cfg) == config.run_id(cfg.to_dict())


def test_model_parallel_resolve_returns_a_new_config():
    plain = config.load(None)
    split = dataclasses.replace(plain, parallel=dataclasses.replace(plain.parallel, model=2))
    out = model_parallel.resolve(split)
    assert out.aggregator.placement == "sharded" and split.aggregator.placement == "gather"
    assert out is not split and model_parallel.resolve(plain) is plain
    assert config.load(None, ["parallel.model=2"]) == out


def test_a_section_from_a_partial_dict_takes_the_schema_defaults():
    data = typed.section("data", {"name": "hdf5", "path": "x.h5"})
    assert (data.name, data.path, data.split, data.test_fraction) == ("hdf5", "x.h5", "iid", 0.2)
    assert typed.section("data", data) is data
    with pytest.raises(TypeError, match="no key 'nmae'"):
        typed.section("data", {"nmae": "hdf5"})
    assert typed.section("aggregator", {"name": "krum", "m": 3}).option_kwargs() == {"m": 3}


def test_a_bad_key_is_still_one_line():
    with pytest.raises(ConfigError, match=r"^unknown config key run\.stepz: known keys of \[run\] are steps"):
        config.load(None, ["run.stepz=3"])
    done = run_cli(["run", REPO / "configs/synthetic-krum-f6.toml", "--set", "run.stepz=3", "--quiet"])
    one_line_error(done, "unknown config key run.stepz")


def test_modules_read_sections_by_attribute_not_the_dict():
    """The run, the parallel layer, the data and the models read a Config (cfg.run.steps), never a
    section of the dict (cfg["run"]). Left: the results file and resume, which keep the resolved dict
    the file stores."""
    package = REPO / "krum_mpi"
    allowed = {"run/results.py", "run/resume.py", "run/runid.py"}
    pattern = re.compile(r"cfg\[\s*[\"'](" + "|".join(schema.DEFAULTS) + r")[\"']\s*\]")
    readers = sorted(p.relative_to(package).as_posix()
                     for folder in ("run", "parallel", "data", "torch_models") for p in (package / folder).rglob("*.py")
                     if pattern.search(p.read_text()))
    readers += [name for name in ("models.py", "cli.py") if pattern.search((package / name).read_text())]
    assert set(readers) <= allowed, readers


def test_a_real_results_file_stores_the_resolved_config_as_before(tmp_path):
    """krum-mpi run on 2 MPI ranks: the file's config attribute is the canonical JSON of the resolved
    dict (as the dict path builds it) and its run id the dict path's."""
    overrides = ["run.steps=3", "run.eval_every=3", "data.n_train=400", "data.n_test=50"]
    path = REPO / "configs/synthetic-krum-f6.toml"
    out = tmp_path / "run.h5"
    args = ["run", path, "--out", out, "--quiet"]
    for item in overrides:
        args += ["--set", item]
    done = run_cli(args, ranks=2)
    assert done.returncode == 0, done.stderr
    raw = config.apply_overrides(tomllib.loads(Path(path).read_text()), overrides)
    expected = resolved_by_hand(raw)
    with h5py.File(out, "r") as h5:
        attrs = dict(h5.attrs)
    assert attrs["config"] == json.dumps(expected, sort_keys=True)
    assert attrs["run_id"] == dict_path_run_id(expected)
    assert (attrs["status"], attrs["steps_done"], attrs["aggregator"], attrs["f"]) == ("complete", 3, "krum", 6)
