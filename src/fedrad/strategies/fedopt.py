"""Server optimisers on the pseudo-gradient (Reddi et al. 2021): FedAvgM and FedAdam.

Each round the sites train as in FedAvg; the server forms delta = x - mean(y_i) over the
trainable entries and steps with momentum (FedAvgM) or Adam (FedAdam); BatchNorm running
statistics take FedAvg's pooled values. The moments live in ServerState.extra as "m/NAME", "v/NAME".

Example:
    >>> strategy = FedOpt(FedOptConfig(optimizer="adam", server_lr=0.01))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from fedrad.strategies.aggregate import (
    adam_step,
    momentum_step,
    pseudo_gradient,
    trainable_names,
)
from fedrad.strategies.base import GLOBAL, FitTask, MeanFold, ServerState, Strategy
from fedrad.strategies.fedavg import FedAvg, FedAvgConfig, Sampling
from fedrad.strategies.registry import BuildContext, StrategySpec, register
from fedrad.types import DataKind, Weights


@dataclass(frozen=True)
class FedOptConfig:
    optimizer: Literal["momentum", "adam"] = "adam"
    server_lr: float = 0.01  # eta; FedAvgM with server_lr=1, beta=0 is FedAvg
    beta1: float = 0.9  # momentum (FedAvgM) or Adam's first moment
    beta2: float = 0.99  # Adam's second moment
    tau: float = 1e-3  # Adam's adaptivity floor
    fedavg: FedAvgConfig = field(default_factory=FedAvgConfig)

    def __post_init__(self) -> None:
        if self.optimizer not in ("momentum", "adam"):
            raise ValueError(f"optimizer must be 'momentum' or 'adam', got {self.optimizer!r}")
        if not self.server_lr > 0:
            raise ValueError(f"server_lr must be positive, got {self.server_lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau}")


class ServerOptSection(Sampling):
    """FedAvg's sampling keys and the server optimiser's step."""

    server_lr: float = Field(0.01, gt=0)  # eta (FedAvgM with 1.0 and momentum 0 is FedAvg)
    server_momentum: float = Field(0.9, ge=0, lt=1)  # FedAvgM's beta, FedAdam's beta1

    def fedopt(self, optimizer: Literal["momentum", "adam"], ctx: BuildContext) -> FedOptConfig:
        return FedOptConfig(optimizer, self.server_lr, beta1=self.server_momentum, fedavg=self.fedavg(ctx))


class FedAvgMSection(ServerOptSection):
    name: Literal["fedavgm"] = "fedavgm"


class FedAdamSection(ServerOptSection):
    name: Literal["fedadam"] = "fedadam"


class FedOpt(Strategy):
    def __init__(self, config: FedOptConfig | None = None):
        self.config = config or FedOptConfig()
        self.name = "fedadam" if self.config.optimizer == "adam" else "fedavgm"
        self._sampler = FedAvg(self.config.fedavg)

    def initial_state(self, weights: Weights, sites: Sequence[str]) -> ServerState:
        zeros = {n: np.zeros(weights[n].shape) for n in trainable_names(weights)}
        extra = {f"m/{n}": z for n, z in zeros.items()}
        if self.config.optimizer == "adam":
            extra |= {f"v/{n}": z for n, z in zeros.items()}
        return ServerState(models={GLOBAL: weights}, extra=extra)

    def configure(self, round: int, state: ServerState, sites: Sequence[str]) -> list[FitTask]:
        weights = state.models[GLOBAL]
        return [FitTask(site, weights, self.config.fedavg.fit) for site in self._sampler.sample(round, sites)]

    def begin(self, round: int, state: ServerState) -> MeanFold:
        return MeanFold(state, lambda averaged: self._step(state, averaged))

    def _step(self, state: ServerState, averaged: Weights) -> ServerState:
        """The server optimiser's step along the pseudo-gradient x - mean(y_i)."""
        c, current = self.config, state.models[GLOBAL]
        names = trainable_names(current)
        delta = pseudo_gradient(current, averaged, names)
        m = {n: state.extra[f"m/{n}"] for n in names}
        if c.optimizer == "adam":
            v = {n: state.extra[f"v/{n}"] for n in names}
            stepped, m, v = adam_step(current, delta, m, v, c.server_lr, c.beta1, c.beta2, c.tau)
            extra = {f"m/{n}": m[n] for n in names} | {f"v/{n}": v[n] for n in names}
        else:
            stepped, m = momentum_step(current, delta, m, c.server_lr, c.beta1)
            extra = {f"m/{n}": m[n] for n in names}
        return ServerState(models={GLOBAL: {**averaged, **stepped}}, extra=extra)


register(StrategySpec(
    "fedavgm", FedAvgMSection, lambda s, ctx: FedOpt(s.fedopt("momentum", ctx)), exchanges=(DataKind.WEIGHTS,)
))
register(StrategySpec(
    "fedadam", FedAdamSection, lambda s, ctx: FedOpt(s.fedopt("adam", ctx)), exchanges=(DataKind.WEIGHTS,)
))
