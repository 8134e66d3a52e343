"""The one registry of strategies: each is registered once, under its name, beside its class.

A `StrategySpec` says everything the rest of fedrad asks about a strategy before or around a run:
its config section (the typed `strategy:` block of a job YAML, keyed by `strategy.name`), how to
build it, how many orchestrator rounds it runs, whether only the simulator can run it, what
crosses the site boundary, which companion runs `fedrad compare` adds, and which task kinds it
cannot serve. Config validation, the CLI, the progress bars, the report and the job hash read it;
nothing else lists strategy names.

Adding a strategy is one module under `fedrad/strategies/` that ends with `register(StrategySpec(...))`,
plus its import line in `fedrad/strategies/__init__.py`.

Example:
    >>> spec = get("fedprox")
    >>> strategy = spec.build(spec.section(prox_mu=0.1), BuildContext(seed=0))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from fedrad.strategies.base import Strategy
from fedrad.types import DataKind, FitConfig


class UnknownStrategyError(ValueError):
    """A strategy name nobody registered; the message lists the registered ones."""


class StrategySection(BaseModel):
    """The base of every strategy's `strategy:` section: strict (an unknown key is an error), frozen.

    A subclass declares `name: Literal["its-name"] = "its-name"` and its own keys with their defaults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str

    def default_quorum(self) -> int:
        """The replies a round can go on with: the deployed server's default quorum (sampling strategies
        override it with their `min_sites`)."""
        return 1


@dataclass(frozen=True)
class BuildContext:
    """What a strategy is built from besides its own section: the job's seed and training budget.

    Not the JobConfig, so that strategies never import the config module.
    """

    seed: int = 0
    fit: FitConfig = field(default_factory=FitConfig)  # local training per round (epochs = train.local_epochs)
    rounds: int = 1  # train.rounds

    @property
    def local_epochs(self) -> int:
        return self.fit.epochs


def _train_rounds(train_rounds: int, num_sites: int, section: Any) -> int:
    return train_rounds


def _supports_every_task(task_kind: str) -> str | None:
    return None


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy. `build(section, ctx)` gets an instance of `section`."""

    name: str
    section: type[StrategySection]
    build: Callable[[Any, BuildContext], Strategy]
    # What crosses a site boundary to train and to predict, besides the evaluation every method runs
    # (weights out, summable statistics back): the ledger's kinds, tested against what a run books.
    exchanges: tuple[DataKind, ...]
    # Orchestrator rounds for (train.rounds, number of sites, section): for the progress bars, before a
    # run; the built strategy's `num_rounds` must agree (tested for every registered name).
    rounds: Callable[[int, int, Any], int] = _train_rounds
    simulation_only: bool = False  # baselines only the simulator can run (pooled data, no federation)
    companions: tuple[str, ...] = ()  # run right after this one by `fedrad compare` (swt: swt-reversed)
    # Why a task kind cannot run this strategy (one line), or None: refused when the job is validated.
    supports: Callable[[str], str | None] = _supports_every_task


_SPECS: dict[str, StrategySpec] = {}


def register(spec: StrategySpec) -> StrategySpec:
    """Add `spec` under its name; a second registration of one name is a programming error."""
    if spec.name in _SPECS:
        raise ValueError(f"strategy {spec.name!r} is registered twice")
    if spec.section.model_fields["name"].default != spec.name:
        raise ValueError(f"strategy {spec.name!r}: its section's name defaults to a different name")
    _SPECS[spec.name] = spec
    return spec


def get(name: str) -> StrategySpec:
    """The spec registered under `name`; an unknown name lists the registered ones."""
    spec = _SPECS.get(name)
    if spec is None:
        raise UnknownStrategyError(f"unknown strategy {name!r}; registered: {', '.join(names())}")
    return spec


def names() -> list[str]:
    """Every registered strategy name, sorted (not in import order)."""
    return sorted(_SPECS)


def specs() -> list[StrategySpec]:
    return [_SPECS[name] for name in names()]


def companion_of(name: str) -> str | None:
    """The strategy that `name` is a companion of (swt-reversed: swt), or None."""
    return next((s.name for s in _SPECS.values() if name in s.companions), None)
