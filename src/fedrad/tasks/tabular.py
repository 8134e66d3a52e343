"""Tabular classification: a small MLP on standardised numeric features (the tabular CSV reader's output).

Evaluation reuses the image classifier's summable statistics (confusion matrix and score
histograms), so pooled accuracy, balanced accuracy and AUC are computed the same way.

Example:
    >>> task = TabularTask(num_features=13)
    >>> task.build_model()(torch.zeros(4, 13)).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedrad.tasks.metrics import classification_metrics, classification_stats


class MLP(nn.Module):
    """Linear-ReLU layers of the given widths, then a linear head (no BatchNorm: sites may be tiny)."""

    def __init__(self, num_features: int, num_classes: int, hidden: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        previous = num_features
        for width in hidden:
            layers += [nn.Linear(previous, width), nn.ReLU(inplace=True)]
            previous = width
        layers.append(nn.Linear(previous, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class TabularTask:
    """C-class labels from (F,) feature vectors."""

    num_features: int
    num_classes: int = 2
    hidden: tuple[int, ...] = (32, 16)
    primary_metric: str = "balanced_accuracy"

    def build_model(self) -> nn.Module:
        return MLP(self.num_features, self.num_classes, tuple(self.hidden))

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(inputs), targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, inputs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        model.eval()
        probs = torch.softmax(model(torch.from_numpy(inputs)), dim=1).numpy()
        return classification_stats(probs, targets, self.num_classes)

    def metrics(self, stats: dict[str, np.ndarray]) -> dict[str, float]:
        return classification_metrics(stats)
