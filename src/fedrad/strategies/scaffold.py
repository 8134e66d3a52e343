"""SCAFFOLD (Karimireddy et al. 2020): control variates correct each site's drift.

The server holds c (one array per trainable entry, in ServerState.extra as "c/NAME") and sends it
with the model as DataKind.CONTROL; each site keeps its own c_i, steps with g + c - c_i, and
returns its new model and delta c_i (also DataKind.CONTROL, so the ledger counts both ways).
The server takes the sample-weighted mean of the models (global step size 1) and
c <- c + |S|/N * mean(delta c_i).

Example:
    >>> strategy = Scaffold(FedAvgConfig(seed=0))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from fedrad.strategies.aggregate import (
    scaffold_control_update,
    trainable_names,
    weighted_mean,
)
from fedrad.strategies.base import GLOBAL, FitResult, FitTask, ServerState, Strategy
from fedrad.strategies.fedavg import FedAvg, FedAvgConfig, Sampling
from fedrad.strategies.registry import BuildContext, StrategySpec, register
from fedrad.types import DataKind, Weights

NUM_SITES = "num_sites"  # N in the control update, kept in extra so a checkpoint is self-contained


def control_of(state: ServerState) -> Weights:
    return {k[2:]: v for k, v in state.extra.items() if k.startswith("c/")}


class ScaffoldSection(Sampling):
    """FedAvg's sampling keys (fraction, min_sites); the control variates need no settings."""

    name: Literal["scaffold"] = "scaffold"


class Scaffold(Strategy):
    name = "scaffold"
    simulation_only = False

    def __init__(self, config: FedAvgConfig | None = None):
        self.config = config or FedAvgConfig()
        self._sampler = FedAvg(self.config)

    def initial_state(self, weights: Weights, sites: Sequence[str]) -> ServerState:
        extra = {f"c/{n}": np.zeros(weights[n].shape, np.float32) for n in trainable_names(weights)}
        return ServerState(models={GLOBAL: weights}, extra={**extra, NUM_SITES: np.array(len(sites))})

    def configure(self, round: int, state: ServerState, sites: Sequence[str]) -> list[FitTask]:
        weights, control = state.models[GLOBAL], control_of(state)
        return [FitTask(s, weights, self.config.fit, control) for s in self._sampler.sample(round, sites)]

    def aggregate(self, round: int, state: ServerState, results: Sequence[FitResult]) -> ServerState:
        if not results:
            return state
        updates = [(r.weights, r.num_examples) for r in results]
        model = weighted_mean(updates, pool_batchnorm=True)
        deltas = [r.control for r in results if r.control is not None]
        control = scaffold_control_update(control_of(state), deltas, int(state.extra[NUM_SITES]))
        extra = {f"c/{n}": c for n, c in control.items()} | {NUM_SITES: state.extra[NUM_SITES]}
        return ServerState(models={GLOBAL: model}, extra=extra)


def build(section: ScaffoldSection, ctx: BuildContext) -> Scaffold:
    return Scaffold(section.fedavg(ctx))


register(StrategySpec("scaffold", ScaffoldSection, build, exchanges=(DataKind.WEIGHTS, DataKind.CONTROL)))
