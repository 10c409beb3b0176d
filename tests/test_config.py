"""Config loading, overrides and validation: every bad key gives a one-line ConfigError."""
import json
from pathlib import Path

import pytest

from krum_mpi import config
from krum_mpi.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "configs").glob("paper-fig4-*.toml"))


def test_defaults_validate_and_fill_every_key():
    cfg = config.validate({})
    assert set(cfg) == set(config.DEFAULTS)
    for section, body in config.DEFAULTS.items():
        assert set(body) <= set(cfg[section])
    assert cfg["aggregator"]["f"] == cfg["workers"]["byzantine"] == 0


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_presets_load(path):
    cfg = config.load_config(path)
    assert cfg["workers"]["n"] == 20 and cfg["workers"]["batch_size"] == 3
    assert cfg["model"]["hidden"] == [20, 20] and cfg["run"]["steps"] == 500
    assert cfg["aggregator"]["f"] == 6
    assert cfg["workers"]["byzantine"] == (6 if path.stem.endswith("f6") else 0)
    json.dumps(cfg)  # the resolved config is stored as JSON


def test_overrides_parse_toml_literals():
    cfg = config.load_config(PRESETS[0], ["run.steps=100", "model.hidden=[8, 4]", "run.name=x y",
                                          "data.standardize=false", "optimizer.lr=1e-3"])
    assert cfg["run"]["steps"] == 100
    assert cfg["model"]["hidden"] == [8, 4]
    assert cfg["run"]["name"] == "x y"
    assert cfg["data"]["standardize"] is False
    assert cfg["optimizer"]["lr"] == pytest.approx(1e-3)


def test_int_where_float_expected_is_accepted():
    assert config.validate({"optimizer": {"lr": 1}})["optimizer"]["lr"] == 1.0


def test_run_id_is_stable_and_sensitive():
    a = config.validate({"run": {"seed": 1}})
    b = config.validate({"run": {"seed": 1}})
    c = config.validate({"run": {"seed": 2}})
    assert config.run_id(a) == config.run_id(b) != config.run_id(c)


def test_flatten():
    flat = config.flatten(config.validate({}))
    assert flat["run.steps"] == 500 and flat["model.hidden"] == "[20, 20]"


BAD = [
    ({"run": {"stepz": 3}}, "unknown config key run.stepz"),
    ({"runn": {}}, "unknown config section [runn]"),
    ({"run": {"steps": 0}}, "run.steps = 0 must be >= 1"),
    ({"run": {"steps": "ten"}}, "run.steps = 'ten' must be an integer"),
    ({"run": {"steps": 2.5}}, "run.steps = 2.5 must be an integer"),
    ({"run": {"device": "tpu"}}, "run.device = 'tpu' is not one of auto, cpu, gpu"),
    ({"optimizer": {"lr": -0.1}}, "optimizer.lr = -0.1 must be > 0"),
    ({"optimizer": {"lr": 0}}, "optimizer.lr = 0.0 must be > 0"),
    ({"optimizer": {"momentum": 1.5}}, "optimizer.momentum = 1.5 must be <= 1"),
    ({"model": {"hidden": [20, 0]}}, "model.hidden = [20, 0] must be a list of positive integers"),
    ({"model": {"name": "resnet"}}, "model.name = 'resnet' is not one of logistic, softmax, mlp"),
    ({"data": {"standardize": "yes"}}, "data.standardize = 'yes' must be true or false"),
    ({"workers": {"n": 5, "byzantine": 6}, "attack": {"name": "gaussian"}}, "workers.byzantine = 6 exceeds workers.n = 5"),
    ({"workers": {"byzantine": 3}, "aggregator": {"f": 2}, "attack": {"name": "gaussian"}},
     "workers.byzantine = 3 exceeds the declared aggregator.f = 2"),
    ({"workers": {"byzantine": 2}}, "attack.name = 'none'"),
    ({"attack": {"name": "gaussian"}}, "workers.byzantine = 0"),
    ({"run": []}, "[run] must be a table"),
    ({"aggregator": {"m": {"a": 1}}}, "aggregator.m"),
]


@pytest.mark.parametrize("raw, message", BAD, ids=[m for _, m in BAD])
def test_bad_configs_give_one_line_errors(raw, message):
    with pytest.raises(ConfigError) as exc:
        config.validate(raw)
    text = str(exc.value)
    assert message in text
    assert "\n" not in text


def test_rule_bounds_are_checked_at_load():
    with pytest.raises(ConfigError, match=r"aggregator: .*") as exc:
        config.validate({"workers": {"n": 10, "byzantine": 4}, "aggregator": {"name": "krum"},
                         "attack": {"name": "gaussian"}})
    assert "\n" not in str(exc.value)


def test_unknown_rule_and_attack():
    with pytest.raises(ConfigError, match="aggregator: .*no-such-rule"):
        config.validate({"aggregator": {"name": "no-such-rule"}})
    with pytest.raises(ConfigError, match="attack: .*no-such-attack"):
        config.validate({"workers": {"byzantine": 1}, "aggregator": {"f": 1},
                         "attack": {"name": "no-such-attack"}})


@pytest.mark.parametrize("item", ["run.steps", "steps=3", "run=3", "a.b.c=1"])
def test_bad_override_syntax(item):
    with pytest.raises(ConfigError, match="override"):
        config.apply_overrides({}, [item])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load_file(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nsteps = 3\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        config.load_file(bad)
    top = tmp_path / "top.yaml"
    top.write_text("- 1\n- 2\n")
    pytest.importorskip("yaml", reason="PyYAML not installed: YAML configs are optional")
    with pytest.raises(ConfigError, match="top level"):
        config.load_file(top)
