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
from typing import Any, Literal

import numpy as np
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

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


Aggregator = Literal["mean", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound"]
ROBUST_KEYS = ("aggregator", "trimmed_beta", "krum_f", "multikrum_m", "norm_bound", "robust_max_mb")


class Sampling(StrategySection):
    """The keys of every strategy that asks FedAvg's seeded share of sites each round, and how the
    replies are combined (`aggregator`: robust aggregation, `fedrad.strategies.robust`, docs/robustness.md)."""

    fraction: float = Field(1.0, gt=0, le=1)  # share of sites asked per round
    min_sites: int = Field(1, ge=1)  # never ask fewer than this many sites
    # mean: the strategy's own (streamed) sample-weighted mean; the others hold every update of the round.
    aggregator: Aggregator = "mean"
    trimmed_beta: float = Field(0.1, ge=0, lt=0.5)  # trimmed_mean: share dropped at each end, per coordinate
    krum_f: int = Field(1, ge=0)  # krum, multi_krum: the hostile sites assumed; a round needs n > 2f + 2 replies
    multikrum_m: int | None = Field(None, ge=1)  # multi_krum: updates averaged; null: n - krum_f
    norm_bound: float | None = Field(None, gt=0)  # norm_bound: the L2 bound; null: the round's median norm
    robust_max_mb: float = Field(4096.0, gt=0)  # refuse when (sites asked per round) x (model MB) exceeds it

    @model_serializer(mode="wrap")
    def _robust_keys_when_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """With aggregator mean, the robust keys left at their defaults are not written (config.yaml, the job
        hash): a job that does not use robust aggregation keeps the dump, and the hash, it had before them.
        Every robust key is written once the aggregator is another one, and any key set to another value."""
        data = handler(self)
        if self.aggregator != "mean":
            return data
        fields = type(self).model_fields
        return {k: v for k, v in data.items() if k not in ROBUST_KEYS or getattr(self, k) != fields[k].default}

    @model_validator(mode="after")
    def _robust_fits_strategy(self) -> Sampling:
        if self.name == "scaffold" and self.aggregator != "mean":
            raise ValueError(f"aggregator '{self.aggregator}' cannot wrap scaffold: robust aggregation of its "
                             "control variates is not built (use aggregator: mean)")  # fmt: skip
        return self

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
