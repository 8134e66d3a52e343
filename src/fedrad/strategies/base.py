"""The Strategy contract: `configure` says what to ask of whom, `aggregate` combines the replies.

Strategies see weights as named numpy arrays and never touch torch, codecs or the network, so
each one can be tested alone on hand-worked numbers. The orchestrator turns a FitTask into an
Instruction (encoding, job hash, seed) and a successful Reply back into a FitResult.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

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
class MaskedFit:
    """A fit whose reply is masked (secure aggregation): the server checks its form, never its values."""

    request: bytes  # the "masked" phase request, sent as the FIT instruction's DataKind.SECAGG payload
    shapes: Mapping[str, tuple[int, ...]]  # the uint32 entries the reply must carry
    num_examples: int  # the weight the site advertised (public); its reply must claim the same


@dataclass(frozen=True)
class FitTask:
    """Ask one site to train `weights` with `config`."""

    site_id: str
    weights: Weights  # the starting point for a site without state of its own; may be empty if all is kept local
    config: FitConfig
    control: Weights | None = None  # SCAFFOLD's server control variate c, travels as DataKind.CONTROL
    # Entries the site keeps for itself (the strategy's `local_names`): a site with state uses its
    # own values for them, and its reply carries only the other entries of `weights`.
    keep_local: frozenset[str] = frozenset()
    masked: MaskedFit | None = None  # secure aggregation: the reply is a masked upload (uint32 words)


class Channel(Protocol):
    """Extra message phases within a round, over the round's transport (secure aggregation's key
    exchange and unmasking): `ask` sends each site its DataKind.SECAGG payload and returns the payloads
    of the sites that answered (the others are the round's failures, booked like every message);
    `reject(site, reason)` records a reply the strategy could not use as that site's failure."""

    def ask(self, phase: str, requests: Mapping[str, bytes]) -> dict[str, bytes]: ...

    def reject(self, site_id: str, reason: str) -> None: ...


@dataclass(frozen=True)
class FitResult:
    """A site's successful training reply, decoded."""

    site_id: str
    weights: Weights
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    control: Weights | None = None  # SCAFFOLD: the site's delta c_i


class Fold(Protocol):
    """A round's aggregation taken one reply at a time: the server's streaming path.

    A strategy whose `begin(round, state)` returns a Fold is aggregated as replies arrive, so the
    server holds the running result and one update, not every site's model. Its `aggregate` is
    `fold_all(self.begin(round, state), results)` (Strategy's default), so both paths agree.
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


# The strategies whose round is a (weighted) mean of the sites' models: what central DP, robust aggregation
# and secure aggregation can replace by their own aggregate (each says why it refuses the others).
AVERAGING = frozenset({"fedavg", "fedprox", "fedbn", "fedavgm", "fedadam"})


def from_one_reply(strategy: Strategy, round: int, state: ServerState, reply: FitResult) -> ServerState:
    """The next state `strategy` makes of `reply` as the round's only result: how a wrapper hands its inner
    strategy the aggregate it computed itself (FedAvg takes it as the model, FedAvgM / FedAdam step along it)."""
    fold = strategy.begin(round, state)
    return fold_all(fold, [reply]) if fold is not None else strategy.aggregate(round, state, [reply])


class Strategy(ABC):
    """What to ask of which sites (`configure`) and how to combine the replies; the orchestrator calls
    only what this class declares, and every optional part has its default here:

    - `begin(round, state) -> Fold | None`: None (the default) collects the round's results for
      `aggregate`; a Fold takes each reply as it arrives, so the server holds one update, not all.
      The default `aggregate` folds a list through `begin`, so both paths give the same numbers.
    - `evaluation`: "models" (every model in `state.models` on every test set) or "outputs" (each
      site's member predicts and `combine_outputs` combines the predictions: an ensemble).
    - `num_rounds(rounds, sites)`: orchestrator rounds; `train.rounds` unless a round is one visit.
    - `records_order`: the summary records the visiting order (every round's asked sites).
    - `local_names(weights)`: entries each site keeps for itself and is evaluated with (FedBN's
      BatchNorm, an ensemble member); none by default.
    - `simulation_only`: a baseline only the simulator can run (pooled data, no federation).
    - `prepare(round, state, tasks, channel) -> tasks`: phases before the fits (secure aggregation's
      key exchange); the tasks for the sites still in. `settle(round, fold, channel)`: phases after
      the fits, before `finish` (unmasking). Both may raise `RoundAborted`. Defaults: nothing.
    """

    name: str = ""
    simulation_only: bool = False
    evaluation: Literal["models", "outputs"] = "models"
    records_order: bool = False

    def initial_state(self, weights: Weights, sites: Sequence[str]) -> ServerState:
        """The state before round 0: the shared initialisation as the one global model."""
        return ServerState(models={GLOBAL: weights})

    @abstractmethod
    def configure(self, round: int, state: ServerState, sites: Sequence[str]) -> list[FitTask]: ...

    def begin(self, round: int, state: ServerState) -> Fold | None:
        """The round's streaming aggregation, or None: the results come to `aggregate` as a list."""
        return None

    def prepare(self, round: int, state: ServerState, tasks: list[FitTask], channel: Channel) -> list[FitTask]:
        """Phases before the round's fits; the tasks to send. Default: none, every task."""
        return tasks

    def settle(self, round: int, fold: Fold | None, channel: Channel) -> None:  # noqa: B027 (a default, not abstract)
        """Phases after the round's fits, before the fold finishes. Default: none."""

    def aggregate(self, round: int, state: ServerState, results: Sequence[FitResult]) -> ServerState:
        fold = self.begin(round, state)
        if fold is None:
            raise NotImplementedError(f"strategy {self.name!r} declares neither begin() nor aggregate()")
        return fold_all(fold, results)

    def num_rounds(self, rounds: int, sites: Sequence[str]) -> int:
        """Orchestrator rounds for `train.rounds` on these training sites."""
        return rounds

    def local_names(self, weights: Weights) -> frozenset[str]:
        """The entries of `weights` each site keeps for itself: none, every entry is shared."""
        return frozenset()

    def combine_outputs(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """The combined prediction of the members' outputs (only with evaluation "outputs")."""
        raise NotImplementedError(f"strategy {self.name!r} evaluates models; it does not combine outputs")


class StrategyWrapper(Strategy):
    """A strategy around another: every part is the inner strategy's unless the wrapper overrides it.

    The pattern for what composes around an averaging strategy without the orchestrator knowing
    (differential privacy, secure aggregation, robust aggregation), as Flower's
    `DifferentialPrivacyServerSideFixedClipping(strategy, ...)`: subclass and override what changes.

    Example:
        >>> class Median(StrategyWrapper):  # the coordinate-wise median instead of the mean
        ...     def begin(self, round, state):
        ...         return None  # needs every update at once: list aggregation
        ...     def aggregate(self, round, state, results):
        ...         return ServerState({GLOBAL: median([r.weights for r in results])}, state.extra)
        >>> strategy = Median(FedAvg())  # doctest: +SKIP
    """

    def __init__(self, inner: Strategy):
        self.inner = inner

    @property  # type: ignore[override]
    def name(self) -> str:
        return self.inner.name

    @property  # type: ignore[override]
    def simulation_only(self) -> bool:
        return self.inner.simulation_only

    @property  # type: ignore[override]
    def evaluation(self) -> Literal["models", "outputs"]:
        return self.inner.evaluation

    @property  # type: ignore[override]
    def records_order(self) -> bool:
        return self.inner.records_order

    def initial_state(self, weights: Weights, sites: Sequence[str]) -> ServerState:
        return self.inner.initial_state(weights, sites)

    def configure(self, round: int, state: ServerState, sites: Sequence[str]) -> list[FitTask]:
        return self.inner.configure(round, state, sites)

    def begin(self, round: int, state: ServerState) -> Fold | None:
        return self.inner.begin(round, state)

    def prepare(self, round: int, state: ServerState, tasks: list[FitTask], channel: Channel) -> list[FitTask]:
        return self.inner.prepare(round, state, tasks, channel)

    def settle(self, round: int, fold: Fold | None, channel: Channel) -> None:
        self.inner.settle(round, fold, channel)

    def aggregate(self, round: int, state: ServerState, results: Sequence[FitResult]) -> ServerState:
        # Through this wrapper's own `begin` when it streams, so a wrapper that changes only the fold
        # changes both paths alike.
        fold = self.begin(round, state)
        return fold_all(fold, results) if fold is not None else self.inner.aggregate(round, state, results)

    def num_rounds(self, rounds: int, sites: Sequence[str]) -> int:
        return self.inner.num_rounds(rounds, sites)

    def local_names(self, weights: Weights) -> frozenset[str]:
        return self.inner.local_names(weights)

    def combine_outputs(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        return self.inner.combine_outputs(outputs)


def planned_sites(strategy: Strategy, sites: Sequence[str], rounds: int) -> list[list[str]]:
    """The sites each of the first `rounds` rounds asks, before anything runs: `configure` only samples (from
    the seed and the round), so it is asked with an empty model, whose weights it passes on unread."""
    probe = ServerState(models={GLOBAL: {}})
    return [[t.site_id for t in strategy.configure(r, probe, sites)] for r in range(rounds)]
