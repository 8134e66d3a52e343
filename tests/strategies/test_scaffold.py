from __future__ import annotations

import numpy as np

from fedrad.site.training import ScaffoldState
from fedrad.strategies import FitResult
from fedrad.strategies.aggregate import scaffold_control_update
from fedrad.strategies.base import GLOBAL
from fedrad.strategies.scaffold import Scaffold, control_of

MODEL = {"w": np.zeros(2, np.float32), "bn.running_mean": np.zeros(2, np.float32)}


def test_server_control_update_by_hand():
    # 2 of 4 sites answered: c + 2/4 * mean([1, 3], [3, 5]) = [0, 1] + 0.5 * [2, 4] = [1, 3]
    c = {"w": np.array([0.0, 1.0], np.float32)}
    out = scaffold_control_update(c, [{"w": np.array([1.0, 3.0])}, {"w": np.array([3.0, 5.0])}], num_sites=4)
    np.testing.assert_allclose(out["w"], [1.0, 3.0])


def test_site_control_update_option_ii_by_hand():
    # c_i+ = c_i - c + (x - y) / (K lr) = 0.5 - 1.0 + (1.0 - 0.6) / (4 * 0.1) = 0.5
    state = ScaffoldState(server={"w": np.array([1.0], np.float32)}, site={"w": np.array([0.5], np.float32)})
    state.start, state.end, state.steps, state.lr = {"w": np.array([1.0])}, {"w": np.array([0.6])}, 4, 0.1
    new, delta = state.updated()
    np.testing.assert_allclose(new["w"], [0.5], rtol=1e-6)
    np.testing.assert_allclose(delta["w"], [0.0], atol=1e-6)


def test_configure_sends_c_for_trainable_entries_and_aggregate_updates_model_and_c():
    strategy = Scaffold()
    state = strategy.initial_state(MODEL, ["a", "b"])
    tasks = strategy.configure(0, state, ["a", "b"])
    assert [t.site_id for t in tasks] == ["a", "b"]
    assert set(tasks[0].control) == {"w"}  # running statistics have no gradient, hence no variate
    results = [
        FitResult("a", {**MODEL, "w": np.array([1.0, 1.0], np.float32)}, 1, control={"w": np.array([2.0, 0.0])}),
        FitResult("b", {**MODEL, "w": np.array([4.0, 4.0], np.float32)}, 2, control={"w": np.array([0.0, 2.0])}),
    ]
    new = strategy.aggregate(0, state, results)
    np.testing.assert_allclose(new.models[GLOBAL]["w"], [3.0, 3.0])  # (1 + 8) / 3
    np.testing.assert_allclose(control_of(new)["w"], [1.0, 1.0])  # 0 + 2/2 * mean
