"""``shard-target``: honest-looking in every coordinate block but one, a strong attack in that one."""
import numpy as np
import pytest

from krum_mpi import attacks
from krum_mpi.parallel.sharded import block_bounds

HONEST = np.random.default_rng(5).normal(size=(14, 23)).astype(np.float32)   # 23: uneven blocks


def make(**params):
    return attacks.make("shard-target", 20, 6, 6, **params)


def test_colluding_rows_are_their_own_gradient_outside_the_target_block():
    own = HONEST[:6]   # the colluding model: the Byzantine workers' own honest rows
    out = make(blocks=4).craft(own, 6, None)
    lo, hi = block_bounds(23, 4)[3:5]   # widths 6, 6, 6, 5: the last block is 18..22
    assert (lo, hi) == (18, 23)
    np.testing.assert_array_equal(out[:, :lo], own[:, :lo])
    mu = own[:, lo:].astype(np.float64).mean(axis=0)
    sigma = own[:, lo:].astype(np.float64).std(axis=0, ddof=1)
    z = attacks.alie_z(20, 6)
    expected = (mu - z * sigma).astype(np.float32)
    for row in out:   # every Byzantine row sends the same ALIE point there
        np.testing.assert_array_equal(row[lo:], expected)
    assert not np.allclose(out[:, lo:], own[:, lo:])


def test_mean_cover_and_sign_flip_in_a_chosen_block():
    out = make(blocks=3, target=1, cover="mean", strong="sign-flip", scale=4.0).craft(HONEST, 6, None)
    lo, hi = block_bounds(23, 3)[1:3]   # widths 8, 8, 7: block 1 is 8..15
    assert (lo, hi) == (8, 16)
    mean = HONEST.astype(np.float64).mean(axis=0).astype(np.float32)
    outside = np.r_[0:lo, hi:23]
    np.testing.assert_array_equal(out[:, outside], np.broadcast_to(mean[outside], (6, outside.size)))
    np.testing.assert_array_equal(out[:, lo:hi], -4.0 * HONEST[:6, lo:hi])


@pytest.mark.parametrize("blocks, target", [(4, -1), (3, 0), (5, 2), (1, 0)])
def test_block_by_block_crafting_gives_the_whole_rows_values(blocks, target):
    """The sharded placement's omniscient adversary crafts each rank's columns alone, told where they lie."""
    attack = make(blocks=blocks, target=target, cover="mean")
    whole = attack.craft(HONEST, 6, None)
    for ranks in (1, 2, 3, 4):   # the placement's blocks need not be the attack's
        bounds = block_bounds(23, ranks)
        parts = [attack.craft(HONEST[:, lo:hi], 6, None, columns=(int(lo), 23))
                 for lo, hi in zip(bounds, bounds[1:])]
        np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)


@pytest.mark.parametrize("params, words", [
    ({"blocks": 0}, "blocks = 0 must be >= 1"), ({"blocks": 3, "target": 3}, "target = 3 is not a block of 3"),
    ({"strong": "gaussian"}, "strong must be one of alie, sign-flip"), ({"cover": "zero"}, "cover must be one of own, mean"),
    ({"width": 2}, "has no parameter 'width'")])
def test_bad_parameters_are_one_line(params, words):
    with pytest.raises(ValueError, match=words):
        make(**params)


def test_more_blocks_than_coordinates_is_refused():
    with pytest.raises(ValueError, match="set attack.blocks <= the number of parameters"):
        make(blocks=30).craft(HONEST, 6, None)
