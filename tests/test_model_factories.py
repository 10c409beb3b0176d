"""A model factory is checked like any input: its output shape against the data's classes, and a
factory (or its module) that calls sys.exit is an error of one line, never a silent exit 0.

The factories are real files written to tmp_path and loaded by path, as a user's would be; the last
test runs ``krum-mpi run`` on one (1 rank) and checks the exit status and stderr.
"""
import subprocess
import sys

import pytest

from krum_mpi import models
from krum_mpi.errors import ConfigError

torch = pytest.importorskip("torch")

FACTORIES = '''
import sys
from torch import nn

def extra_outputs(n_features, n_classes, input_shape=None):
    return nn.Linear(n_features, n_classes + 3)

def wrong_input(n_features, n_classes, input_shape=None):
    return nn.Linear(n_features + 1, n_classes)

def exits_zero(n_features, n_classes, input_shape=None):
    raise SystemExit(0)

def exits_two(n_features, n_classes, input_shape=None):
    sys.exit(2)

def right(n_features, n_classes, input_shape=None):
    return nn.Sequential(nn.Linear(n_features, 8), nn.ReLU(), nn.Linear(8, n_classes))
'''


@pytest.fixture
def factories(tmp_path):
    path = tmp_path / "user_factories.py"
    path.write_text(FACTORIES)
    return path


@pytest.mark.parametrize("name, words", [
    ("extra_outputs", ["output has shape (2, 6)", "expected (batch, 3)"]),
    ("wrong_input", ["forward pass", "failed"]),
    ("exits_zero", ["sys.exit(0)"]),
    ("exits_two", ["sys.exit(2)"]),
])
def test_bad_factory_is_one_config_error(factories, name, words):
    with pytest.raises(ConfigError) as err:
        models.make({"name": "torch", "factory": f"{factories}:{name}"}, 5, 3)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400, msg
    for word in words:
        assert word in msg, msg


def test_module_exiting_on_import_is_a_config_error(tmp_path):
    path = tmp_path / "exits_on_import.py"
    path.write_text("raise SystemExit(0)\n")
    with pytest.raises(ConfigError, match="importing .* failed .*sys.exit"):
        models.make({"name": "torch", "factory": f"{path}:anything"}, 5, 3)


def test_right_factory_still_builds(factories):
    model = models.make({"name": "torch", "factory": f"{factories}:right"}, 5, 3)
    assert model.n_params == 5 * 8 + 8 + 8 * 3 + 3


def test_torch_model_names_known_without_importing_torch():
    from krum_mpi import torch_models

    assert set(models.TORCH_MODELS) == set(torch_models.NAMES)


def test_cli_run_with_exiting_factory_exits_2(factories, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f"""
[run]
steps = 2
[workers]
n = 4
[data]
name = "synthetic"
n_train = 200
n_test = 20
n_features = 5
n_classes = 3
[model]
name = "torch"
factory = "{factories}:exits_zero"
""")
    out = tmp_path / "r.h5"
    proc = subprocess.run([sys.executable, "-m", "krum_mpi", "run", str(config), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "sys.exit(0)" in lines[0], proc.stderr
    assert not out.exists()
