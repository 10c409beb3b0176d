"""Heterogeneous splits give the stated label distributions (Dirichlet label skew, gamma-similarity)."""
import numpy as np
import pytest

from krum_mpi.data import open_dataset, shard as policies
from krum_mpi.data.base import ArrayDataset
from krum_mpi.errors import DataError

C = 10


def balanced_labels(per_class=2000, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(C), per_class))


def _dataset(labels, split, **options):
    X = np.zeros((len(labels), 1), np.float32)
    return ArrayDataset("labels", X, labels, X[:2], labels[:2], C, {}, split=split, seed=0, **options)


def histograms(ds, n_workers):
    return np.stack([np.bincount(ds.shard(w, n_workers).labels(), minlength=C) for w in range(n_workers)])


def test_dirichlet_realised_counts_match_the_stated_distribution():
    labels = balanced_labels()
    ds = _dataset(labels, "dirichlet", alpha=0.5)
    n = 20
    hist = histograms(ds, n)
    for w in range(n):
        shard = ds.shard(w, n)
        stated = shard.label_target * len(shard)
        # counts are the stated shares up to rounding: at most one sample per class from each rounding
        assert np.abs(hist[w] - stated).max() < 2.0, (hist[w], stated)
    # each class is dealt out completely
    np.testing.assert_array_equal(hist.sum(axis=0), np.bincount(labels))


@pytest.mark.parametrize("alpha", [0.3, 1.0, 10.0])
def test_dirichlet_shares_have_the_dirichlet_variance(alpha):
    """Worker w's share of class c is p_c[w] with p_c ~ Dirichlet(alpha 1_n): mean 1/n and variance
    (1/n)(1 - 1/n)/(n alpha + 1). Checked over 10 classes x 20 workers x 3 seeds (600 shares)."""
    n = 20
    shares = []
    for seed in range(3):
        per_class = np.bincount(balanced_labels(seed=seed), minlength=C)
        X = np.zeros((C * 2000, 1), np.float32)
        ds = ArrayDataset("labels", X, balanced_labels(seed=seed), X[:2], np.zeros(2), C, {},
                          split="dirichlet", alpha=alpha, seed=seed)
        shares.append(histograms(ds, n) / per_class)       # (n, C) shares of each class
    shares = np.concatenate(shares)
    expected_var = (1 / n) * (1 - 1 / n) / (n * alpha + 1)
    assert shares.mean() == pytest.approx(1 / n, rel=1e-9)
    assert shares.var() == pytest.approx(expected_var, rel=0.25)


def test_dirichlet_alpha_moves_between_one_class_and_iid():
    labels = balanced_labels()
    global_dist = np.bincount(labels) / len(labels)
    skewed = histograms(_dataset(labels, "dirichlet", alpha=0.05), 10)
    near_iid = histograms(_dataset(labels, "dirichlet", alpha=1000.0), 10)
    dominant = (skewed.max(axis=1) / skewed.sum(axis=1)).mean()
    assert dominant > 0.6
    tv = 0.5 * np.abs(near_iid / near_iid.sum(axis=1, keepdims=True) - global_dist).sum(axis=1)
    assert tv.max() < 0.05


def test_dirichlet_that_cannot_feed_every_worker_is_a_data_error():
    labels = np.repeat(np.arange(2), 10)
    ds = ArrayDataset("tiny", np.zeros((20, 1)), labels, np.zeros((2, 1)), labels[:2], 2, {},
                      split="dirichlet", alpha=1e-3, seed=0)
    with pytest.raises(DataError, match="data.alpha"):
        ds.shard(0, 10)


def total_variation(hist, labels):
    global_dist = np.bincount(labels, minlength=C) / len(labels)
    dists = hist / hist.sum(axis=1, keepdims=True)
    return 0.5 * np.abs(dists - global_dist).sum(axis=1)


def test_gamma_zero_gives_contiguous_label_blocks():
    labels = balanced_labels()
    n = 20                                   # 1000 samples per worker, 2000 per class
    hist = histograms(_dataset(labels, "gamma", gamma=0.0), n)
    assert (np.count_nonzero(hist, axis=1) == 1).all()      # one class each
    # worker w holds class w // 2: the blocks follow the sorted labels
    assert [int(np.argmax(h)) for h in hist] == [w // 2 for w in range(n)]


def test_gamma_similarity_fraction_is_iid():
    """Worker w's data = gamma * (IID sample) + (1 - gamma) * (its block of the label-sorted rest),
    so its label distribution's distance to the global one shrinks linearly in gamma."""
    labels = balanced_labels()
    n = 20
    tv = {g: total_variation(histograms(_dataset(labels, "gamma", gamma=g), n), labels).mean()
          for g in (0.0, 0.25, 0.5, 0.75, 1.0)}
    assert tv[0.0] == pytest.approx(0.9)           # one class of ten: distance 0.9
    for g in (0.25, 0.5, 0.75):
        assert tv[g] == pytest.approx((1 - g) * tv[0.0], abs=0.03)
    assert tv[1.0] < 0.05
    # with gamma > 0 every worker sees every class (its IID part)
    hist = histograms(_dataset(labels, "gamma", gamma=0.5), n)
    assert (hist.min(axis=1) > 0).all()
    # and the share of its main class is about its sorted block (1 - gamma) plus its IID share (a
    # block may straddle two classes, since the IID draw leaves unequal class counts for the rest)
    main = hist.max(axis=1) / hist.sum(axis=1)
    assert main.mean() == pytest.approx(0.5 + 0.5 / C, abs=0.02)
    assert main.min() > 0.45


def test_splits_on_synthetic_labels():
    cfg = {"name": "synthetic", "generator": "mixture", "n_train": 20_000, "n_features": 4,
           "n_classes": 4, "split": "gamma", "gamma": 0.0}
    ds = open_dataset(cfg, seed=0)
    hist = np.stack([np.bincount(ds.shard(w, 8).labels(), minlength=4) for w in range(8)])
    assert (np.count_nonzero(hist, axis=1) <= 2).all()


def test_apportion_sums_exactly():
    for total in (0, 1, 17, 1000):
        counts = policies._apportion(total, np.array([0.1, 0.2, 0.3, 0.4]))
        assert counts.sum() == total and (counts >= 0).all()


def test_iid_part_equals_the_full_split():
    full = policies.iid(1001, 7, seed=3)
    for w in range(7):
        np.testing.assert_array_equal(policies.iid_part(1001, 7, w, seed=3), full[w])


def test_label_counts_table():
    labels = balanced_labels(per_class=100)
    ds = _dataset(labels, "gamma", gamma=0.0)
    counts = ds.label_counts(10)
    np.testing.assert_array_equal(counts, 100 * np.eye(C, dtype=np.int64))
