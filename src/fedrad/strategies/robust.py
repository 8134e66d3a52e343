"""Robust aggregation: an averaging strategy whose mean of the replies is replaced by a robust statistic.

`RobustAggregation(inner, aggregator, ...)` is a `StrategyWrapper` (strategies/base.py): the inner
strategy still says whom to ask and turns "the" aggregate into its next state, but the aggregate is

- `median`: the coordinate-wise median (Yin et al. 2018);
- `trimmed_mean`: the coordinate-wise mean after dropping the floor(beta n) largest and smallest values;
- `krum`: the one update closest to its n - f - 2 nearest others (Blanchard et al. 2017);
- `multi_krum`: the sample-weighted mean of the m updates with the best Krum scores (m = n - f by default);
- `norm_bound`: each update's distance from the model sent clipped to a bound (the round's median update
  norm, or `norm_bound`), then the sample-weighted mean (Sun et al. 2019);

(the math is in `strategies/aggregate.py`) handed to the inner strategy as its one reply, as central DP
does, so FedAvg / FedProx take it as the new model, FedBN adds its initial BatchNorm, and FedAvgM /
FedAdam step along it.

Memory: every aggregator but a fixed `norm_bound` needs all of the round's updates at once (`begin`
returns None: the orchestrator collects the list), so the server holds n updates instead of FedAvg's
running sum: about (n + 2) model sizes, plus one stacked copy of the largest entry while it is
aggregated. `initial_state` refuses, in one line, a job whose (sites asked per round) x (model bytes)
exceeds `robust_max_mb`. `norm_bound` with a fixed bound clips each update as it arrives and folds it
into a running sum (streamed, like FedAvg).

A round the aggregator cannot serve (Krum with n <= 2f + 2 replies, Multi-Krum with fewer than m)
raises a one-line ValueError from `aggregate`: the orchestrator keeps the previous model and notes why
(the run is then degraded). SCAFFOLD (control variates), the sequential methods, the ensemble and the
baselines are refused: there is no mean of updates to replace.

Example:
    >>> strategy = wrap(FedAvg(), FedAvgSection(aggregator="krum", krum_f=2))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedrad.strategies import aggregate
from fedrad.strategies.aggregate import WeightedSum
from fedrad.strategies.base import (
    AVERAGING,
    GLOBAL,
    FitResult,
    Fold,
    ServerState,
    Strategy,
    StrategyWrapper,
    fold_all,
    from_one_reply,
)
from fedrad.types import Weights

AGGREGATORS = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound")
REFUSED = {
    "scaffold": "also aggregates each site's control variate, whose robust aggregation is not built",
    "swt": "hands one model from site to site; there is no mean of updates to replace",
    "swt-reversed": "hands one model from site to site; there is no mean of updates to replace",
    "cwt": "hands one model from site to site; there is no mean of updates to replace",
    "ensemble": "keeps each site's model; there is no mean of updates to replace",
    "cds": "trains on the pooled data; there are no site updates to aggregate",
    "local": "trains each site alone; there are no site updates to aggregate",
}
MB = 2**20


def refusal(name: str, aggregator: str) -> str | None:
    """Why `aggregator` cannot wrap the strategy `name` (one line), or None."""
    if aggregator == "mean" or name in AVERAGING:
        return None
    why = REFUSED.get(name, "is not an averaging strategy robust aggregation knows how to wrap")
    return f"strategy.aggregator {aggregator} cannot wrap strategy {name!r}: it {why}"


class RobustAggregation(StrategyWrapper):
    """`inner` with the round's mean replaced by `aggregator` (module docstring). `rounds` records, per
    aggregated round, what the aggregator did: the updates it saw and, for Krum / Multi-Krum, the sites
    it chose, for norm bounding the bound and the sites it shortened."""

    def __init__(
        self, inner: Strategy, aggregator: str, trimmed_beta: float = 0.1, krum_f: int = 1,
        multikrum_m: int | None = None, norm_bound: float | None = None, max_mb: float = 4096.0,
    ):
        super().__init__(inner)
        if aggregator not in AGGREGATORS or aggregator == "mean":
            raise ValueError(f"robust aggregation: aggregator must be one of {', '.join(AGGREGATORS[1:])}, "
                             f"got {aggregator!r}")  # fmt: skip
        why = refusal(inner.name, aggregator)
        if why:
            raise ValueError(why)
        if not 0 <= trimmed_beta < 0.5:
            raise ValueError(f"strategy.trimmed_beta must be in [0, 0.5), got {trimmed_beta}")
        if krum_f < 0 or (multikrum_m is not None and multikrum_m < 1):
            raise ValueError(f"strategy.krum_f must be >= 0 and multikrum_m >= 1, got {krum_f}, {multikrum_m}")
        if norm_bound is not None and not norm_bound > 0:
            raise ValueError(f"strategy.norm_bound must be positive, got {norm_bound}")
        if not max_mb > 0:
            raise ValueError(f"strategy.robust_max_mb must be positive, got {max_mb}")
        self.aggregator, self.trimmed_beta, self.krum_f = aggregator, trimmed_beta, krum_f
        self.multikrum_m, self.norm_bound, self.max_mb = multikrum_m, norm_bound, max_mb
        self.rounds: list[dict[str, Any]] = []

    @property
    def streams(self) -> bool:
        """Whether the round is folded as replies arrive (only norm bounding to a fixed bound)."""
        return self.aggregator == "norm_bound" and self.norm_bound is not None

    def settings(self) -> dict[str, Any]:
        """The aggregator and the parameters it reads (summary.json's `robust`)."""
        keys = {"trimmed_mean": {"trimmed_beta": self.trimmed_beta}, "krum": {"krum_f": self.krum_f},
                "multi_krum": {"krum_f": self.krum_f, "multikrum_m": self.multikrum_m},
                "norm_bound": {"norm_bound": self.norm_bound}}  # fmt: skip
        return {"aggregator": self.aggregator, **keys.get(self.aggregator, {}), "robust_max_mb": self.max_mb}

    def initial_state(self, weights: Weights, sites: Sequence[str]) -> ServerState:
        state = self.inner.initial_state(weights, sites)
        if not self.streams:
            self.check_memory(state, sites)
        return state

    def check_memory(self, state: ServerState, sites: Sequence[str]) -> float:
        """The MB one round holds (sites asked x the bytes each sends back); ValueError, one line, past the bound."""
        tasks = self.inner.configure(0, state, sites)
        sent = max((sum(a.nbytes for n, a in t.weights.items() if n not in t.keep_local) for t in tasks), default=0)
        held = len(tasks) * sent / MB
        if held > self.max_mb:
            raise ValueError(
                f"strategy.aggregator {self.aggregator} holds every update of a round: {len(tasks)} sites x "
                f"{sent / MB:.1f} MB = {held:.0f} MB exceeds strategy.robust_max_mb {self.max_mb:g} (raise it, "
                "ask fewer sites per round, or use aggregator mean or norm_bound with a fixed norm_bound)"
            )
        return held

    def begin(self, round: int, state: ServerState) -> Fold | None:
        return BoundedFold(self, round, state) if self.streams else None

    def aggregate(self, round: int, state: ServerState, results: Sequence[FitResult]) -> ServerState:
        if self.streams:
            return fold_all(BoundedFold(self, round, state), results)
        if not results:  # every asked site failed: the model is kept, as FedAvg keeps it
            return state
        updates = [(r.weights, r.num_examples) for r in results]
        sites = [r.site_id for r in results]
        record: dict[str, Any] = {"round": round, "updates": len(results)}
        if self.aggregator == "median":
            combined = aggregate.median(updates)
        elif self.aggregator == "trimmed_mean":
            combined = aggregate.trimmed_mean(updates, self.trimmed_beta)
            record["trimmed_each_end"] = int(self.trimmed_beta * len(updates))
        elif self.aggregator in ("krum", "multi_krum"):
            m = 1 if self.aggregator == "krum" else (self.multikrum_m or len(updates) - self.krum_f)
            chosen = aggregate.krum_select(updates, self.krum_f, m)
            if self.aggregator == "krum":  # the chosen update itself (aggregate.krum), copied
                combined = {n: a.copy() for n, a in updates[chosen[0]][0].items()}
            else:  # aggregate.multi_krum, the choice kept for the record
                combined = aggregate.weighted_mean([updates[i] for i in chosen], pool_batchnorm=True)
            record["chosen"] = sorted(sites[i] for i in chosen)
        else:  # norm_bound to the round's median norm
            start = state.models[GLOBAL]
            norms = aggregate.update_norms(updates, start)
            combined, bound = aggregate.norm_bounded_mean(updates, start)
            record |= {"bound": bound, "clipped": [s for s, n in zip(sites, norms, strict=True) if n > bound]}
        self.rounds.append(record)
        return self.inner_step(round, state, combined)

    def inner_step(self, round: int, state: ServerState, combined: Weights) -> ServerState:
        """The inner strategy's next state from `combined` as its one reply (FedAvgM / FedAdam step along it)."""
        return from_one_reply(self.inner, round, state, FitResult("robust-aggregate", combined, 1))


class BoundedFold:
    """Norm bounding to a fixed bound, streamed: each update clipped as it arrives, folded into a running sum."""

    def __init__(self, robust: RobustAggregation, round: int, state: ServerState):
        self.robust, self.round, self.state = robust, round, state
        self.start = state.models[GLOBAL]
        self.sum = WeightedSum(pool_batchnorm=True)
        self.clipped: list[str] = []

    def add(self, result: FitResult, owned: bool = False) -> None:
        missing = [n for n in aggregate.float_names(result.weights) if n not in self.start]
        if missing:
            raise ValueError(f"site {result.site_id}: entries not in the model sent: {missing[:5]}")
        bound = float(self.robust.norm_bound or 0.0)
        norm = aggregate.update_norms([(result.weights, result.num_examples)], self.start)[0]
        weights = aggregate.clipped(result.weights, self.start, bound, norm)
        if norm > bound:
            self.clipped.append(result.site_id)
        self.sum.add(weights, result.num_examples, owned=owned or norm > bound)  # clipped: fresh arrays

    def finish(self) -> ServerState:
        if self.sum.count == 0:
            return self.state
        self.robust.rounds.append({"round": self.round, "updates": self.sum.count, "bound": self.robust.norm_bound,
                                   "clipped": self.clipped})  # fmt: skip
        return self.robust.inner_step(self.round, self.state, self.sum.mean())


def wrap(strategy: Strategy, section: Any) -> Strategy:
    """`strategy` under its section's `aggregator`: unchanged for `mean` (or a section without the key),
    else a RobustAggregation with the section's parameters; a strategy it cannot wrap is a ValueError (one line)."""
    aggregator = getattr(section, "aggregator", "mean")
    if aggregator == "mean":
        return strategy
    return RobustAggregation(
        strategy, aggregator, trimmed_beta=section.trimmed_beta, krum_f=section.krum_f,
        multikrum_m=section.multikrum_m, norm_bound=section.norm_bound, max_mb=section.robust_max_mb,
    )
