from __future__ import annotations

import numpy as np
import pytest

from fedrad.strategies import FitResult
from fedrad.strategies.base import GLOBAL
from fedrad.strategies.sequential import SequentialConfig, SequentialTraining
from fedrad.types import FitConfig

SITES = ["a", "b", "c"]


def _asked(strategy, rounds):
    state = strategy.initial_state({"w": np.zeros(1)}, SITES)
    return [[t.site_id for t in strategy.configure(r, state, SITES)] for r in range(rounds)]


def test_swt_visits_each_site_once_in_the_given_order():
    swt = SequentialTraining(SequentialConfig(order=("c", "a", "b")))
    assert swt.name == "swt" and swt.num_rounds(1, SITES) == 3
    assert _asked(swt, 3) == [["c"], ["a"], ["b"]]


def test_reverse_visits_the_order_backwards():
    swt = SequentialTraining(SequentialConfig(order=("c", "a", "b"), reverse=True))
    assert _asked(swt, 3) == [["b"], ["a"], ["c"]]


def test_seeded_order_is_reproducible_and_a_permutation():
    first = SequentialTraining(SequentialConfig(seed=5)).visit_order(0, SITES)
    assert first == SequentialTraining(SequentialConfig(seed=5)).visit_order(0, SITES)
    assert sorted(first) == SITES


def test_cwt_repeats_the_order_and_decays_lr_per_cycle():
    fit = FitConfig(epochs=2, lr=0.1, lr_decay=0.5)
    cwt = SequentialTraining(SequentialConfig(cycles=2, order=("b", "a", "c"), fit=fit))
    assert cwt.name == "cwt" and cwt.num_rounds(2, SITES) == 6
    assert _asked(cwt, 6) == [["b"], ["a"], ["c"], ["b"], ["a"], ["c"]]
    state = cwt.initial_state({"w": np.zeros(1)}, SITES)
    (visit,) = cwt.configure(4, state, SITES)  # cycle 1: lr 0.1 * 0.5, constant within the visit
    assert visit.config.lr == pytest.approx(0.05) and visit.config.lr_decay == 1.0 and visit.config.epochs == 2


def test_cwt_reshuffle_draws_a_new_order_per_cycle():
    cwt = SequentialTraining(SequentialConfig(cycles=10, reshuffle=True, seed=1))
    orders = {tuple(cwt.visit_order(c, SITES)) for c in range(10)}
    assert len(orders) > 1


def test_aggregate_hands_the_visited_sites_model_on_and_a_failure_keeps_it():
    swt = SequentialTraining()
    state = swt.initial_state({"w": np.zeros(1)}, SITES)
    new = swt.aggregate(0, state, [FitResult("a", {"w": np.array([3.0])}, 10)])
    np.testing.assert_array_equal(new.models[GLOBAL]["w"], [3.0])
    assert swt.aggregate(1, new, []) is new


@pytest.mark.parametrize("kwargs", [{"cycles": 0}, {"order": ("a", "a")}])
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        SequentialConfig(**kwargs)


def test_an_order_that_misses_a_site_is_refused():
    with pytest.raises(ValueError, match="each of the sites"):
        SequentialTraining(SequentialConfig(order=("a", "b"))).visit_order(0, SITES)
