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
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from fedrad.tasks.base import Norm, TaskKind, prepared
from fedrad.tasks.metrics import classification_metrics, classification_stats, empty_classification_stats

if TYPE_CHECKING:
    from fedrad.privacy.local import LocalPrivacy


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

    kind: ClassVar[TaskKind] = "tabular"
    primary_metric: ClassVar[str] = "balanced_accuracy"
    num_features: int
    num_classes: int = 2
    hidden: tuple[int, ...] = (32, 16)
    privacy: LocalPrivacy | None = None  # local DP on: the model is converted for per-sample gradients
    norm: Norm = "batch"  # task.norm: "group" builds GroupNorm where BatchNorm would be
    freeze: tuple[str, ...] = ()  # task.freeze: module-name prefixes whose parameters are not trained

    def build_model(self) -> nn.Module:
        model = MLP(self.num_features, self.num_classes, tuple(self.hidden))
        return prepared(model, self)  # local DP's conversion, task.freeze (no normalisation to change)

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(inputs), targets)

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities (N, num_classes), float32, in one pass (tabular sites are small)."""
        model.eval()
        return torch.softmax(model(torch.from_numpy(inputs)), dim=1).numpy().astype(np.float32)

    def evaluate(self, model: nn.Module, inputs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        """Summable statistics of the model on one split (the classifier's)."""
        return self.stats(self.predict(model, inputs), targets)

    def stats(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        """Summable statistics of given probabilities (an ensemble's combined outputs, say)."""
        return classification_stats(probs, targets, self.num_classes)

    def empty_stats(self) -> dict[str, np.ndarray]:
        """What a site's evaluation statistics look like (checked on every reply, then summed)."""
        return empty_classification_stats(self.num_classes)

    def metrics(self, stats: dict[str, np.ndarray]) -> dict[str, float]:
        return classification_metrics(stats)
