"""Ensemble: each site trains its own model from the shared initialisation and shares nothing.

Round 0 sends the shared initialisation; later rounds send an empty model, and each site
continues its own (fedrad.site.handler.Site keeps the model of its last fit). Nothing comes back but an
empty model. At prediction time a query goes to every site and their output probabilities are
averaged (`rule="mean"`) or put to a majority vote (`rule="vote"`): the orchestrator's ensemble
evaluation (fedrad.server.ensemble_eval) calls `combine_outputs`, and the ledger books the query
images as raw data and the members' outputs as outputs.

Example:
    >>> strategy = Ensemble(EnsembleConfig(rule="vote"))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fedrad.strategies.aggregate import majority_vote, mean_probabilities
from fedrad.strategies.base import FitResult, FitTask, ServerState
from fedrad.types import FitConfig, Weights

INIT = "init"  # the shared initialisation, the only model the server ever holds


@dataclass(frozen=True)
class EnsembleConfig:
    rule: Literal["mean", "vote"] = "mean"
    fit: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        if self.rule not in ("mean", "vote"):
            raise ValueError(f"rule must be 'mean' or 'vote', got {self.rule!r}")


class Ensemble:
    name = "ensemble"
    simulation_only = False

    def __init__(self, config: EnsembleConfig | None = None):
        self.config = config or EnsembleConfig()

    def initial_state(self, weights: Weights, sites: Sequence[str]) -> ServerState:
        return ServerState(models={INIT: weights}, extra={f"trained/{s}": np.array(0) for s in sites})

    def configure(self, round: int, state: ServerState, sites: Sequence[str]) -> list[FitTask]:
        # A site that has trained continues its own model (empty payload); one that has not
        # (round 0, or it failed so far) gets the shared initialisation.
        return [
            FitTask(s, {} if state.extra.get(f"trained/{s}", 0) else state.models[INIT], self.config.fit)
            for s in sites
        ]

    def aggregate(self, round: int, state: ServerState, results: Sequence[FitResult]) -> ServerState:
        extra = dict(state.extra) | {f"trained/{r.site_id}": np.array(1) for r in results}
        return ServerState(models=state.models, extra=extra)

    def combine_outputs(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities (N, C) from the members' (N, C) each."""
        return mean_probabilities(outputs) if self.config.rule == "mean" else majority_vote(outputs)
