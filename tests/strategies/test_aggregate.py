from __future__ import annotations

import numpy as np
import pytest

from fedrad.strategies.aggregate import pooled_batchnorm_variance, weighted_mean


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
    out = pooled_batchnorm_variance(updates, weighted_mean(updates))
    # Assert: the pooled data [0, 2, 4, 6, 8, 10] has mean 5 and (population) variance 70/6 - ... = 11.667
    pooled = np.array([0, 2, 4, 6, 8, 10], dtype=np.float64)
    np.testing.assert_allclose(out["bn.running_mean"], [pooled.mean()])
    np.testing.assert_allclose(out["bn.running_var"], [pooled.var()])
