"""Strategies decide what to ask of which sites and how to combine the replies. Pure numpy.

Importing this package registers every strategy (`fedrad.strategies.registry`): each module below
ends with its `register(StrategySpec(...))`, so a new strategy is one module plus its line here.
"""

from __future__ import annotations

from fedrad.strategies import (  # noqa: F401
    baselines,
    ensemble,
    fedavg,
    fedbn,
    fedopt,
    fedprox,
    robust,
    scaffold,
    sequential,
)
from fedrad.strategies.base import FitResult, FitTask, ServerState, Strategy, StrategyWrapper
from fedrad.strategies.baselines import CentralizedDataSharing, LocalOnly
from fedrad.strategies.ensemble import Ensemble, EnsembleConfig
from fedrad.strategies.fedavg import FedAvg, FedAvgConfig
from fedrad.strategies.fedbn import FedBN
from fedrad.strategies.fedopt import FedOpt, FedOptConfig
from fedrad.strategies.fedprox import FedProx, FedProxConfig
from fedrad.strategies.registry import BuildContext, StrategySection, StrategySpec, register
from fedrad.strategies.robust import RobustAggregation
from fedrad.strategies.scaffold import Scaffold
from fedrad.strategies.sequential import SequentialConfig, SequentialTraining

__all__ = [
    "BuildContext",
    "CentralizedDataSharing",
    "Ensemble",
    "EnsembleConfig",
    "FedAvg",
    "FedAvgConfig",
    "FedBN",
    "FedOpt",
    "FedOptConfig",
    "FedProx",
    "FedProxConfig",
    "FitResult",
    "FitTask",
    "LocalOnly",
    "RobustAggregation",
    "Scaffold",
    "SequentialConfig",
    "SequentialTraining",
    "ServerState",
    "Strategy",
    "StrategySection",
    "StrategySpec",
    "StrategyWrapper",
    "register",
]
