"""Replicated blocks and the sharded Byzantine ranks in one process: the vote (bitwise majority per
value, outvoted values counted against their rank, the layout of blocks over ranks), the
lie-distances recipe at every refinement level, and the corrupt-block recipe."""
import numpy as np
import pytest

from krum_mpi import config
from krum_mpi.aggregators.gram_entries import LocalRows
from krum_mpi.aggregators.certify import exact_to_float
from krum_mpi.parallel import byzantine_ranks, sharded
from krum_mpi.parallel.byzantine_ranks import LIE_EXPONENT, BlockCorruption, DistanceLie
from krum_mpi.parallel.replicas import Vote

CFG = config.load(None, ["run.seed=7", "byzantine_ranks.scale=-4.0", "byzantine_ranks.sigma=1.0"])


def test_layout_spreads_each_blocks_replicas_over_the_ranks():
    vote = Vote(6, 3)
    assert vote.blocks == 2 and list(vote.block_of_rank) == [0, 1, 0, 1, 0, 1]
    assert list(vote.replicas_of(1)) == [1, 3, 5]
    assert list(Vote(6, 1).block_of_rank) == list(range(6))
    uneven = Vote(64, 3)                           # 21 blocks: block 0 on ranks 0, 21, 42 and 63
    assert uneven.blocks == 21 and list(uneven.replicas_of(0)) == [0, 21, 42, 63]
    assert [len(uneven.replicas_of(b)) for b in range(21)] == [4] + [3] * 20


def test_the_majority_outvotes_one_liar_per_block_and_counts_its_values():
    vote = Vote(6, 3)
    honest = np.arange(12, dtype=np.float64).reshape(2, 1, 6)          # (blocks, k = 1, values)
    sent = np.concatenate([honest] * 3)                                  # rank q sends block q % 2's
    sent[2, 0, [1, 4]] = [-1.0, 99.0]                                    # rank 2 (block 0) lies in 2 values
    sent[5, 0, :] = np.nan                                               # rank 5 (block 1) in all 6
    np.testing.assert_array_equal(vote.parts(sent), honest)
    assert list(vote.outvoted) == [0, 0, 2, 0, 0, 6]
    vote.reset()
    assert not vote.outvoted.any()


def test_values_compare_as_bits():
    vote = Vote(3, 3)
    a = np.array([0.0, np.nan, 1.0])
    b = np.array([-0.0, np.nan, 1.0])
    b[1] = np.frombuffer(np.uint64(0x7FF8000000000001).tobytes(), dtype=np.float64)[0]   # another NaN payload
    out = vote.majority(np.stack([a, b, a]), np.arange(3))
    assert out.tobytes() == a.tobytes()
    assert list(vote.outvoted) == [0, 2, 0]     # -0.0 is not 0.0, and a NaN is not another NaN


def test_without_a_majority_the_lowest_rank_is_taken_and_everyone_differing_counted():
    vote = Vote(3, 3)
    out = vote.majority(np.array([[1.0], [2.0], [3.0]]), np.array([0, 1, 2]))
    assert out[0] == 1.0 and list(vote.outvoted) == [0, 1, 1]


def test_four_replicas_of_an_uneven_layout_outvote_one_liar():
    vote = Vote(4, 3)                           # 4 ranks, replicas = 3: one block on all four
    stack = np.array([[1.0], [1.0], [7.0], [1.0]])
    assert vote.parts(stack[:, None, :])[0, 0, 0] == 1.0 and list(vote.outvoted) == [0, 0, 1, 0]


def test_five_replicas_outvote_two_colluding_liars():
    vote = Vote(5, 5)
    stack = np.array([[1.0, 2.0]] * 5)
    stack[[3, 4]] = [9.0, 9.0]                  # two liars sending the same false values
    np.testing.assert_array_equal(vote.majority(stack, np.arange(5)), [1.0, 2.0])
    assert list(vote.outvoted) == [0, 0, 0, 2, 2]


def test_segments_vote_the_parameter_blocks_of_uneven_widths():
    vote = Vote(6, 3)
    widths = np.array([3, 2, 3, 2, 3, 2])
    blocks = [np.float32([1, 2, 3]), np.float32([4, 5])]
    flat = np.concatenate([blocks[q % 2] for q in range(6)])
    flat[3 + 2 + 3 + 1] = 50.0                  # rank 3 (block 1): its second value
    out = vote.segments(flat, widths)
    assert [b.tolist() for b in out] == [[1, 2, 3], [4, 5]] and out[0].dtype == np.float32
    assert list(vote.outvoted) == [0, 0, 0, 1, 0, 0]


def rows(n=8, d=40, seed=3):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_the_lie_is_the_same_at_every_refinement_level():
    lie = DistanceLie(CFG, 2, np.zeros(8, dtype=bool))
    lie.at(5)
    t = lie.target
    assert t == byzantine_ranks.lie_target(7, 2, 5, np.arange(8))          # rank 0 derives it too
    X = rows()
    local = LocalRows(X)
    sq = np.asarray(sharded.sq_distances(X).sq, dtype=np.float64)
    lied = lie.matrix(sq)
    assert not lied[t].any() and not lied[:, t].any()
    others = np.ones(8, dtype=bool)
    others[t] = False
    np.testing.assert_array_equal(lied[np.ix_(others, others)], sq[np.ix_(others, others)] * 2.0 ** LIE_EXPONENT)
    pairs = [(0, 1), (min(t, 3), max(t, 3)) if t != 3 else (3, 4), (t, (t + 1) % 8)]
    values = lie.pairs(pairs, np.stack(local.level_one(pairs)))
    exact = lie.exact(pairs, local.exact(pairs))
    for k, (i, j) in enumerate(pairs):
        if t in (i, j):
            assert values[0, k] == values[1, k] == 0.0 and exact[k] == 0
        else:   # the exact lie is the float lie's value, within its level-one bound
            assert abs(exact_to_float(exact[k], np.dtype(np.float32)) - values[0, k]) <= values[1, k]
            assert values[0, k] == pytest.approx(lied[i, j], rel=1e-6)


def test_lying_blocks_make_krum_select_the_target():
    X = rows(n=10)
    honest = sharded.aggregate("krum", sharded.Blocks([X[:, :20], X[:, 20:]]), 2, {})
    lie = DistanceLie(CFG, 2, np.zeros(10, dtype=bool))
    step = next(s for s in range(50) if byzantine_ranks.lie_target(7, 2, s, np.arange(10)) != honest.selected[0])
    lie.at(step)
    blocks = sharded.Blocks([X[:, :20], X[:, 20:]])
    blocks.lie = lie
    lied = sharded.aggregate("krum", blocks, 2, {})
    assert list(lied.selected) == [lie.target] != list(honest.selected)
    np.testing.assert_array_equal(np.concatenate(lied.vectors), X[lie.target])


def test_the_targets_are_the_declared_byzantine_workers_when_there_are_any():
    byzantine = np.zeros(20, dtype=bool)
    byzantine[[4, 11, 17]] = True
    drawn = {byzantine_ranks.lie_target(0, 2, s, byzantine_ranks.lie_candidates(byzantine)) for s in range(60)}
    assert drawn == {4, 11, 17}
    assert len({byzantine_ranks.lie_target(0, 2, s, np.arange(20)) for s in range(60)}) > 10


def test_corrupt_block_is_seeded_sign_flipped_and_scaled():
    corrupt = BlockCorruption(CFG, 2)
    x = np.linspace(-1, 1, 9, dtype=np.float32)
    a = corrupt(x, 4)
    assert a.dtype == np.float32 and a.tobytes() == corrupt(x, 4).tobytes() != corrupt(x, 5).tobytes()
    noise = np.random.default_rng([7, byzantine_ranks.SEED_BYZANTINE_RANKS, 2, 4, byzantine_ranks.TAG_BLOCK])
    np.testing.assert_array_equal(a, x * np.float32(-4.0) + (noise.standard_normal(9) * 1.0).astype(np.float32))


def naive_majority(stack):
    """Per value, in plain Python: the bits more than half the replicas sent, else the first replica's."""
    bits = stack.view(np.uint32)
    chosen = bits[0].copy()
    for j in range(bits.shape[1]):
        column = list(bits[:, j])
        winners = [v for v in column if 2 * column.count(v) > len(column)]
        chosen[j] = winners[0] if winners else column[0]
    return chosen.view(np.float32), (bits != chosen[None, :]).sum(axis=1)


@pytest.mark.parametrize("k", [3, 4, 5])
def test_the_vote_on_disputed_values_only_equals_the_full_vote(k):
    """The vote compares all replicas only where one differs from the first: same values, same counts."""
    rng = np.random.default_rng(k)
    stack = np.repeat(rng.standard_normal((1, 500)).astype(np.float32), k, axis=0)
    lied = rng.random((k, 500)) < 0.3                        # a few values per replica, some in every column
    stack[lied] = rng.choice(np.float32([7.0, -0.0, np.nan]), size=int(lied.sum()))
    vote = Vote(k, k)
    out = vote.majority(list(stack), np.arange(k))
    want, counts = naive_majority(stack)
    assert out.tobytes() == want.tobytes() and list(vote.outvoted) == list(counts)
