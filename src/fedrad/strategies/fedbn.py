"""FedBN (Li et al. 2021): FedAvg on everything except BatchNorm, which stays at each site.

BatchNorm weights, biases and running statistics never leave a site: after the shared
initialisation (round 0 sends the whole model), the server sends and averages only the other
entries, and each site fills in its own BatchNorm from its last fit, for training and for
evaluation alike (each site is evaluated with its own BatchNorm).

Example:
    >>> strategy = FedBN(FedAvgConfig(seed=0))
"""

from __future__ import annotations

from collections.abc import Sequence

from fedrad.strategies.aggregate import batchnorm_names
from fedrad.strategies.base import GLOBAL, FitResult, FitTask, MeanFold, ServerState, fold_all
from fedrad.strategies.fedavg import FedAvg, FedAvgConfig
from fedrad.types import Weights


def shared_part(weights: Weights) -> Weights:
    """The entries FedBN shares: everything but BatchNorm."""
    local = batchnorm_names(weights)
    return {n: a for n, a in weights.items() if n not in local}


class FedBN:
    name = "fedbn"
    simulation_only = False

    def __init__(self, config: FedAvgConfig | None = None):
        self.config = config or FedAvgConfig()
        self._sampler = FedAvg(self.config)

    def initial_state(self, weights: Weights, sites: Sequence[str]) -> ServerState:
        return ServerState(models={GLOBAL: weights})  # the full initialisation, sent once in round 0

    def configure(self, round: int, state: ServerState, sites: Sequence[str]) -> list[FitTask]:
        weights = state.models[GLOBAL]
        return [FitTask(site, weights, self.config.fit) for site in self._sampler.sample(round, sites)]

    def begin(self, round: int, state: ServerState) -> MeanFold:
        return MeanFold(state, select=shared_part, pool_batchnorm=False)

    def aggregate(self, round: int, state: ServerState, results: Sequence[FitResult]) -> ServerState:
        return fold_all(self.begin(round, state), results)
