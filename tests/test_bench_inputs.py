"""``krum-mpi bench aggregate --input``: the crafted input families, the crafted-over-honest ratio
per rule with the recomputed counts, and its round trip through every encoding of the bench file."""
import json
from fractions import Fraction

import numpy as np
import pytest

from conftest import run_cli
from krum_mpi.bench import aggregate as bench, schema as benchfile
from krum_mpi.bench.measure import INPUTS, craft_input, random_input

ARGS = ["aggregate", "--rules", "krum,median", "--n", "16", "--d", "10000", "--repeats", "1", "--warmup", "0",
        "--pairloop-n", "0", "--no-memory", "--quiet"]


def exact_sq(a, b):
    return sum((Fraction(float(x)) - Fraction(float(y))) ** 2 for x, y in zip(a, b))


def test_near_tie_and_mirror_inputs_are_ulp_clones_of_row_0():
    for family, directions in (("near-tie", [1, 1, 1]), ("mirror", [1, -1, 1])):
        X = craft_input(random_input(np, 9, 40, 3), family, 3, 3)
        base = random_input(np, 9, 40, 3)
        np.testing.assert_array_equal(X[:6], base[:6])
        for k, sign in enumerate(directions):
            moved = np.flatnonzero(X[6 + k] != base[0])
            assert moved.size == 1
            c = moved[0]
            assert X[6 + k, c] == np.nextafter(base[0, c], np.float32(sign * np.inf))


def test_simplex_rows_are_all_exactly_equally_far_apart():
    X = craft_input(random_input(np, 7, 30, 1), "simplex", 2, 1)
    distances = {exact_sq(X[i], X[j]) for i in range(7) for j in range(i + 1, 7)}
    assert distances == {Fraction(1, 128)}


def test_sparse_rows_are_sparse_signs():
    X = craft_input(random_input(np, 5, 4000, 2), "sparse", 1, 2)
    assert set(np.unique(X).tolist()) == {-1.0, 0.0, 1.0}
    assert (np.count_nonzero(X, axis=1) == 4).all()    # 1e-3 of 4000


@pytest.mark.parametrize("suffix", [".json", ".csv", ".h5"])
def test_crafted_rows_carry_their_ratio_to_the_honest_time(tmp_path, capsys, suffix):
    out = tmp_path / f"bench{suffix}"
    assert bench.main(ARGS + ["--input", "near-tie", "--out", str(out)]) == 0
    rows = benchfile.read(out)["results"]
    honest = {r["rule"]: r for r in rows if r["input"] == "gaussian"}
    crafted = {r["rule"]: r for r in rows if r["input"] == "near-tie"}
    assert set(honest) == set(crafted) == {"krum", "median"}
    for rule, row in crafted.items():
        assert row["x_honest"] == pytest.approx(row["min_ms"] / honest[rule]["min_ms"])
        assert honest[rule]["x_honest"] is None
    assert crafted["krum"]["recomputed"] > 0 and honest["krum"]["recomputed"] == 0
    printed = capsys.readouterr().out
    assert "krum [near-tie]" in printed and "of honest (recomputed 0 -> " in printed


def test_version_1_files_still_read(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(ARGS + ["--out", str(out)]) == 0
    data = json.loads(out.read_text())
    data["format_version"] = 1
    for row in data["results"]:
        del row["x_honest"]
    out.write_text(json.dumps(data))
    assert all(r["x_honest"] is None for r in benchfile.read(out)["results"])


def test_unknown_input_family_is_a_one_line_error(tmp_path):
    proc = run_cli(["bench"] + ARGS + ["--input", "lattice", "--out", str(tmp_path / "b.json")], timeout=120)
    assert proc.returncode == 2 and "--input" in proc.stderr and "near-tie" in proc.stderr


def test_every_family_runs():
    for family in INPUTS:
        X = craft_input(random_input(np, 6, 50, 0), family, 1, 0)
        assert X.shape == (6, 50) and X.dtype == np.float32 and np.isfinite(X).all()
