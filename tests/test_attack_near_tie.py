"""The ``near-tie`` attack: the documented rows (one-ulp clones, mirror pairs), block-by-block
crafting equal to whole rows, validation, and exact selections under it (fractions judge)."""
import numpy as np
import pytest

from krum_mpi import aggregators, attacks
from test_certified import exact_distances, ref_bulyan_chosen, ref_lowest, ref_mda, ref_scores

UP, DOWN = np.float32(np.inf), np.float32(-np.inf)


def honest_rows(h=12, d=50, seed=0):
    return np.random.default_rng(seed).standard_normal((h, d)).astype(np.float32)


def test_clone_rows_move_one_entry_each_by_one_ulp():
    honest = honest_rows()
    out = attacks.make("near-tie", 16, 4, 4, worker=2, stride=7).craft(honest, 4)
    assert out.shape == (4, 50) and out.dtype == np.float32
    for k in range(4):
        want = honest[2].copy()
        want[k * 7 % 50] = np.nextafter(want[k * 7 % 50], UP)
        np.testing.assert_array_equal(out[k], want)
        assert np.count_nonzero(out[k] != honest[2]) == 1


def test_mirror_rows_come_in_pairs_one_ulp_up_and_down():
    honest = honest_rows()
    out = attacks.make("near-tie", 16, 5, 5, variant="mirror").craft(honest, 5)
    for k in range(5):
        c = (k // 2) * 7919 % 50
        want = honest[0].copy()
        want[c] = np.nextafter(want[c], UP if k % 2 == 0 else DOWN)
        np.testing.assert_array_equal(out[k], want)
    # a pair is mirrored around the honest row: equally far from it, exactly
    D = exact_distances(np.vstack([honest[:1], out[:2]]))
    assert D[0][1] == D[0][2] > 0


def test_zero_entries_move_to_the_smallest_subnormals():
    honest = np.zeros((3, 4), np.float32)
    out = attacks.make("near-tie", 5, 2, 2, variant="mirror", stride=1).craft(honest, 2)
    assert out[0, 0] == np.float32(2.0**-149) and out[1, 0] == -np.float32(2.0**-149)


@pytest.mark.parametrize("variant", ["clone", "mirror"])
def test_block_by_block_crafting_equals_whole_rows(variant):
    honest = honest_rows(d=37)
    attack = attacks.make("near-tie", 16, 6, 6, variant=variant, stride=5)
    whole = attack.craft(honest, 6)
    cuts = [0, 9, 10, 30, 37]
    blocks = [attack.craft(honest[:, a:b], 6, columns=(a, 37)) for a, b in zip(cuts[:-1], cuts[1:])]
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), whole)


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(ValueError, match="variant must be one of clone, mirror"):
        attacks.make("near-tie", 10, 2, 2, variant="twins")
    with pytest.raises(ValueError, match="worker = 8 but there are only 8 honest workers"):
        attacks.make("near-tie", 10, 2, 2, worker=8)
    with pytest.raises(ValueError, match="stride = 0 must be >= 1"):
        attacks.make("near-tie", 10, 2, 2, stride=0)


@pytest.mark.usefixtures("kernels")
@pytest.mark.parametrize("variant", ["clone", "mirror"])
@pytest.mark.parametrize("n, f, d", [(11, 2, 40), (16, 3, 300), (20, 4, 64)])
def test_selections_under_the_attack_are_the_exact_ones(variant, n, f, d):
    honest = honest_rows(n - f, d, seed=n)
    crafted = attacks.make("near-tie", n, f, f, variant=variant, stride=13).craft(honest, f)
    X = np.vstack([honest, crafted])
    D = exact_distances(X)
    scores = ref_scores(D, range(n), n - f - 2)
    krum = aggregators.make("krum", n, f)(X)
    assert krum.selected.tolist() == ref_lowest(scores, 1)
    assert sorted(aggregators.make("multi-krum", n, f)(X).selected.tolist()) == sorted(ref_lowest(scores, n - f))
    if n >= 4 * f + 3:
        assert aggregators.make("bulyan", n, f)(X).selected.tolist() == ref_bulyan_chosen(D, n, f)
    if n <= 11:
        assert sorted(aggregators.make("mda", n, f)(X).selected.tolist()) == ref_mda(D, n, f)
