from __future__ import annotations

import numpy as np
import pytest

from fedrad.strategies.aggregate import WeightedSum, weighted_mean


def test_weighted_mean_matches_hand_worked_numbers():
    # Prepare: two sites, 10 and 30 examples.
    a = {"w": np.array([1.0, 2.0], dtype=np.float32), "n": np.array(2, dtype=np.int64)}
    b = {"w": np.array([5.0, -2.0], dtype=np.float32), "n": np.array(5, dtype=np.int64)}
    # Execute
    out = weighted_mean([(a, 10), (b, 30)])
    # Assert: (1*10 + 5*30)/40 = 4.0, (2*10 - 2*30)/40 = -1.0; ints: (2*10 + 5*30)/40 = 4.25 -> 4
    np.testing.assert_allclose(out["w"], [4.0, -1.0])
    assert out["w"].dtype == np.float32
    assert out["n"] == 4 and out["n"].dtype == np.int64


def test_weighted_mean_of_one_update_is_that_update():
    a = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    np.testing.assert_array_equal(weighted_mean([(a, 7)])["w"], a["w"])


@pytest.mark.parametrize("updates", [[], [({"w": np.ones(1)}, 0)]])
def test_weighted_mean_rejects_empty_or_zero_weight(updates):
    with pytest.raises(ValueError):
        weighted_mean(updates)


def test_pooled_batchnorm_variance_is_the_variance_of_the_pooled_data():
    # Prepare: site 1 holds [0, 2] (mean 1, var 1), site 2 holds [4, 6, 8, 10] (mean 7, var 5).
    s1 = {"bn.running_mean": np.array([1.0]), "bn.running_var": np.array([1.0])}
    s2 = {"bn.running_mean": np.array([7.0]), "bn.running_var": np.array([5.0])}
    updates = [(s1, 2), (s2, 4)]
    # Execute
    out = weighted_mean(updates, pool_batchnorm=True)
    # Assert: the pooled data [0, 2, 4, 6, 8, 10] has mean 5 and (population) variance 70/6 - ... = 11.667
    pooled = np.array([0, 2, 4, 6, 8, 10], dtype=np.float64)
    np.testing.assert_allclose(out["bn.running_mean"], [pooled.mean()])
    np.testing.assert_allclose(out["bn.running_var"], [pooled.var()])


def test_folding_owned_updates_in_place_gives_the_same_mean_and_reuses_the_first_buffer():
    rng = np.random.default_rng(3)
    updates = [({"w": rng.normal(size=(5, 4)).astype(np.float32), "bn.running_mean": rng.normal(size=4),
                 "bn.running_var": rng.uniform(0.5, 2, size=4), "bn.num_batches_tracked": np.array(n)}, n)
               for n in (3, 11, 7)]
    expected = weighted_mean(updates, pool_batchnorm=True)
    total = WeightedSum(pool_batchnorm=True)
    owned = [{name: array.copy() for name, array in weights.items()} for weights, _ in updates]
    for weights, (_, n) in zip(owned, updates, strict=True):
        total.add(weights, n, owned=True)
    out = total.mean()
    for name, array in expected.items():
        np.testing.assert_array_equal(out[name], array)
        assert out[name].dtype == array.dtype
    # Independent check of the float entry against float64 arithmetic: within float32 rounding.
    exact = sum(w["w"].astype(np.float64) * n for w, n in updates) / 21
    np.testing.assert_allclose(out["w"], exact, rtol=1e-6, atol=1e-6)
    assert np.shares_memory(total._sums["w"], owned[0]["w"])  # the first update's buffer is the sum


def test_a_weighted_sum_refuses_updates_with_other_names():
    total = WeightedSum()
    total.add({"w": np.ones(2, np.float32)}, 1)
    with pytest.raises(ValueError, match="differ"):
        total.add({"v": np.ones(2, np.float32)}, 1)
