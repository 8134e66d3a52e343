from __future__ import annotations

import numpy as np
import pytest

from fedrad.data.partition import (
    dirichlet,
    feature_skew,
    iid,
    natural,
    partition_table,
    phantom_partition,
    quantity_skew,
)
from fedrad.data.phantom import ScannerProfile


def _covers(parts, n):
    joined = np.concatenate(parts)
    return len(joined) == n and len(np.unique(joined)) == n


def test_dirichlet_counts_follow_the_drawn_proportions():
    # Prepare: 10 of class 0, 6 of class 1; the same generator state drawn by hand
    labels = np.array([0] * 10 + [1] * 6)
    parts = dirichlet(labels, 3, alpha=0.5, rng=np.random.default_rng(4))
    rng = np.random.default_rng(4)
    expected = np.zeros((3, 2), int)
    for c, n in ((0, 10), (1, 6)):
        rng.permutation(n)
        shares = rng.dirichlet(np.full(3, 0.5))
        cuts = np.floor(np.cumsum(shares)[:-1] * n).astype(int)
        expected[:, c] = np.diff(np.concatenate([[0], cuts, [n]]))
    # Assert: every example once, per-site class counts as drawn, class totals kept
    assert _covers(parts, 16)
    counts = np.array([[np.sum(labels[p] == c) for c in (0, 1)] for p in parts])
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(counts.sum(axis=0), [10, 6])


def test_small_alpha_skews_labels_more_than_large_alpha():
    labels = np.repeat([0, 1], 500)

    def spread(alpha):
        parts = dirichlet(labels, 5, alpha, np.random.default_rng(0))
        return np.std([labels[p].mean() for p in parts if len(p)])

    assert spread(0.1) > spread(100.0)


def test_iid_sizes_differ_by_at_most_one():
    parts = iid(10, 3, np.random.default_rng(0))
    assert sorted(len(p) for p in parts) == [3, 3, 4] and _covers(parts, 10)


def test_quantity_skew_sizes_by_hand():
    # weights 1, 1/2, 1/3 (sum 11/6); 20 - 3*2 = 14 shared: floor(7.64, 3.82, 2.55) = 7, 3, 2;
    # plus the minimum 2 each: 9, 5, 4 = 18; the 2 left over go to the largest site: 11, 5, 4
    parts = quantity_skew(20, 3, exponent=1.0, rng=np.random.default_rng(0))
    assert [len(p) for p in parts] == [11, 5, 4] and _covers(parts, 20)


def test_natural_splits_by_institution():
    parts = natural(np.array(["x", "y", "x", "z"]))
    assert {k: v.tolist() for k, v in parts.items()} == {"x": [0, 2], "y": [1], "z": [3]}


def test_feature_skew_renders_each_site_with_its_scanner():
    images = np.full((4, 8, 8), 0.5, np.float32)
    profiles = [ScannerProfile(gain=1.0, noise=0.0), ScannerProfile(gain=2.0, offset=0.1, noise=0.0)]
    out = feature_skew(images, [np.array([0, 1]), np.array([2, 3])], profiles, np.random.default_rng(0))
    np.testing.assert_allclose(out[0], 0.5, rtol=1e-6)
    np.testing.assert_allclose(out[1], 1.1, rtol=1e-6)


def test_partition_table_counts_and_fractions():
    rows = partition_table([np.array([0, 1, 2]), np.array([3])], np.array([0, 1, 1, 0]), names=["a", "b"])
    assert rows[0] == {"site": "a", "n": 3, "counts": {0: 1, 1: 2}, "fractions": {0: 1 / 3, 1: 2 / 3}}
    assert rows[1]["counts"] == {0: 1, 1: 0}


def test_phantom_partition_builds_sites_and_refuses_unknown_kinds():
    sites = phantom_partition("feature_skew", 3, 60, 0.5, seed=0, size=16)
    assert [s.site_id for s in sites] == ["site-0", "site-1", "site-2"]
    assert sum(len(s.train) + len(s.val) + len(s.test) for s in sites) == 60
    with pytest.raises(ValueError, match="partition kind"):
        phantom_partition("bogus", 3, 60, 0.5, seed=0, size=16)


@pytest.mark.parametrize("call", [lambda: iid(2, 3, np.random.default_rng(0)),
                                  lambda: dirichlet(np.zeros(5), 2, 0.0, np.random.default_rng(0))])
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


def test_a_tiny_alpha_never_leaves_a_site_empty():
    labels = np.repeat(np.arange(2), 20)
    for seed in range(20):  # alpha 0.5, 6 sites: about 2 single draws in 3 leave a site under 2 examples
        parts = dirichlet(labels, 6, alpha=0.5, rng=np.random.default_rng(seed), min_size=2)
        assert min(len(p) for p in parts) >= 2
        assert sorted(np.concatenate(parts).tolist()) == list(range(40))  # still a partition


def test_an_impossible_minimum_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot give 6 sites at least 2 each"):
        dirichlet(np.zeros(10), 6, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="raise alpha or use fewer sites"):  # 2 classes, alpha 0.01: 2 sites
        dirichlet(np.repeat(np.arange(2), 20), 6, 0.01, np.random.default_rng(0))
