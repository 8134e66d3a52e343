from __future__ import annotations

import numpy as np

from fedrad.strategies import CentralizedDataSharing, FitResult, LocalOnly
from fedrad.strategies.base import GLOBAL
from fedrad.strategies.baselines import POOLED


def test_cds_trains_one_model_on_the_pooled_site():
    strategy = CentralizedDataSharing()
    state = strategy.initial_state({"w": np.zeros(1)}, ["a", "b"])
    assert [t.site_id for t in strategy.configure(0, state, ["a", "b"])] == [POOLED]
    new = strategy.aggregate(0, state, [FitResult(POOLED, {"w": np.array([2.0])}, 10)])
    np.testing.assert_array_equal(new.models[GLOBAL]["w"], [2.0])
    assert strategy.simulation_only


def test_local_only_keeps_one_model_per_site_and_never_mixes_them():
    strategy = LocalOnly()
    state = strategy.initial_state({"w": np.zeros(1)}, ["a", "b"])
    tasks = strategy.configure(0, state, ["a", "b"])
    assert [t.site_id for t in tasks] == ["a", "b"]
    new = strategy.aggregate(0, state, [FitResult("a", {"w": np.array([5.0])}, 3)])
    np.testing.assert_array_equal(new.models["a"]["w"], [5.0])
    np.testing.assert_array_equal(new.models["b"]["w"], [0.0])  # b failed: keeps its model
