"""Strategies decide what to ask of which sites and how to combine the replies. Pure numpy."""

from __future__ import annotations

from fedrad.strategies.base import FitResult, FitTask, ServerState, Strategy
from fedrad.strategies.baselines import CentralizedDataSharing, LocalOnly
from fedrad.strategies.ensemble import Ensemble, EnsembleConfig
from fedrad.strategies.fedavg import FedAvg, FedAvgConfig
from fedrad.strategies.fedbn import FedBN
from fedrad.strategies.fedopt import FedOpt, FedOptConfig
from fedrad.strategies.fedprox import FedProx, FedProxConfig
from fedrad.strategies.scaffold import Scaffold
from fedrad.strategies.sequential import SequentialConfig, SequentialTraining

__all__ = [
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
    "Scaffold",
    "SequentialConfig",
    "SequentialTraining",
    "ServerState",
    "Strategy",
]
