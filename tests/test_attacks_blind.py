"""The ``blind`` attack: one huge finite row plus crafted vectors, against values worked out by hand.

Honest input H = [[1, 2], [3, 6], [5, 10]]: mean mu = (3, 6). d = 2: the smallest power of two M
with 2 M^2 > 3.4028235e38 = (2 - 2^-23) 2^127 is 2^64 (2 * 2^126 = 2^127 is still below it).
"""
import json

import h5py
import numpy as np
import pytest

from krum_mpi import attacks
from krum_mpi.attacks.blind import FLOAT32_MAX, blinding_magnitude

H = np.array([[1, 2], [3, 6], [5, 10]], dtype=np.float32)


def craft(n_byzantine=3, honest=H, **params):
    return attacks.make("blind", 20, n_byzantine, 6, **params).craft(honest, n_byzantine, None)


def test_default_rows_are_the_blinding_row_then_minus_the_honest_mean():
    out = craft()
    assert out.dtype == np.float32 and out.shape == (3, 2) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, [[2.0 ** 64, 2.0 ** 64], [-3, -6], [-3, -6]])


@pytest.mark.parametrize("params, rows", [
    ({"scale": 2.0}, [[2.0 ** 64] * 2, [-6, -12], [-6, -12]]),
    ({"scale": 0.0}, [[2.0 ** 64] * 2, [0, 0], [0, 0]]),
    ({"crafted": "zero"}, [[2.0 ** 64] * 2, [0, 0], [0, 0]]),
    ({"crafted": -1000.0, "magnitude": 1e12}, [[1e12, 1e12], [-1000, -1000], [-1000, -1000]]),
    ({"crafted": 7}, [[2.0 ** 64] * 2, [7, 7], [7, 7]]),
    ({"blinder": "last"}, [[-3, -6], [-3, -6], [2.0 ** 64] * 2]),
    ({"magnitude": -2.5}, [[-2.5, -2.5], [-3, -6], [-3, -6]]),
    ({"magnitude": 3.4028235e38}, [[FLOAT32_MAX] * 2, [-3, -6], [-3, -6]]),
])
def test_parameters_give_the_hand_computed_rows(params, rows):
    np.testing.assert_array_equal(craft(**params), np.array(rows, dtype=np.float32))


def test_nan_magnitude_makes_only_the_blinding_row_nan():
    attack = attacks.make("blind", 20, 3, 6, magnitude="nan")
    out = attack.craft(H, 3, None)
    assert np.isnan(out[0]).all()
    np.testing.assert_array_equal(out[1:], [[-3, -6], [-3, -6]])
    assert attack.kind == "nonfinite" and attacks.make("blind", 20, 3, 6).kind == "gradient"


def test_a_single_byzantine_worker_sends_the_blinding_row():
    np.testing.assert_array_equal(craft(n_byzantine=1), [[2.0 ** 64, 2.0 ** 64]])
    np.testing.assert_array_equal(craft(n_byzantine=1, blinder="last"), [[2.0 ** 64, 2.0 ** 64]])


@pytest.mark.parametrize("d, exponent", [(1, 64), (2, 64), (3, 64), (4, 63), (1622, 59), (20_000, 57),
                                         (10_000_000, 53)])
def test_auto_magnitude_is_the_smallest_power_of_two_whose_squares_overflow(d, exponent):
    m = blinding_magnitude(d)
    assert m == 2.0 ** exponent
    assert d * m * m > FLOAT32_MAX >= d * (m / 2) ** 2     # smallest: half of it does not overflow
    row = craft(n_byzantine=1, honest=np.zeros((2, d), dtype=np.float32))[0]
    assert np.isfinite(row).all() and (row == np.float32(m)).all()
    with np.errstate(over="ignore"):
        assert np.isinf(np.sum(row * row, dtype=np.float32))     # a float32 sum of the squares overflows
    if d >= 4:
        assert np.isfinite(np.float32(m) * np.float32(m))       # every single square stays finite


def test_the_blinding_row_ruins_a_plain_float32_squared_norm_but_not_float64():
    row = craft(honest=np.ones((3, 1622), dtype=np.float32))[0]
    with np.errstate(over="ignore"):
        assert np.isinf(row @ row)
    assert np.isfinite(row.astype(np.float64) @ row.astype(np.float64))


def test_colluders_craft_from_their_own_gradients():
    """Colluding model: ``honest`` holds the Byzantine workers' own gradients, and every member
    computes the same rows; each keeps its slice (row 0 goes to the first Byzantine worker)."""
    own = np.array([[2, 4], [4, 8]], dtype=np.float32)
    out = attacks.make("blind", 20, 2, 6, magnitude=1e12).craft(own, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(out, np.array([[1e12, 1e12], [-3, -6]], dtype=np.float32))


@pytest.mark.parametrize("byz, params, message", [
    (0, {}, "blind needs n_byzantine >= 1"),
    (3, {"magnitude": 0}, "magnitude = 0 must satisfy 0 < |magnitude| <= 3.4028235e+38"),
    (3, {"magnitude": 3.5e38}, "magnitude = 3.5e+38 must satisfy"),
    (3, {"magnitude": float("inf")}, "magnitude must be a finite number"),
    (3, {"magnitude": "huge"}, "magnitude must be 'auto' or 'nan' or a number"),
    (3, {"magnitude": True}, "magnitude must be a finite number"),
    (3, {"crafted": "mean"}, "crafted must be 'negative-mean' or 'zero' or a number, got 'mean'"),
    (3, {"crafted": 1e39}, "crafted = 1e+39 is beyond float32"),
    (3, {"crafted": float("nan")}, "crafted must be a finite number"),
    (3, {"scale": -1}, "scale = -1 must be >= 0"),
    (3, {"blinder": "middle"}, "blinder must be 'first' or 'last', got 'middle'"),
    (3, {"lambda": 1.0},
     "attack 'blind' has no parameter 'lambda' (its parameters: blinder, crafted, magnitude, scale)"),
])
def test_bad_parameters_give_one_line_errors(byz, params, message):
    with pytest.raises(ValueError) as err:
        attacks.make("blind", 20, byz, 6, **params)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_params_are_recorded_with_their_defaults():
    assert attacks.make("blind", 20, 6, 6).params == {"magnitude": "auto", "crafted": "negative-mean",
                                                        "scale": 1.0, "blinder": "first"}


def test_cli_rejects_a_bad_magnitude_in_one_line(spambase_file, tmp_path):
    from conftest import REPO, run_cli
    out = tmp_path / "r.h5"
    proc = run_cli(["run", "--from-study", REPO / "jobs" / "attack-table.toml", "--cell", "attack.name=blind",
                    "--cell", "aggregator.name=krum", "--out", out, "--set", "attack.magnitude=1e40"], timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("krum-mpi: error: attack: magnitude = 1e+40"), proc.stderr
    assert not out.exists()


# ---- through real mpiexec: both adversary models deliver one blinding row and b - 1 crafted rows ------

@pytest.mark.mpi
@pytest.mark.parametrize("adversary", ["omniscient", "colluding"])
def test_one_step_of_average_sees_one_blinding_row_and_the_crafted_rows(spambase_file, tmp_path, adversary):
    """One SGD step under ``average``: theta_1 = theta_0 - lr (sum of the 20 rows) / 20. The blinding
    row (1e12) and five crafted rows (1e9 each) dwarf theta_0 and the honest gradients, so every
    parameter is -0.05 (1e12 + 5e9) / 20 = -2.5125e9 to float32 precision: exactly one blinding row
    and exactly five crafted ones reached the rule (two blinding rows would give -5.0e9)."""
    from conftest import REPO, run_cli
    out = tmp_path / f"{adversary}.h5"
    proc = run_cli(["run", "--from-study", REPO / "jobs" / "attack-table.toml", "--cell", "attack.name=blind",
                    "--cell", "aggregator.name=average", "--out", out, "--quiet", "--set", "run.steps=1", "--set", "run.eval_every=1", "--set", f"attack.adversary={adversary}",
                    "--set", "attack.magnitude=1e12", "--set", "attack.crafted=1e9"], ranks=4, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as h5:
        assert h5.attrs["adversary"] == adversary
        assert json.loads(h5.attrs["config"])["attack"]["name"] == "blind"
        params = h5["checkpoint/params"][()]
        byz = h5["selection/byzantine"][()]
    assert byz.sum() == 6
    np.testing.assert_allclose(params, -0.05 * (1e12 + 5e9) / 20, rtol=1e-5)
