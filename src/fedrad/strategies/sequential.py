"""Sequential training: the model visits one site at a time, in a recorded order.

SWT (single weight transfer, Chang et al. 2018): each site once; a site trains up to `epochs`
epochs, stopping early when its validation loss plateaus (`patience`). CWT (cyclical weight
transfer): the same with a fixed number of epochs per visit, repeated for `cycles` cycles, the
order fixed or reshuffled each cycle. One orchestrator round is one visit.

Example:
    >>> swt = SequentialTraining(SequentialConfig(order=("hosp-b", "hosp-a"), fit=FitConfig(epochs=20, patience=3)))
    >>> cwt = SequentialTraining(SequentialConfig(cycles=12, reshuffle=True, seed=0))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from pydantic import Field

from fedrad.strategies.base import GLOBAL, FitResult, FitTask, ServerState, Strategy
from fedrad.strategies.registry import BuildContext, StrategySection, StrategySpec, register
from fedrad.types import DataKind, FitConfig


@dataclass(frozen=True)
class SequentialConfig:
    cycles: int = 1  # 1: SWT; more: CWT
    order: tuple[str, ...] | None = None  # the visiting order; None: seeded-random
    reshuffle: bool = False  # CWT: a new seeded order each cycle (ignored when `order` is given)
    reverse: bool = False  # visit in the reverse of the order (to measure recency bias)
    seed: int = 0
    fit: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        if self.cycles < 1:
            raise ValueError(f"cycles must be at least 1, got {self.cycles}")
        if self.order is not None and len(set(self.order)) != len(self.order):
            raise ValueError(f"order names a site twice: {list(self.order)}")


class SequentialTraining(Strategy):
    """SWT (cycles=1) or CWT (cycles>1): one site per round, the model handed from site to site."""

    records_order = True  # summary.json records every visit as `order`

    def __init__(self, config: SequentialConfig | None = None, name: str | None = None):
        self.config = config or SequentialConfig()
        self.name = name or ("swt" if self.config.cycles == 1 else "cwt")

    def num_rounds(self, rounds: int, sites: Sequence[str]) -> int:
        """One round per visit: `cycles` visits of every site (the cycles already count train.rounds)."""
        return self.config.cycles * len(sites)

    def visit_order(self, cycle: int, sites: Sequence[str]) -> list[str]:
        """The sites of one cycle in visiting order (recorded in the summary as `order`)."""
        if self.config.order is not None:
            unknown = sorted(set(self.config.order) - set(sites))
            if unknown or len(self.config.order) != len(sites):
                raise ValueError(f"order {list(self.config.order)} must name each of the sites {list(sites)} once")
            order = list(self.config.order)
        else:
            draw = cycle if self.config.reshuffle else 0
            order = [sites[i] for i in np.random.default_rng([self.config.seed, draw]).permutation(len(sites))]
        return order[::-1] if self.config.reverse else order

    def configure(self, round: int, state: ServerState, sites: Sequence[str]) -> list[FitTask]:
        cycle, step = divmod(round, len(sites))
        # the learning rate decays per cycle, not per visit: lr * lr_decay**cycle
        fit = replace(self.config.fit, lr=self.config.fit.lr_at(cycle), lr_decay=1.0)
        return [FitTask(self.visit_order(cycle, sites)[step], state.models[GLOBAL], fit)]

    def aggregate(self, round: int, state: ServerState, results: Sequence[FitResult]) -> ServerState:
        # A failed site passes the model on unchanged to the next one.
        return ServerState(models={GLOBAL: results[0].weights}, extra=state.extra) if results else state


class SwtSection(StrategySection):
    """SWT: each site once, up to train.rounds x local_epochs epochs, stopping on a validation plateau."""

    name: Literal["swt"] = "swt"
    order: list[str] | None = None  # the visiting order (every site once), or None for a seeded-random one
    patience: int = Field(3, ge=1)  # epochs without a better validation loss before moving on


class SwtReversedSection(SwtSection):
    """SWT visiting in the reverse of the order (to measure recency bias)."""

    name: Literal["swt-reversed"] = "swt-reversed"  # type: ignore[assignment]


class CwtSection(StrategySection):
    """CWT: train.rounds cycles over the sites, local_epochs epochs per visit."""

    name: Literal["cwt"] = "cwt"
    order: list[str] | None = None  # the visiting order (every site once), or None for a seeded-random one
    reshuffle: bool = False  # a new seeded order each cycle


def _order(section: SwtSection | CwtSection) -> tuple[str, ...] | None:
    return tuple(section.order) if section.order else None


def build_swt(section: SwtSection, ctx: BuildContext) -> SequentialTraining:
    """One visit per site with the whole budget (rounds x local_epochs epochs) and early stopping."""
    budget = replace(ctx.fit, epochs=ctx.rounds * ctx.local_epochs, patience=section.patience)
    reverse = section.name == "swt-reversed"
    config = SequentialConfig(order=_order(section), reverse=reverse, seed=ctx.seed, fit=budget)
    return SequentialTraining(config, name=section.name)


def build_cwt(section: CwtSection, ctx: BuildContext) -> SequentialTraining:
    config = SequentialConfig(cycles=ctx.rounds, order=_order(section), reshuffle=section.reshuffle,
                              seed=ctx.seed, fit=ctx.fit)  # fmt: skip
    return SequentialTraining(config, name="cwt")


def _one_visit_per_site(train_rounds: int, num_sites: int, section: Any) -> int:
    return num_sites


def _cycles(train_rounds: int, num_sites: int, section: Any) -> int:
    return train_rounds * num_sites


register(StrategySpec("swt", SwtSection, build_swt, exchanges=(DataKind.WEIGHTS,), rounds=_one_visit_per_site,
                      companions=("swt-reversed",)))  # fmt: skip
register(StrategySpec("swt-reversed", SwtReversedSection, build_swt, exchanges=(DataKind.WEIGHTS,),
                      rounds=_one_visit_per_site))  # fmt: skip
register(StrategySpec("cwt", CwtSection, build_cwt, exchanges=(DataKind.WEIGHTS,), rounds=_cycles))
