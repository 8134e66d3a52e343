"""Ensemble: each site trains its own model from the shared initialisation and shares nothing.

Every entry is `keep_local`: a member never leaves its site. A site that has not delivered a fit
yet (round 0, a newly added site) or did not deliver its last one is sent the shared
initialisation; the others an empty model, and each continues its own (the site's state,
fedrad.site.state). A site sent an empty model that has no member (its state is gone) refuses
with MissingState, gets the initialisation next round and starts over; one that has a member
ignores an initialisation it is sent. Nothing comes back but an empty model. At prediction time
a query goes to every site and their output probabilities are averaged (`rule="mean"`) or put
to a majority vote (`rule="vote"`): the orchestrator's ensemble evaluation
(fedrad.server.ensemble_eval) calls `combine_outputs`, and the ledger books the query images as
raw data and the members' outputs as outputs.

Example:
    >>> strategy = Ensemble(EnsembleConfig(rule="vote"))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fedrad.strategies.aggregate import majority_vote, mean_probabilities
from fedrad.strategies.base import FitResult, FitTask, ServerState, Strategy
from fedrad.strategies.registry import BuildContext, StrategySection, StrategySpec, register
from fedrad.types import DataKind, FitConfig, Weights

INIT = "init"  # the shared initialisation, the only model the server ever holds


@dataclass(frozen=True)
class EnsembleConfig:
    rule: Literal["mean", "vote"] = "mean"
    fit: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        if self.rule not in ("mean", "vote"):
            raise ValueError(f"rule must be 'mean' or 'vote', got {self.rule!r}")


class EnsembleSection(StrategySection):
    name: Literal["ensemble"] = "ensemble"
    ensemble_rule: Literal["mean", "vote"] = "mean"  # average the members' probabilities, or majority vote


class Ensemble(Strategy):
    name = "ensemble"
    simulation_only = False
    evaluation = "outputs"  # the orchestrator evaluates through combine_outputs (server/ensemble_eval.py)

    def __init__(self, config: EnsembleConfig | None = None):
        self.config = config or EnsembleConfig()

    def initial_state(self, weights: Weights, sites: Sequence[str]) -> ServerState:
        return ServerState(models={INIT: weights}, extra={f"trained/{s}": np.array(0) for s in sites})

    def local_names(self, weights: Weights) -> frozenset[str]:
        """Every entry: each site keeps its whole member."""
        return frozenset(weights)

    def configure(self, round: int, state: ServerState, sites: Sequence[str]) -> list[FitTask]:
        # A site that delivered its last fit continues its own model (empty payload); any other
        # (round 0, newly added, failed or lost its state) gets the shared initialisation.
        init = state.models[INIT]
        keep = self.local_names(init)
        return [
            FitTask(s, {} if state.extra.get(f"trained/{s}", 0) else init, self.config.fit, keep_local=keep)
            for s in sites
        ]

    def aggregate(self, round: int, state: ServerState, results: Sequence[FitResult]) -> ServerState:
        # `trained/SITE`: the site delivered its last fit (every site is asked every round).
        delivered = {r.site_id for r in results}
        flags = [k for k in state.extra if k.startswith("trained/")] + [f"trained/{s}" for s in delivered]
        extra = dict(state.extra) | {k: np.array(int(k.removeprefix("trained/") in delivered)) for k in flags}
        return ServerState(models=state.models, extra=extra)

    def combine_outputs(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities (N, C) from the members' (N, C) each."""
        return mean_probabilities(outputs) if self.config.rule == "mean" else majority_vote(outputs)


def build(section: EnsembleSection, ctx: BuildContext) -> Ensemble:
    return Ensemble(EnsembleConfig(rule=section.ensemble_rule, fit=ctx.fit))


# The init goes out once; at prediction time the query images and the members' outputs travel.
register(StrategySpec(
    "ensemble", EnsembleSection, build, exchanges=(DataKind.WEIGHTS, DataKind.RAW_DATA, DataKind.OUTPUTS)
))
