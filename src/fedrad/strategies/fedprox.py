"""FedProx (Li et al. 2020): FedAvg whose sites add mu/2 * ||w - w_global||^2 to their loss.

The proximal term is applied at the site (fedrad.site.training.train_epochs) from the typed
FitConfig.prox_mu; the server side is FedAvg's.

This module is the whole of a strategy, in the form every strategy takes: its config section (the
job YAML's `strategy:` block), its class, and its registration at the bottom. The only other line
it needs is its import in `fedrad/strategies/__init__.py`.

Example:
    >>> strategy = FedProx(FedProxConfig(mu=0.01))

    job.yaml:
        strategy: {name: fedprox, prox_mu: 0.01, fraction: 1.0, min_sites: 1}
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import Field

from fedrad.strategies.fedavg import FedAvg, FedAvgConfig, Sampling
from fedrad.strategies.registry import BuildContext, StrategySpec, register
from fedrad.types import DataKind


class FedProxSection(Sampling):
    """FedAvg's sampling keys (fraction, min_sites) and the proximal weight."""

    name: Literal["fedprox"] = "fedprox"
    prox_mu: float = Field(0.01, gt=0)  # FedProx's proximal weight (0 would be FedAvg)


@dataclass(frozen=True)
class FedProxConfig:
    mu: float = 0.01  # weight of the proximal term
    fedavg: FedAvgConfig = field(default_factory=FedAvgConfig)

    def __post_init__(self) -> None:
        if not self.mu > 0:
            raise ValueError(f"mu must be positive (mu = 0 is FedAvg), got {self.mu}")


class FedProx(FedAvg):
    name = "fedprox"

    def __init__(self, config: FedProxConfig | None = None):
        config = config or FedProxConfig()
        super().__init__(replace(config.fedavg, fit=replace(config.fedavg.fit, prox_mu=config.mu)))


def build(section: FedProxSection, ctx: BuildContext) -> FedProx:
    return FedProx(FedProxConfig(mu=section.prox_mu, fedavg=section.fedavg(ctx)))


register(StrategySpec("fedprox", FedProxSection, build, exchanges=(DataKind.WEIGHTS,)))
