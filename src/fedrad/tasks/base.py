"""The Task contract: what a model is, how it learns one batch, and how it is scored, per task kind.

Every task (classification, segmentation, tabular) offers the same parts, so the site, the
evaluation and the ensemble never ask which kind they serve:
- `kind` and `primary_metric` (what the summary ranks by: balanced accuracy, or Dice);
- `privacy`: the job's local DP (`fedrad.privacy.local.LocalPrivacy`) or None; when set, `build_model`
  converts the model for per-sample gradients (BatchNorm to GroupNorm), at the server and every site;
- `norm` ("batch" or "group": the job's `task.norm`) and `freeze` (`task.freeze`: module-name prefixes
  whose parameters are built with `requires_grad=False`, so no site trains them); `build_model` applies
  both through `prepared`, at the server and every site alike;
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

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from fedrad.privacy.local import LocalPrivacy

TaskKind = Literal["classification", "segmentation", "tabular"]
Norm = Literal["batch", "group"]


@runtime_checkable
class Task(Protocol):
    kind: ClassVar[TaskKind]
    primary_metric: ClassVar[str]
    privacy: LocalPrivacy | None
    norm: Norm
    freeze: tuple[str, ...]

    def build_model(self) -> nn.Module: ...

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def predict(self, model: nn.Module, inputs: np.ndarray) -> np.ndarray: ...

    def evaluate(self, model: nn.Module, inputs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]: ...

    def stats(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]: ...

    def empty_stats(self) -> dict[str, np.ndarray]: ...

    def metrics(self, stats: dict[str, np.ndarray]) -> dict[str, float]: ...


class ModelSpecError(ValueError):
    """A task key the built model cannot honour (a `task.freeze` prefix that matches nothing); one line naming it."""


def group_norm(model: nn.Module) -> nn.Module:
    """Every BatchNorm of `model` replaced by the GroupNorm Opacus' `ModuleValidator.fix` makes of it
    (gcd(32, C) groups, affine as it was): the model local DP converts to, built without local DP."""
    from opacus.validators import ModuleValidator

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fix() warns about each replacement it makes
        return ModuleValidator.fix(model)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def freeze_parameters(model: nn.Module, prefixes: Sequence[str]) -> nn.Module:
    """`requires_grad=False` on every parameter whose name is, or lies under, one of `prefixes` (module
    names: "features" covers "features.0.weight"). A prefix that matches no parameter, or prefixes that
    leave nothing to train, are a ModelSpecError naming the key `task.freeze`."""
    if not prefixes:
        return model
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(_under(name, prefix) for name in names):
            modules = sorted({name.split(".", 1)[0] for name in names})
            raise ModelSpecError(f"job key 'task.freeze': {prefix!r} matches no parameter of the model (its "
                                 f"modules: {', '.join(modules)}; parameters such as {names[0]!r})")
    for name, parameter in model.named_parameters():
        if any(_under(name, prefix) for prefix in prefixes):
            parameter.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelSpecError(f"job key 'task.freeze': {list(prefixes)} freezes every parameter of the model: "
                             "nothing would train")
    return model


def prepared(model: nn.Module, task) -> nn.Module:
    """What every task's `build_model` does to its freshly built network, in this order: `task.norm`
    "group" (BatchNorm to GroupNorm), local DP's conversion (`task.privacy`), then `task.freeze`. The
    order makes the model of a `norm: group` job the same with and without local DP, and freezes the
    parameters of the model as it trains."""
    if task.norm == "group":
        model = group_norm(model)
    if task.privacy is not None:
        model = task.privacy.convert(model)  # BatchNorm -> GroupNorm, no in-place activations
    return freeze_parameters(model, task.freeze)
