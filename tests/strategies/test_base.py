from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from fedrad.codec import decode, encode
from fedrad.server.ledger import Ledger
from fedrad.server.orchestrator import Orchestrator, RunContext
from fedrad.strategies import Ensemble, EnsembleConfig, FedAvg, SequentialConfig, SequentialTraining
from fedrad.strategies.base import GLOBAL, FitResult, FitTask, MeanFold, ServerState, Strategy, StrategyWrapper
from fedrad.transport.inprocess import InProcessTransport
from fedrad.types import DataKind, Reply


class _FixedSite:
    """Replies to a fit with a model of `value` everywhere, from 4 examples."""

    def __init__(self, site_id: str, value: float):
        self.site_id, self.value = site_id, value

    def handle(self, instruction):
        sent = decode(instruction.payload[DataKind.WEIGHTS])
        weights = {n: np.full_like(a, self.value) for n, a in sent.items()}
        return Reply(instruction.round, self.site_id, instruction.kind, {DataKind.WEIGHTS: encode(weights)}, 4)


class Median(StrategyWrapper):
    """Robust aggregation: the coordinate-wise median of the updates instead of their mean."""

    def begin(self, round: int, state: ServerState) -> None:
        return None  # the median needs every update at once

    def aggregate(self, round: int, state: ServerState, results: Sequence[FitResult]) -> ServerState:
        names = results[0].weights
        median = {n: np.median([r.weights[n] for r in results], axis=0).astype(np.float32) for n in names}
        return ServerState({GLOBAL: median}, state.extra)


def _one_round(strategy: Strategy) -> np.ndarray:
    sites = {s.site_id: s for s in (_FixedSite("a", 1.0), _FixedSite("b", 2.0), _FixedSite("c", 9.0))}
    orchestrator = Orchestrator(strategy, RunContext(InProcessTransport(sites), Ledger(), None), list(sites), [],
                                rounds=2, eval_every=100)  # round 0 of 2: no evaluation  # fmt: skip
    state = orchestrator.round(0, strategy.initial_state({"w": np.zeros(3, np.float32)}, list(sites)))
    return state.models[GLOBAL]["w"]


def test_a_wrapper_around_fedavg_changes_aggregation_without_the_orchestrator_knowing():
    assert np.allclose(_one_round(FedAvg()), 4.0)  # the mean of 1, 2, 9
    assert np.allclose(_one_round(Median(FedAvg())), 2.0)  # their median, through the same loop


def test_a_wrapper_that_changes_only_the_fold_changes_both_aggregation_paths():
    class Doubled(StrategyWrapper):
        def begin(self, round, state):
            return MeanFold(state, lambda mean: ServerState({GLOBAL: {n: 2 * a for n, a in mean.items()}}))

    strategy = Doubled(FedAvg())
    results = [FitResult("a", {"w": np.array([1.0], np.float32)}, 1), FitResult("b", {"w": np.array([3.0])}, 1)]
    state = strategy.aggregate(0, strategy.initial_state({"w": np.zeros(1, np.float32)}, ["a", "b"]), results)
    assert np.allclose(_one_round(strategy), 8.0) and np.allclose(state.models[GLOBAL]["w"], 4.0)


def test_a_wrapper_declares_every_part_of_the_strategy_it_wraps():
    swt = StrategyWrapper(SequentialTraining(SequentialConfig(order=("b", "a"))))
    assert (swt.name, swt.simulation_only, swt.evaluation, swt.records_order) == ("swt", False, "models", True)
    assert swt.num_rounds(5, ["a", "b"]) == 2 and swt.begin(0, ServerState({})) is None
    assert [t.site_id for t in swt.configure(0, swt.initial_state({}, ["a", "b"]), ["a", "b"])] == ["b"]
    ensemble = StrategyWrapper(Ensemble(EnsembleConfig(rule="mean")))
    members = [np.array([[0.2, 0.8]], np.float32), np.array([[0.6, 0.4]], np.float32)]
    assert ensemble.evaluation == "outputs" and np.allclose(ensemble.combine_outputs(members), [[0.4, 0.6]])


def test_the_base_declares_the_defaults_a_strategy_does_not_override():
    class AskEveryone(Strategy):
        name = "ask-everyone"

        def configure(self, round, state, sites):
            return [FitTask(site, state.models[GLOBAL], FedAvg().config.fit) for site in sites]

    strategy = AskEveryone()
    assert strategy.begin(0, ServerState({})) is None and strategy.num_rounds(7, ["a"]) == 7
    assert strategy.evaluation == "models" and not strategy.records_order and not strategy.simulation_only
    assert strategy.local_names({"w": np.zeros(1)}) == frozenset()
    with pytest.raises(NotImplementedError, match="neither begin"):
        strategy.aggregate(0, ServerState({}), [])
    with pytest.raises(NotImplementedError, match="does not combine outputs"):
        strategy.combine_outputs([])
    with pytest.raises(TypeError):
        Strategy()  # configure is the one part without a default
