"""The Task contract: what a model is, how it learns one batch, and how it is scored, per task kind.

Every task (classification, segmentation, tabular) offers the same parts, so the site, the
evaluation and the ensemble never ask which kind they serve:
- `kind` and `primary_metric` (what the summary ranks by: balanced accuracy, or Dice);
- `privacy`: the job's local DP (`fedrad.privacy.local.LocalPrivacy`) or None; when set, `build_model`
  converts the model for per-sample gradients (BatchNorm to GroupNorm), at the server and every site;
- `build_model()`, `loss(model, inputs, targets)`;
- `predict(model, inputs)`: what an ensemble member sends (class or per-pixel probabilities);
- `stats(probs, targets)`: summable statistics of given probabilities (an ensemble's combined outputs);
- `evaluate(model, inputs, targets)`: the model's statistics on a split;
- `empty_stats()`: the statistics of no examples, the keys, shapes and dtypes every site's
  evaluation reply is checked against before it is summed (`fedrad.server.site_stats`);
- `metrics(stats)`: the metrics of (summed) statistics.

Example:
    >>> from fedrad.tasks.tabular import TabularTask
    >>> isinstance(TabularTask(num_features=4), Task)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from fedrad.privacy.local import LocalPrivacy

TaskKind = Literal["classification", "segmentation", "tabular"]


@runtime_checkable
class Task(Protocol):
    kind: ClassVar[TaskKind]
    primary_metric: ClassVar[str]
    privacy: LocalPrivacy | None

    def build_model(self) -> nn.Module: ...

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def predict(self, model: nn.Module, inputs: np.ndarray) -> np.ndarray: ...

    def evaluate(self, model: nn.Module, inputs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]: ...

    def stats(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]: ...

    def empty_stats(self) -> dict[str, np.ndarray]: ...

    def metrics(self, stats: dict[str, np.ndarray]) -> dict[str, float]: ...
