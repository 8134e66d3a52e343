"""The Strategy contract: `configure` says what to ask of whom, `aggregate` combines the replies.

Strategies see weights as named numpy arrays and never touch torch, codecs or the network, so
each one can be tested alone on hand-worked numbers. The orchestrator turns a FitTask into an
Instruction (encoding, job hash, seed) and a successful Reply back into a FitResult.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

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
