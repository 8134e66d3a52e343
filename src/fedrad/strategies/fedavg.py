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
from typing import Literal

import numpy as np
from pydantic import Field

from fedrad.strategies.base import GLOBAL, FitTask, MeanFold, ServerState, Strategy
from fedrad.strategies.registry import BuildContext, StrategySection, StrategySpec, register
from fedrad.types import DataKind, FitConfig


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


class Sampling(StrategySection):
    """The keys of every strategy that asks FedAvg's seeded share of sites each round."""

    fraction: float = Field(1.0, gt=0, le=1)  # share of sites asked per round
    min_sites: int = Field(1, ge=1)  # never ask fewer than this many sites

    def fedavg(self, ctx: BuildContext) -> FedAvgConfig:
        return FedAvgConfig(fraction=self.fraction, min_sites=self.min_sites, seed=ctx.seed, fit=ctx.fit)

    def default_quorum(self) -> int:
        return self.min_sites


class FedAvgSection(Sampling):
    """`strategy: {name: fedavg, fraction: 1.0, min_sites: 1}`"""

    name: Literal["fedavg"] = "fedavg"


class FedAvg(Strategy):
    name = "fedavg"

    def __init__(self, config: FedAvgConfig | None = None):
        self.config = config or FedAvgConfig()

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


register(StrategySpec(
    "fedavg", FedAvgSection, lambda section, ctx: FedAvg(section.fedavg(ctx)), exchanges=(DataKind.WEIGHTS,)
))
