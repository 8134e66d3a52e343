"""FedAvg (McMahan et al. 2017): a seeded fraction of sites per round, sample-weighted averaging.

Every site starts from the one shared initialisation the orchestrator gives `initial_state`.
BatchNorm: its running mean and variance are averaged like any other floating-point entry
(sample-weighted), and num_batches_tracked gets the rounded weighted mean. FedBN keeps them local.

Example:
    >>> strategy = FedAvg(FedAvgConfig(fraction=0.5, seed=1))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedrad.strategies.base import GLOBAL, FitResult, FitTask, MeanFold, ServerState, fold_all
from fedrad.types import FitConfig, Weights


@dataclass(frozen=True)
class FedAvgConfig:
    fraction: float = 1.0  # C in the paper: share of sites asked each round
    min_sites: int = 1  # never ask fewer than this many sites
    seed: int = 0  # seeds which sites are sampled in each round
    fit: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.min_sites < 1:
            raise ValueError(f"min_sites must be at least 1, got {self.min_sites}")


class FedAvg:
    name = "fedavg"
    simulation_only = False

    def __init__(self, config: FedAvgConfig | None = None):
        self.config = config or FedAvgConfig()

    def initial_state(self, weights: Weights, sites: Sequence[str]) -> ServerState:
        return ServerState(models={GLOBAL: weights})

    def sample(self, round: int, sites: Sequence[str]) -> list[str]:
        """The sites asked in `round`: ceil(fraction * K), at least min_sites, seeded by (seed, round)."""
        k = min(len(sites), max(self.config.min_sites, math.ceil(self.config.fraction * len(sites))))
        rng = np.random.default_rng([self.config.seed, round])
        chosen = rng.choice(len(sites), size=k, replace=False)
        return [sites[i] for i in sorted(chosen)]

    def configure(self, round: int, state: ServerState, sites: Sequence[str]) -> list[FitTask]:
        weights = state.models[GLOBAL]
        return [FitTask(site, weights, self.config.fit) for site in self.sample(round, sites)]

    def begin(self, round: int, state: ServerState) -> MeanFold:
        """The round's running weighted mean; every asked site failing keeps the model."""
        return MeanFold(state)

    def aggregate(self, round: int, state: ServerState, results: Sequence[FitResult]) -> ServerState:
        return fold_all(self.begin(round, state), results)
