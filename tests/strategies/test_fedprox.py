from __future__ import annotations

import numpy as np
import pytest

from fedrad.strategies import FitResult
from fedrad.strategies.base import GLOBAL
from fedrad.strategies.fedprox import FedProx, FedProxConfig


def test_every_site_is_asked_with_the_proximal_weight_and_aggregation_is_fedavgs():
    strategy = FedProx(FedProxConfig(mu=0.1))
    state = strategy.initial_state({"w": np.zeros(1)}, ["a", "b"])
    tasks = strategy.configure(0, state, ["a", "b"])
    assert [t.site_id for t in tasks] == ["a", "b"] and all(t.config.prox_mu == 0.1 for t in tasks)
    results = [FitResult("a", {"w": np.array([2.0])}, 1), FitResult("b", {"w": np.array([5.0])}, 2)]
    new = strategy.aggregate(0, state, results)
    np.testing.assert_allclose(new.models[GLOBAL]["w"], [4.0])  # (2 + 10) / 3


def test_mu_must_be_positive():
    with pytest.raises(ValueError, match="mu"):
        FedProxConfig(mu=0.0)
