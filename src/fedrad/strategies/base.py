"""The Strategy contract: `configure` says what to ask of whom, `aggregate` combines the replies.

Strategies see weights as named numpy arrays and never touch torch, codecs or the network, so
each one can be tested alone on hand-worked numbers. The orchestrator turns a FitTask into an
Instruction (encoding, job hash, seed) and a successful Reply back into a FitResult.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fedrad.strategies.aggregate import WeightedSum
from fedrad.types import FitConfig, Weights

GLOBAL = "global"  # the name of the one shared model in ServerState.models


@dataclass(frozen=True)
class ServerState:
    """Everything a strategy carries between rounds; checkpointed as tensors after each round.

    `models` names the models the strategy holds ("global", or one per site for local-only);
    `extra` holds any other arrays (server-optimiser moments, control variates ...).
    """

    models: Mapping[str, Weights]
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class FitTask:
    """Ask one site to train `weights` with `config`."""

    site_id: str
    weights: Weights  # may be part of the model: the site keeps its own values for the rest
    config: FitConfig
    control: Weights | None = None  # SCAFFOLD's server control variate c, travels as DataKind.CONTROL


@dataclass(frozen=True)
class FitResult:
    """A site's successful training reply, decoded."""

    site_id: str
    weights: Weights
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    control: Weights | None = None  # SCAFFOLD: the site's delta c_i


class Strategy(Protocol):
    name: str
    simulation_only: bool  # baselines that need pooled data or no federation at all

    def initial_state(self, weights: Weights, sites: Sequence[str]) -> ServerState: ...

    def configure(self, round: int, state: ServerState, sites: Sequence[str]) -> list[FitTask]: ...

    def aggregate(self, round: int, state: ServerState, results: Sequence[FitResult]) -> ServerState: ...


class Fold(Protocol):
    """A round's aggregation taken one reply at a time: the server's streaming path.

    A strategy that offers `begin(round, state) -> Fold` is aggregated as replies arrive, so
    the server holds the running result and one update, not every site's model. Its `aggregate`
    must be `fold_all(self.begin(round, state), results)`, so both paths give the same numbers.
    """

    def add(self, result: FitResult, owned: bool = False) -> None: ...

    def finish(self) -> ServerState: ...


class MeanFold:
    """Folds each result's (selected) weights into a WeightedSum; `then` turns the mean into the next state
    (by default: the mean becomes the global model, `extra` is kept).

    With no result at all the state is kept: every asked site failed, the round is recorded as such.
    """

    def __init__(
        self,
        state: ServerState,
        then: Callable[[Weights], ServerState] | None = None,
        select: Callable[[Weights], Weights] | None = None,
        pool_batchnorm: bool = True,
    ):
        self.state, self.select = state, select
        self.then = then or (lambda mean: ServerState(models={GLOBAL: mean}, extra=state.extra))
        self.sum = WeightedSum(pool_batchnorm)

    def add(self, result: FitResult, owned: bool = False) -> None:
        weights = result.weights if self.select is None else self.select(result.weights)
        self.sum.add(weights, result.num_examples, owned)

    def finish(self) -> ServerState:
        return self.state if self.sum.count == 0 else self.then(self.sum.mean())


def fold_all(fold: Fold, results: Sequence[FitResult]) -> ServerState:
    for result in results:
        fold.add(result)
    return fold.finish()
