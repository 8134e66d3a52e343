from __future__ import annotations

import numpy as np

from fedrad.strategies import FitResult
from fedrad.strategies.aggregate import batchnorm_names
from fedrad.strategies.base import GLOBAL
from fedrad.strategies.fedbn import FedBN, shared_part

MODEL = {
    "conv.weight": np.zeros(2, np.float32),
    "bn.weight": np.ones(2, np.float32),
    "bn.bias": np.zeros(2, np.float32),
    "bn.running_mean": np.zeros(2, np.float32),
    "bn.running_var": np.ones(2, np.float32),
    "bn.num_batches_tracked": np.array(0),
    "head.bias": np.zeros(1, np.float32),
}


def test_batchnorm_names_are_found_by_their_running_mean():
    assert batchnorm_names(MODEL) == {n for n in MODEL if n.startswith("bn.")}
    assert set(shared_part(MODEL)) == {"conv.weight", "head.bias"}


def test_round_0_sends_the_whole_initialisation_to_every_site():
    strategy = FedBN()
    state = strategy.initial_state(MODEL, ["a", "b"])
    tasks = strategy.configure(0, state, ["a", "b"])
    assert [t.site_id for t in tasks] == ["a", "b"] and all(set(t.weights) == set(MODEL) for t in tasks)


def test_aggregate_averages_the_shared_part_and_keeps_the_initial_batchnorm():
    strategy = FedBN()
    state = strategy.initial_state(MODEL, ["a", "b"])
    a = {**MODEL, "conv.weight": np.array([1.0, 1.0], np.float32), "bn.running_mean": np.array([9.0, 9.0], np.float32)}
    b = {**MODEL, "conv.weight": np.array([4.0, 7.0], np.float32)}
    new = strategy.aggregate(0, state, [FitResult("a", a, 2), FitResult("b", b, 1)])
    # (1*2 + 4*1)/3 = 2, (1*2 + 7*1)/3 = 3; no site's BatchNorm reaches the server's model
    np.testing.assert_allclose(new.models[GLOBAL]["conv.weight"], [2.0, 3.0])
    assert set(new.models[GLOBAL]) == set(MODEL)
    for name in batchnorm_names(MODEL):
        np.testing.assert_array_equal(new.models[GLOBAL][name], MODEL[name], err_msg=name)


def test_every_round_sends_a_whole_model_with_batchnorm_kept_local():
    # A site never sampled before (or new, or restarted) can start from it: the initial BatchNorm.
    strategy = FedBN()
    state = strategy.initial_state(MODEL, ["a", "b"])
    shared = {n: a for n, a in MODEL.items() if not n.startswith("bn.")}
    state = strategy.aggregate(0, state, [FitResult("a", shared, 2)])  # a site's reply: the shared part
    for round in (0, 1):
        for task in strategy.configure(round, state, ["a", "b"]):
            assert set(task.weights) == set(MODEL) and task.keep_local == batchnorm_names(MODEL)
    assert strategy.local_names(MODEL) == batchnorm_names(MODEL)
