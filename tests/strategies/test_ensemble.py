from __future__ import annotations

import numpy as np
import pytest

from fedrad.strategies import FitResult
from fedrad.strategies.aggregate import majority_vote, mean_probabilities
from fedrad.strategies.ensemble import INIT, Ensemble, EnsembleConfig

SITES = ["a", "b"]


def test_round_0_sends_the_initialisation_then_nothing():
    strategy = Ensemble()
    state = strategy.initial_state({"w": np.zeros(1)}, SITES)
    first = strategy.configure(0, state, SITES)
    assert [t.site_id for t in first] == SITES and all(t.weights is state.models[INIT] for t in first)
    assert all(t.keep_local == {"w"} for t in first)  # a member never leaves its site
    state = strategy.aggregate(0, state, [FitResult("a", {}, 10)])  # b failed: it gets the init again
    assert [t.weights == {} for t in strategy.configure(1, state, SITES)] == [True, False]
    assert strategy.simulation_only is False


def test_a_site_that_did_not_deliver_its_last_fit_is_sent_the_initialisation_again():
    # a lost its state (restarted without its file) and refused the empty model: it starts over.
    strategy = Ensemble()
    state = strategy.initial_state({"w": np.zeros(1)}, SITES)
    state = strategy.aggregate(0, state, [FitResult("a", {}, 10), FitResult("b", {}, 10)])
    state = strategy.aggregate(1, state, [FitResult("b", {}, 10)])
    assert [t.weights == {} for t in strategy.configure(2, state, SITES)] == [False, True]
    state = strategy.aggregate(2, state, [FitResult("a", {}, 10), FitResult("b", {}, 10)])
    assert all(t.weights == {} for t in strategy.configure(3, state, SITES))


def test_a_site_added_later_is_sent_the_initialisation():
    strategy = Ensemble()
    state = strategy.aggregate(0, strategy.initial_state({"w": np.zeros(1)}, SITES), [FitResult("a", {}, 1)])
    (task,) = strategy.configure(1, state, ["c"])
    assert task.weights is state.models[INIT]


def test_mean_and_vote_by_hand():
    members = [
        np.array([[0.9, 0.1], [0.4, 0.6]]),
        np.array([[0.6, 0.4], [0.3, 0.7]]),
        np.array([[0.2, 0.8], [0.8, 0.2]]),
    ]
    np.testing.assert_allclose(mean_probabilities(members), [[1.7 / 3, 1.3 / 3], [0.5, 0.5]])
    np.testing.assert_allclose(majority_vote(members), [[2 / 3, 1 / 3], [1 / 3, 2 / 3]])
    assert Ensemble(EnsembleConfig(rule="vote")).combine_outputs(members).shape == (2, 2)


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="rule"):
        EnsembleConfig(rule="median")
