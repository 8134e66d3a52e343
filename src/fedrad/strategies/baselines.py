"""The review's baselines, simulation-only: centralized data sharing (CDS) and local-only training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from fedrad.strategies.base import GLOBAL, FitResult, FitTask, ServerState, Strategy
from fedrad.strategies.registry import StrategySection, StrategySpec, register
from fedrad.types import DataKind, FitConfig, Weights

POOLED = "pooled"  # the virtual site that holds every hospital's training data under CDS


class CentralizedDataSharing(Strategy):
    """CDS: every hospital's data is pooled at one place and one model trains on it.

    The simulator builds the pooled site and books each hospital's raw data in the ledger; here a
    round is one fit of `config.epochs` epochs on that site.
    """

    name = "cds"
    simulation_only = True

    def __init__(self, fit: FitConfig | None = None):
        self.fit = fit or FitConfig()

    def configure(self, round: int, state: ServerState, sites: Sequence[str]) -> list[FitTask]:
        return [FitTask(POOLED, state.models[GLOBAL], self.fit)]

    def aggregate(self, round: int, state: ServerState, results: Sequence[FitResult]) -> ServerState:
        return ServerState(models={GLOBAL: results[0].weights}) if results else state


class LocalOnly(Strategy):
    """Each hospital trains its own model from the shared initialisation and shares nothing."""

    name = "local"
    simulation_only = True

    def __init__(self, fit: FitConfig | None = None):
        self.fit = fit or FitConfig()

    def initial_state(self, weights: Weights, sites: Sequence[str]) -> ServerState:
        return ServerState(models={site: weights for site in sites})

    def configure(self, round: int, state: ServerState, sites: Sequence[str]) -> list[FitTask]:
        return [FitTask(site, state.models[site], self.fit) for site in sites]

    def aggregate(self, round: int, state: ServerState, results: Sequence[FitResult]) -> ServerState:
        models = dict(state.models)
        models.update({r.site_id: r.weights for r in results})
        return ServerState(models=models, extra=state.extra)


class CdsSection(StrategySection):
    name: Literal["cds"] = "cds"


class LocalSection(StrategySection):
    name: Literal["local"] = "local"


# What a real deployment would move: CDS each hospital's raw data, local-only nothing at all.
register(StrategySpec("cds", CdsSection, lambda section, ctx: CentralizedDataSharing(ctx.fit),
                      exchanges=(DataKind.RAW_DATA,), simulation_only=True))  # fmt: skip
register(StrategySpec("local", LocalSection, lambda section, ctx: LocalOnly(ctx.fit), exchanges=(),
                      simulation_only=True))  # fmt: skip
