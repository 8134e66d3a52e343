"""Image classification: a small BatchNorm CNN, cross-entropy, accuracy / balanced accuracy / AUC."""

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


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU-pool stages, global average pooling, one linear layer.

    BatchNorm is there on purpose: scanner shifts between hospitals move its statistics, which is
    what FedBN (Li et al. 2021) keeps local. Global pooling lets a lesion be found anywhere.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Per-image standardisation: scanners differ in gain and offset, the lesion does not.
        x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-6)
        return self.head(self.features(x).amax(dim=(2, 3)))


@dataclass(frozen=True)
class ClassificationTask:
    """Lesion present / absent (or any C-class label) from images of shape (C, H, W)."""

    kind: ClassVar[TaskKind] = "classification"
    primary_metric: ClassVar[str] = "balanced_accuracy"
    in_channels: int = 1
    num_classes: int = 2
    channels: tuple[int, ...] = (16, 32, 64)
    privacy: LocalPrivacy | None = None  # local DP on: the model is converted for per-sample gradients
    norm: Norm = "batch"  # task.norm: "group" builds GroupNorm where BatchNorm would be
    freeze: tuple[str, ...] = ()  # task.freeze: module-name prefixes whose parameters are not trained

    def build_model(self) -> nn.Module:
        return prepared(SmallCNN(self.in_channels, self.num_classes, self.channels), self)  # norm, DP, freeze

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(inputs), targets)

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities (N, num_classes), float32, in batches of 256."""
        model.eval()
        probs = [
            torch.softmax(model(torch.from_numpy(inputs[i : i + 256])), dim=1).numpy()
            for i in range(0, len(inputs), 256)
        ]
        return np.concatenate(probs).astype(np.float32)

    def evaluate(self, model: nn.Module, inputs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        """Summable statistics of the model on one split (see fedrad.tasks.metrics)."""
        return self.stats(self.predict(model, inputs), targets)

    def stats(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        """Summable statistics of given probabilities (an ensemble's combined outputs, say)."""
        return classification_stats(probs, targets, self.num_classes)

    def empty_stats(self) -> dict[str, np.ndarray]:
        """What a site's evaluation statistics look like (checked on every reply, then summed)."""
        return empty_classification_stats(self.num_classes)

    def metrics(self, stats: dict[str, np.ndarray]) -> dict[str, float]:
        return classification_metrics(stats)
