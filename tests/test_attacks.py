"""Attacks: outputs against values worked out by hand, determinism, validation, the line search.

The small input used throughout is three honest gradients in two dimensions,

    H = [[1, 2], [3, 6], [5, 10]]:  mean mu = (3, 6), sample std (ddof = 1) sigma = (2, 4),

so every expected number below can be checked with pencil and paper.
"""
import math

import numpy as np
import pytest

from krum_mpi import attacks

H = np.array([[1, 2], [3, 6], [5, 10]], dtype=np.float32)
ALL = attacks.names()


def rng(seed=0):
    return np.random.default_rng(seed)


def mean_rule(X):
    return X.mean(axis=0)


def median_rule(X):
    return np.median(X, axis=0)


def krum_reference(f):
    """Krum written out plainly (NIPS 2017): lowest sum of squared distances to the n - f - 2 closest."""
    def rule(X):
        X = np.asarray(X, dtype=np.float64)
        n = len(X)
        d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
        scores = [np.sort(np.delete(d2[i], i))[: n - f - 2].sum() for i in range(n)]
        return X[int(np.argmin(scores))]
    return rule


def craft(name, honest=H, n_workers=5, n_byzantine=2, f=2, aggregate=mean_rule, seed=0, **params):
    attack = attacks.make(name, n_workers, n_byzantine, f, **params)
    return attack, attack.craft(honest, n_byzantine, rng(seed), aggregate=aggregate)


# ---- registry ---------------------------------------------------------------------------------------

def test_registry_lists_the_catalogue_of_issue_4():
    expected = {"none", "gaussian", "omniscient", "sign-flip", "label-flip", "alie", "ipm", "alie-opt",
                "ipm-opt", "mimic", "nan", "inf", "zero", "blind", "shard-target", "near-tie", "min-max", "min-sum",
                "agr-tailored"}
    assert set(ALL) == expected
    for name in ALL:
        assert attacks.get(name).name == name


def test_unknown_attack_lists_the_known_names():
    expected = r"unknown attack 'alie2': choose one of agr-tailored, alie, alie-opt, "
    with pytest.raises(ValueError, match=expected) as err:
        attacks.make("alie2", 20, 6, 6)
    assert "\n" not in str(err.value)


# ---- values by hand ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, params, row", [
    ("omniscient", {}, [-300.0, -600.0]),                      # -100 * mu
    ("omniscient", {"scale": 2.0}, [-6.0, -12.0]),
    ("ipm", {}, [-0.3, -0.6]),                                 # -0.1 * mu
    ("ipm", {"epsilon": 2.0}, [-6.0, -12.0]),
    ("alie", {"z": 0.5}, [2.0, 4.0]),                          # mu - 0.5 * sigma
    ("alie", {"z": 1.5}, [0.0, 0.0]),                          # the authors' code's z
    # n = 5, m = 2: s = floor(3.5) - 2 = 1; paper z = PhiInv(4/5) = 0.841621
    ("alie", {}, [3 - 2 * 0.8416212335729143, 6 - 4 * 0.8416212335729143]),
    # other formula: z = PhiInv((5 - 2 - 1) / (5 - 2)) = PhiInv(2/3) = 0.430727
    ("alie", {"z_formula": "honest"}, [3 - 2 * 0.4307272992954576, 6 - 4 * 0.4307272992954576]),
    ("mimic", {}, [1.0, 2.0]),
    ("mimic", {"worker": 2}, [5.0, 10.0]),
    ("zero", {}, [0.0, 0.0]),
])
def test_identical_rows_match_hand_values(name, params, row):
    _, out = craft(name, **params)
    assert out.dtype == np.float32 and out.shape == (2, 2) and out.flags.c_contiguous
    np.testing.assert_allclose(out, [row, row], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n, m, paper, honest", [(20, 6, 0.674, 0.366), (25, 5, 0.468, 0.253)])
def test_alie_z_formulas_give_the_published_values(n, m, paper, honest):
    assert attacks.alie_z(n, m) == pytest.approx(paper, abs=5e-4)
    assert attacks.alie_z(n, m, "honest") == pytest.approx(honest, abs=5e-4)
    assert attacks.make("alie", n, m, m).z == pytest.approx(paper, abs=5e-4)


def test_sign_flip_flips_each_gradient_in_turn():
    _, out = craft("sign-flip", n_workers=7, n_byzantine=4, f=2)
    np.testing.assert_array_equal(out, [[-1, -2], [-3, -6], [-5, -10], [-1, -2]])
    _, out = craft("sign-flip", scale=0.5)
    np.testing.assert_array_equal(out, [[-0.5, -1], [-1.5, -3]])


def test_nonfinite_attacks():
    _, out = craft("nan")
    assert out.shape == (2, 2) and np.isnan(out).all()
    attack, out = craft("inf")
    assert attack.kind == "nonfinite" and np.isposinf(out).all()


def test_gaussian_is_sigma_times_the_rng_normals():
    _, out = craft("gaussian", sigma=3.0, seed=7)
    expected = 3.0 * np.random.default_rng(7).standard_normal((2, 2), dtype=np.float32)
    np.testing.assert_array_equal(out, expected)
    _, out = craft("gaussian", sigma=0.0)
    np.testing.assert_array_equal(out, np.zeros((2, 2)))


def test_gaussian_has_the_krum_paper_spread():
    attack = attacks.make("gaussian", 20, 6, 6)
    out = attack.craft(np.zeros((14, 20_000), np.float32), 6, rng(1))
    assert attack.sigma == 200.0
    assert abs(out.mean()) < 2.0 and out.std() == pytest.approx(200.0, rel=0.01)
    assert not np.array_equal(out[0], out[1])        # independent rows


def test_label_flip_maps_labels_and_passes_poisoned_gradients_through():
    attack = attacks.make("label-flip", 5, 2, 2)
    assert attack.kind == "data"
    np.testing.assert_array_equal(attack.label_map(np.array([0, 1, 2, 9]), 10), [9, 8, 7, 0])
    np.testing.assert_array_equal(attack.label_map(np.array([0, 1, 1]), 2), [1, 0, 0])
    np.testing.assert_array_equal(attack.craft(H[:2], 2, rng()), H[:2])
    with pytest.raises(ValueError, match="data attack"):
        attack.craft(H, 2, rng())


def test_other_attacks_leave_labels_alone():
    y = np.array([0, 1, 2])
    assert attacks.make("alie", 5, 2, 2).label_map(y, 3) is y


def test_none_crafts_nothing():
    attack = attacks.make("none", 20, 0, 6)
    assert attack.kind == "none" and attack.craft(H, 0, rng()).shape == (0, 2)


@pytest.mark.parametrize("name", [n for n in ALL if n != "none"])
def test_every_attack_returns_float32_of_the_asked_shape(name):
    honest = H[:2].astype(np.float64) if name == "label-flip" else H.astype(np.float64)
    out = attacks.make(name, 5, 2, 2).craft(honest, 2, rng(), aggregate=mean_rule)
    assert out.dtype == np.float32 and out.shape == (2, 2) and out.flags.c_contiguous
    assert attacks.make(name, 5, 2, 2).craft(honest, 0, rng(), aggregate=mean_rule).shape == (0, 2)


@pytest.mark.parametrize("name", [n for n in ALL if n not in ("none", "label-flip")])
def test_same_rng_same_vectors(name):
    g = np.random.default_rng(3).normal(size=(14, 30)).astype(np.float32)
    a = attacks.make(name, 20, 6, 6).craft(g, 6, rng(11), aggregate=krum_reference(6))
    b = attacks.make(name, 20, 6, 6).craft(g, 6, rng(11), aggregate=krum_reference(6))
    np.testing.assert_array_equal(a, b)


# ---- the line-search attacks ------------------------------------------------------------------------

def test_alie_opt_against_the_mean_takes_the_largest_z():
    # mean of 3 honest + 2 copies of mu - z sigma is mu - 0.4 z sigma: damage grows with z.
    attack, out = craft("alie-opt", grid=[0.0, 0.5, 1.0])
    assert attack.last_choice == 1.0
    np.testing.assert_allclose(out, [[1, 2], [1, 2]])


def test_alie_opt_against_the_median_stops_where_the_median_stops_moving():
    # Per coordinate the median of {1, 3, 5, 3 - 2z, 3 - 2z} is 3 - 2z for z <= 1 and 1 after:
    # damage = min(z, 1) * sqrt(20), flat from z = 1 on, so the tie goes to the first value, 1.0.
    attack, out = craft("alie-opt", aggregate=median_rule, grid=[0.0, 0.5, 1.0, 1.5, 2.0])
    assert attack.last_choice == 1.0
    np.testing.assert_allclose(out, [[1, 2], [1, 2]])


def test_ipm_opt_against_the_mean_takes_the_largest_epsilon():
    # mean = mu (3 - 2 eps) / 5: damage (2 + 2 eps) / 5 * |mu| grows with eps.
    attack, out = craft("ipm-opt", grid=[0.1, 0.5, 2.0])
    assert attack.last_choice == 2.0
    np.testing.assert_allclose(out, [[-6, -12], [-6, -12]])


def damage(aggregate, honest, byzantine, direction=None, inner=False):
    """||aggregate - mu||, or (aggregate - mu) . direction when a direction is given, or
    -aggregate . mu / ||mu|| with inner."""
    vector = aggregate(np.concatenate([honest, byzantine]))
    mu = honest.mean(0, dtype=np.float64)
    if inner:
        return -float(np.asarray(getattr(vector, "vector", vector), np.float64) @ mu) / float(np.linalg.norm(mu))
    shift = np.asarray(getattr(vector, "vector", vector), np.float64) - mu
    return float(np.linalg.norm(shift)) if direction is None else float(shift @ direction)


def rules_for_the_search():
    from krum_mpi import aggregators

    rules = {"mean": lambda n, f: mean_rule, "krum (reference)": lambda n, f: krum_reference(f)}
    for name in ("average", "krum", "multi-krum"):
        rules[f"aggregators.{name}"] = (lambda name: lambda n, f: aggregators.make(name, n, f))(name)
    return rules


@pytest.mark.parametrize("rule", sorted(rules_for_the_search()))
@pytest.mark.parametrize("name, fixed, key", [("alie-opt", "alie", "z"), ("ipm-opt", "ipm", "epsilon")])
@pytest.mark.parametrize("objective", ["inner", "distance", "along"])
def test_opt_attacks_do_at_least_the_damage_of_every_fixed_grid_value(rule, name, fixed, key, objective):
    n, f = 20, 6
    aggregate = rules_for_the_search()[rule](n, f)
    g = np.random.default_rng(5)
    honest = (g.normal(size=40) + g.normal(size=(n - f, 40))).astype(np.float32)
    mu = honest.mean(0, dtype=np.float64)
    direction = -(honest.std(0, ddof=1, dtype=np.float64) if name == "alie-opt" else mu)
    direction = direction / np.linalg.norm(direction) if objective == "along" else None
    opt = attacks.make(name, n, f, f, objective=objective)
    inner = objective == "inner"
    best = damage(aggregate, honest, opt.craft(honest, f, rng(), aggregate=aggregate), direction, inner)
    fixed_damages = [damage(aggregate, honest, attacks.make(fixed, n, f, f, **{key: v}).craft(honest, f, rng()),
                            direction, inner) for v in opt.grid]
    assert best >= max(fixed_damages) - 1e-9
    assert best > (-float(np.linalg.norm(mu)) - 1e-6 if inner else 0)   # inner: at worst the honest mean


def test_alie_opt_beats_the_formula_z_against_krum():
    # The point of the search: against Krum the z of the formula is not the most damaging one.
    n, f = 20, 6
    rule = krum_reference(f)
    g = np.random.default_rng(2)
    honest = (g.normal(size=200) + g.normal(size=(n - f, 200))).astype(np.float32)
    formula = damage(rule, honest, attacks.make("alie", n, f, f).craft(honest, f, rng()))
    opt = attacks.make("alie-opt", n, f, f)
    best = damage(rule, honest, opt.craft(honest, f, rng(), aggregate=rule))
    assert best > formula and opt.last_choice > attacks.alie_z(n, f)


def test_along_objective_against_the_mean_takes_the_largest_z():
    # (mean - mu) . (-sigma / |sigma|) = 0.4 z |sigma|: grows with z, as the distance does.
    attack, out = craft("alie-opt", grid=[0.0, 0.5, 1.0], objective="along")
    assert attack.last_choice == 1.0
    np.testing.assert_allclose(out, [[1, 2], [1, 2]])


def test_against_krum_the_distance_can_reward_being_ignored_and_along_does_not():
    # Heavy-tailed honest gradients, as minibatch gradients of a classifier: 11 near zero, 3 outliers.
    # Krum's honest pick (a near-zero one) is already far from mu, so the distance objective prefers
    # a z that Krum ignores; "along" prefers a z whose vector Krum selects.
    g = np.random.default_rng(0)
    honest = np.concatenate([0.05 * g.normal(size=(11, 50)), 1 + g.normal(size=(3, 50))]).astype(np.float32)
    rule = krum_reference(6)
    chosen = {}
    for objective in ("distance", "along"):
        attack = attacks.make("alie-opt", 20, 6, 6, objective=objective)
        byz = attack.craft(honest, 6, rng(), aggregate=rule)
        picked = rule(np.concatenate([honest, byz]))
        chosen[objective] = bool(np.allclose(picked, byz[0]))
    assert chosen == {"distance": False, "along": True}


def test_opt_attacks_need_the_rule():
    with pytest.raises(ValueError, match="needs aggregate"):
        attacks.make("ipm-opt", 5, 2, 2).craft(H, 2, rng())


def test_colluding_search_stands_in_for_unseen_honest_gradients():
    # The adversary sees only its own 2 gradients but the rule aggregates 5 vectors: it samples
    # 3 stand-ins from N(mu, sigma^2) with rng, so the result is deterministic given rng.
    own = H[:2]
    seen = []
    def spy(X):
        seen.append(X.shape)
        return X.mean(0)
    a = attacks.make("alie-opt", 5, 2, 2, grid=[0.0, 1.0]).craft(own, 2, rng(4), aggregate=spy)
    b = attacks.make("alie-opt", 5, 2, 2, grid=[0.0, 1.0]).craft(own, 2, rng(4), aggregate=mean_rule)
    assert seen == [(5, 2), (5, 2)]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="rng"):
        attacks.make("alie-opt", 5, 2, 2).craft(own, 2, None, aggregate=mean_rule)


# ---- validation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, n, byz, f, params, message", [
    ("alie", 20, 6, 0, {}, "alie needs f >= 1"),
    ("alie", 20, 0, 6, {}, "alie needs f >= 1 and n_byzantine >= 1"),
    ("alie-opt", 20, 6, 0, {}, "alie-opt needs f >= 1"),
    ("alie", 20, 6, 6, {"z": -1.0}, "z = -1.0 must be >= 0"),
    ("alie", 20, 6, 6, {"z_formula": "book"}, "z_formula must be one of paper, honest"),
    ("alie", 20, 11, 11, {}, "already form a majority"),
    ("ipm", 20, 6, 6, {"epsilon": -0.1}, "epsilon = -0.1 must be >= 0"),
    ("ipm", 20, 6, 6, {"epsilon": "big"}, "epsilon must be a finite number"),
    ("ipm-opt", 20, 6, 6, {"grid": [0.1, -1]}, "epsilon grid value = -1"),
    ("ipm-opt", 20, 6, 6, {"grid": []}, "at least one value"),
    ("alie-opt", 20, 6, 6, {"objective": "far"}, "objective must be one of inner, distance, along"),
    ("ipm-opt", 20, 6, 6, {"grid": 0.5}, "grid must be a list"),
    ("gaussian", 20, 6, 6, {"sigma": -1}, "sigma = -1 must be >= 0"),
    ("gaussian", 20, 6, 6, {"sigma": float("nan")}, "sigma must be a finite number"),
    ("gaussian", 20, 6, 6, {"sgma": 1.0}, "attack 'gaussian' has no parameter 'sgma' (its parameters: sigma)"),
    ("zero", 20, 6, 6, {"scale": 1.0}, "attack 'zero' has no parameter 'scale' (its parameters: none)"),
    ("mimic", 20, 6, 6, {"worker": 14}, "only 14 honest workers"),
    ("none", 20, 6, 6, {}, "attack 'none' with n_byzantine = 6"),
    ("gaussian", 20, 20, 6, {}, "leaves no honest worker"),
    ("gaussian", 20, 6.5, 6, {}, "n_byzantine must be an integer"),
])
def test_bad_parameters_give_one_line_errors(name, n, byz, f, params, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        attacks.make(name, n, byz, f, **params)
    assert "\n" not in str(err.value)


def test_alie_z_fixed_overrides_the_formula():
    assert attacks.make("alie", 20, 6, 6, z=1.5).z == 1.5
    assert math.isclose(attacks.make("alie", 20, 6, 6, z_formula="honest").z, 0.3661, abs_tol=1e-4)


def test_params_are_recorded_with_their_defaults():
    assert attacks.make("ipm", 20, 6, 6).params == {"epsilon": 0.1}
    assert attacks.make("omniscient", 20, 6, 6).params == {"scale": 100.0}
    assert attacks.make("alie", 20, 6, 6).params == {"z": None, "z_formula": "paper"}


# ---- the honest moments: chunked, the same values as NumPy's mean and std on the whole array -------

@pytest.mark.parametrize("h", [1, 2, 16])
def test_honest_moments_equal_numpy_mean_and_std_bitwise_over_chunks(h):
    """Columns over several chunks (and a short last one), magnitudes from 1e-30 to 1e30: the
    adversary's statistics are NumPy's, bit for bit, whatever the chunking."""
    from krum_mpi.attacks.base import MOMENT_CHUNK, honest_mean, honest_moments, honest_std
    g = np.random.default_rng(h)
    d = 3 * MOMENT_CHUNK + 7
    X = (g.standard_normal((h, d)) * 10.0 ** g.integers(-30, 30, size=(h, d))).astype(np.float32)
    mean = np.mean(X, axis=0, dtype=np.float64)
    std = np.std(X, axis=0, ddof=1, dtype=np.float64) if h > 1 else np.zeros(d)
    both = honest_moments(np, X)
    for got, want in ((honest_mean(np, X), mean), (honest_std(np, X), std), (both[0], mean), (both[1], std)):
        assert got.dtype == np.float64 and got.view(np.uint64).tolist() == want.view(np.uint64).tolist()


def test_honest_moments_run_on_the_strict_array_namespace():
    import array_api_strict as xp
    from krum_mpi.attacks.base import honest_moments
    mean, std = honest_moments(xp, xp.asarray(H))
    assert np.asarray(mean).tolist() == [3.0, 6.0] and np.asarray(std).tolist() == [2.0, 4.0]


# ---- CuPy -------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("name", [n for n in ALL if n not in ("none", "label-flip")])
def test_cupy_matches_numpy(name):
    from krum_mpi.backend import gpu_unavailable_reason
    reason = gpu_unavailable_reason()
    if reason:
        pytest.skip(reason)
    import cupy
    g = np.random.default_rng(3).normal(size=(14, 30)).astype(np.float32)
    expected = attacks.make(name, 20, 6, 6).craft(g, 6, rng(1), aggregate=krum_reference(6))
    got = attacks.make(name, 20, 6, 6).craft(cupy.asarray(g), 6, rng(1),
                                             aggregate=lambda X: cupy.asarray(krum_reference(6)(X.get())))
    assert isinstance(got, cupy.ndarray) and got.dtype == cupy.float32
    np.testing.assert_allclose(got.get(), expected, rtol=1e-5, atol=1e-5)


# ---- through the CLI: bad attack settings stop the run with one line and exit status 2 ------------

@pytest.mark.parametrize("cell, sets, expected", [
    ("gaussian krum", ["attack.name=alie2"], "unknown attack 'alie2'"),
    ("ipm krum", ["attack.epsilon=-0.5"], "epsilon = -0.5 must be >= 0"),
    ("alie krum", ["attack.z_formula=book"], "z_formula must be one of paper, honest"),
    ("alie average", ["workers.byzantine=0", "aggregator.f=0"], "workers.byzantine = 0"),
    ("alie krum", ["aggregator.f=5"], "exceeds the declared aggregator.f = 5"),
    ("gaussian krum", ["workers.byzantine=9", "aggregator.f=9"], "krum"),
])
def test_cli_rejects_bad_attack_settings(cell, sets, expected, spambase_file, tmp_path):
    from conftest import REPO, run_cli
    attack, rule = cell.split()
    args = ["run", "--from-study", REPO / "jobs" / "attack-table.toml", "--cell", f"attack.name={attack}",
            "--cell", f"aggregator.name={rule}", "--out", tmp_path / "r.h5", "--quiet"]
    for s in sets:
        args += ["--set", s]
    proc = run_cli(args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("krum-mpi: error:") and expected in lines[0], proc.stderr
    assert not (tmp_path / "r.h5").exists()


def test_every_attack_is_a_cell_of_the_attack_table():
    """jobs/attack-table.toml runs every attack against average, Krum and Multi-Krum (its cells
    replace the former per-attack presets)."""
    from conftest import REPO
    from krum_mpi.study.plan import make_plan
    from krum_mpi.study.spec import load_spec

    plan = make_plan(load_spec(REPO / "jobs" / "attack-table.toml"), check_models=False)
    cells = {(r.config["attack"]["name"], r.config["aggregator"]["name"]): r.config for r in plan.runs}
    from krum_mpi import aggregators

    for rule in aggregators.names() + ["nnm+krum"]:  # blind: against every rule of the catalogue
        cfg = cells[("blind", rule)]
        assert cfg["aggregator"]["f"] == 6 and cfg["workers"]["byzantine"] == 6
        assert cfg["workers"]["n"] == (27 if rule == "bulyan" else 20)  # Bulyan: n >= 4f + 3
    for attack in ALL:
        for rule in ("average", "krum", "multi-krum"):
            cfg = cells[(attack, rule)]
            assert (cfg["workers"]["n"], cfg["aggregator"]["f"], cfg["run"]["steps"]) == (20, 6, 500)
            assert cfg["workers"]["byzantine"] == (0 if attack == "none" else 6)
