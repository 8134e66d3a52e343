from __future__ import annotations

import numpy as np
import pytest

from fedrad.strategies import FedAvg, FedAvgConfig, FitResult
from fedrad.strategies.base import GLOBAL

SITES = ["a", "b", "c", "d", "e"]


def test_configure_asks_a_seeded_fraction_of_sites_with_the_same_weights():
    strategy = FedAvg(FedAvgConfig(fraction=0.4, seed=7))
    state = strategy.initial_state({"w": np.zeros(2)}, SITES)
    tasks = strategy.configure(0, state, SITES)
    assert len(tasks) == 2  # ceil(0.4 * 5)
    assert all(t.weights is state.models[GLOBAL] for t in tasks)
    assert [t.site_id for t in tasks] == [t.site_id for t in strategy.configure(0, state, SITES)]
    picks = {tuple(t.site_id for t in strategy.configure(r, state, SITES)) for r in range(20)}
    assert len(picks) > 1  # a different subset in different rounds


def test_min_sites_overrides_a_small_fraction():
    strategy = FedAvg(FedAvgConfig(fraction=0.1, min_sites=3))
    assert len(strategy.sample(0, SITES)) == 3


@pytest.mark.parametrize("kwargs", [{"fraction": 0.0}, {"fraction": 1.5}, {"min_sites": 0}])
def test_bad_hyperparameters_raise_naming_the_value(kwargs):
    with pytest.raises(ValueError, match=list(kwargs)[0]):
        FedAvgConfig(**kwargs)


def test_aggregate_weights_by_number_of_examples():
    strategy = FedAvg()
    state = strategy.initial_state({"w": np.zeros(1)}, SITES)
    results = [FitResult("a", {"w": np.array([3.0])}, 1), FitResult("b", {"w": np.array([7.0])}, 3)]
    new = strategy.aggregate(0, state, results)
    np.testing.assert_allclose(new.models[GLOBAL]["w"], [6.0])  # (3*1 + 7*3) / 4


def test_aggregate_without_results_keeps_the_model():
    strategy = FedAvg()
    state = strategy.initial_state({"w": np.array([1.0])}, SITES)
    assert strategy.aggregate(0, state, []) is state
