from __future__ import annotations

import numpy as np
import pytest

from fedrad.strategies import FitResult
from fedrad.strategies.aggregate import adam_step, momentum_step, pseudo_gradient
from fedrad.strategies.base import GLOBAL
from fedrad.strategies.fedopt import FedOpt, FedOptConfig


def test_momentum_step_by_hand():
    # delta = x - mean = 1 - 0.5 = 0.5; m = 0.9 * 1.0 + 0.5 = 1.4; x = 1 - 0.5 * 1.4 = 0.3
    x, m = momentum_step({"w": np.array([1.0])}, {"w": np.array([0.5])}, {"w": np.array([1.0])}, 0.5, 0.9)
    np.testing.assert_allclose(m["w"], [1.4])
    np.testing.assert_allclose(x["w"], [0.3])


def test_adam_step_by_hand():
    # m = 0.1 * 2 = 0.2; v = 0.01 * 4 = 0.04; x = 1 - 0.1 * 0.2 / (0.2 + 0) ~ 0.9
    zero = {"w": np.array([0.0])}
    x, m, v = adam_step({"w": np.array([1.0])}, {"w": np.array([2.0])}, zero, zero, 0.1, 0.9, 0.99, 1e-12)
    np.testing.assert_allclose(m["w"], [0.2])
    np.testing.assert_allclose(v["w"], [0.04])
    np.testing.assert_allclose(x["w"], [0.9])


def test_pseudo_gradient_is_current_minus_average():
    out = pseudo_gradient({"w": np.array([3.0])}, {"w": np.array([1.0])}, ["w"])
    np.testing.assert_allclose(out["w"], [2.0])


def test_fedavgm_with_lr_1_and_no_momentum_is_fedavg_and_keeps_moments_in_extra():
    strategy = FedOpt(FedOptConfig(optimizer="momentum", server_lr=1.0, beta1=0.0))
    state = strategy.initial_state({"w": np.array([0.0])}, ["a", "b"])
    assert strategy.name == "fedavgm" and set(state.extra) == {"m/w"}
    results = [FitResult("a", {"w": np.array([2.0])}, 1), FitResult("b", {"w": np.array([5.0])}, 2)]
    new = strategy.aggregate(0, state, results)
    np.testing.assert_allclose(new.models[GLOBAL]["w"], [4.0])
    np.testing.assert_allclose(new.extra["m/w"], [-4.0])


def test_fedadam_moves_against_the_pseudo_gradient_and_stores_both_moments():
    strategy = FedOpt(FedOptConfig(optimizer="adam", server_lr=0.1))
    state = strategy.initial_state({"w": np.array([0.0], np.float32)}, ["a"])
    new = strategy.aggregate(0, state, [FitResult("a", {"w": np.array([1.0], np.float32)}, 1)])
    assert strategy.name == "fedadam" and set(new.extra) == {"m/w", "v/w"}
    assert 0 < new.models[GLOBAL]["w"][0] <= 0.1 + 1e-6  # a step of at most server_lr towards the sites


@pytest.mark.parametrize("kwargs", [{"optimizer": "sgd"}, {"server_lr": 0.0}, {"beta1": 1.0}, {"tau": 0.0}])
def test_bad_hyperparameters_raise(kwargs):
    with pytest.raises(ValueError):
        FedOptConfig(**kwargs)
