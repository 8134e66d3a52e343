"""FedProx (Li et al. 2020): FedAvg whose sites add mu/2 * ||w - w_global||^2 to their loss.

The proximal term is applied at the site (fedrad.site.training.train_epochs) from the typed
FitConfig.prox_mu; the server side is FedAvg's.

Example:
    >>> strategy = FedProx(FedProxConfig(mu=0.01))
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from fedrad.strategies.fedavg import FedAvg, FedAvgConfig


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
