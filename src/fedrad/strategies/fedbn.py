"""FedBN (Li et al. 2021): FedAvg on everything except BatchNorm, which stays at each site.

BatchNorm weights, biases and running statistics never leave a site. The server's model is the
average of the other entries plus the *initial* BatchNorm (never any site's), and every FIT and
EVALUATE instruction carries that whole model with the BatchNorm names as `keep_local`: a site
that has trained uses its own BatchNorm instead (and sends none back), while a site that has not
(never sampled, newly added, restarted without its state) starts from, and is evaluated with, the
initial BatchNorm, as in the paper. The ledger books those BatchNorm bytes as weights sent.

Example:
    >>> strategy = FedBN(FedAvgConfig(seed=0))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from fedrad.strategies.aggregate import batchnorm_names
from fedrad.strategies.base import GLOBAL, FitResult, FitTask, MeanFold, ServerState, Strategy, fold_all
from fedrad.strategies.fedavg import FedAvg, FedAvgConfig, Sampling
from fedrad.strategies.registry import BuildContext, StrategySpec, register
from fedrad.types import DataKind, Weights


def shared_part(weights: Weights) -> Weights:
    """The entries FedBN shares: everything but BatchNorm."""
    local = batchnorm_names(weights)
    return {n: a for n, a in weights.items() if n not in local}


class FedBNSection(Sampling):
    """FedAvg's sampling keys (fraction, min_sites); BatchNorm stays at each site."""

    name: Literal["fedbn"] = "fedbn"


class FedBN(Strategy):
    name = "fedbn"
    simulation_only = False

    def __init__(self, config: FedAvgConfig | None = None):
        self.config = config or FedAvgConfig()
        self._sampler = FedAvg(self.config)

    def initial_state(self, weights: Weights, sites: Sequence[str]) -> ServerState:
        return ServerState(models={GLOBAL: weights})  # its BatchNorm stays the initial one, every round

    def local_names(self, weights: Weights) -> frozenset[str]:
        """The entries each site keeps for itself: BatchNorm."""
        return frozenset(batchnorm_names(weights))

    def configure(self, round: int, state: ServerState, sites: Sequence[str]) -> list[FitTask]:
        weights = state.models[GLOBAL]
        keep = self.local_names(weights)
        return [FitTask(site, weights, self.config.fit, keep_local=keep) for site in self._sampler.sample(round, sites)]

    def begin(self, round: int, state: ServerState) -> MeanFold:
        start = state.models[GLOBAL]

        def with_initial_batchnorm(mean: Weights) -> ServerState:  # copies: the old model's buffer can go
            model = {n: mean[n] if n in mean else a.copy() for n, a in start.items()}
            return ServerState(models={GLOBAL: model}, extra=state.extra)

        return MeanFold(state, then=with_initial_batchnorm, select=shared_part, pool_batchnorm=False)

    def aggregate(self, round: int, state: ServerState, results: Sequence[FitResult]) -> ServerState:
        return fold_all(self.begin(round, state), results)


def _supports(task_kind: str) -> str | None:
    if task_kind == "tabular":
        return "fedbn keeps BatchNorm local; the tabular MLP has none"
    return None


def build(section: FedBNSection, ctx: BuildContext) -> FedBN:
    return FedBN(section.fedavg(ctx))


register(StrategySpec("fedbn", FedBNSection, build, exchanges=(DataKind.WEIGHTS,), supports=_supports))
