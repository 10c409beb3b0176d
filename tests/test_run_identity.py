"""Run ids across the addition of config keys."""
import hashlib

from krum_mpi import config


def test_run_ids_of_configs_without_the_new_model_keys_are_unchanged():
    """Keys added for PyTorch workers leave a run's id alone while at their default (old results stay
    resumable, old studies keep their ids); set away from it, they change the id."""
    cfg = config.load_config(None)
    assert config.run_id(cfg) == config.run_id(config.load_config(None, ["model.loss=cross-entropy"]))
    assert config.run_id(cfg) != config.run_id(config.load_config(None, ["model.weight_decay=1e-4"]))
    legacy = {s: dict(b) for s, b in cfg.items()}
    for section, key in config.LATER_KEYS:
        del legacy[section][key]
    legacy = {s: b for s, b in legacy.items() if b}   # a section added later ([parallel]) did not exist
    assert "parallel" not in legacy
    assert config.run_id(cfg) == hashlib.sha256(config.to_json(legacy).encode()).hexdigest()[:12]


def test_numpy_models_never_import_torch():
    """The NumPy models stay the zero-dependency default: building one and a whole run's setup
    modules import no torch (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; import krum_mpi.run.train, krum_mpi.cli; from krum_mpi import models; "
            "m = models.make({'name': 'mlp', 'hidden': [5]}, 4, 3); "
            "row = np.empty(m.n_params, np.float32); "
            "m.gradient_into(m.init(np.random.default_rng(0)), np.ones((2, 4), np.float32), np.array([0, 2]), row); "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_torch_model_without_torch_is_one_clear_line():
    """Where PyTorch is not installed (simulated: the import of torch fails), a torch model asks for
    the extra in one line."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "from krum_mpi import models\nfrom krum_mpi.errors import ConfigError\n"
            "try:\n    models.make({'name': 'mnist-cnn'}, 784, 10)\n"
            "except ConfigError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert "needs PyTorch" in line and "pip install 'krum-mpi[torch]'" in line and "\n" not in line
