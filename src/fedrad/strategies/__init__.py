"""Strategies decide what to ask of which sites and how to combine the replies. Pure numpy."""

from __future__ import annotations

from fedrad.strategies.base import FitResult, FitTask, ServerState, Strategy
from fedrad.strategies.baselines import CentralizedDataSharing, LocalOnly
from fedrad.strategies.fedavg import FedAvg, FedAvgConfig

__all__ = [
    "CentralizedDataSharing",
    "FedAvg",
    "FedAvgConfig",
    "FitResult",
    "FitTask",
    "LocalOnly",
    "ServerState",
    "Strategy",
]
