"""The simulator: phantom (or other) sites in this process, one method at a time, results on disk.

CDS and local-only are simulation-only baselines: CDS needs every hospital's data in one place,
local-only needs no federation. All methods get the same sites, seed and budget
(rounds x local_epochs epochs of local training per site).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fedrad.config import JobConfig, for_strategy
from fedrad.data.base import SiteData, concat_splits
from fedrad.privacy.summary import privacy_summary
from fedrad.run import attack
from fedrad.run.federation import (
    FederationError,
    build_task_for,
    check_privacy,
    check_secure_aggregation,
    load_federation,
)
from fedrad.run.methods import method_extras
from fedrad.run.summary import run_summary, with_health
from fedrad.server.ledger import Ledger
from fedrad.server.orchestrator import Orchestrator, RoundRecord, RunContext
from fedrad.server.results import RunDirectory, round_line
from fedrad.server.validation import UpdateValidator
from fedrad.site.handler import Site, model_weights
from fedrad.site.state import SiteStateFile
from fedrad.strategies import central_dp, registry, robust, secure_agg
from fedrad.strategies.base import ServerState, Strategy, StrategyWrapper, planned_sites
from fedrad.strategies.baselines import POOLED
from fedrad.transport import InProcessTransport
from fedrad.types import DataKind


def build_sites(config: JobConfig) -> list[SiteData]:
    """The job's sites (fedrad.run.federation): phantom hospitals or site YAMLs, harmonised and checked."""
    return load_federation(config).sites


def build_task(config: JobConfig, sites: Sequence[SiteData] = ()):
    """The job's task (classification, segmentation or tabular), sized from the sites' data."""
    return build_task_for(config, sites)


def build_context(config: JobConfig) -> registry.BuildContext:
    """What every strategy is built from besides its section: the job's seed and training budget."""
    return registry.BuildContext(seed=config.seed, fit=config.train.fit(), rounds=config.train.rounds)


def build_strategy(config: JobConfig, method: str | None = None) -> Strategy:
    """The registered strategy `method` (default: the job's `strategy.name`) with its section of this job
    (`for_strategy`); an unknown name lists the registered ones (ValueError)."""
    config = for_strategy(config, method or config.strategy.name)
    return registry.get(config.strategy.name).build(config.strategy, build_context(config))


def with_privacy(config: JobConfig, strategy: Strategy, sites: Sequence[str], noise_seed: int) -> Strategy:
    """`strategy` as the job's `privacy` runs it: wrapped in central DP-FedAvg (`fedrad.strategies.central_dp`,
    its noise seeded by `noise_seed`) for `mode: central`; unchanged otherwise (local DP runs at the sites).
    A strategy central DP cannot wrap is a FederationError, one line (`check_privacy`)."""
    if config.privacy.mode != "central":
        return strategy
    check_privacy(for_strategy(config, strategy.name))
    rounds = strategy.num_rounds(config.train.rounds, sites)
    return central_dp.wrap(strategy, config.privacy, sites, rounds, noise_seed)


def wrapped(config: JobConfig, strategy: Strategy, sites: Sequence[str], noise_seed: int) -> Strategy:
    """`strategy` with every wrapper the job asks for, innermost first: robust aggregation
    (`strategy.aggregator`), central DP (`privacy.mode central`), secure aggregation
    (`secure_aggregation`). The simulator and the deployed server both call this, so a job runs the
    same composition in both. A combination that cannot compose is a one-line error."""
    strategy = with_robust(config, strategy)
    strategy = with_privacy(config, strategy, sites, noise_seed)
    return with_secure_aggregation(config, strategy, sites)


def with_secure_aggregation(config: JobConfig, strategy: Strategy, sites: Sequence[str]) -> Strategy:
    """`strategy` wrapped in secure aggregation when the job enables it (outermost: it sees only what the
    sites send). Refused in one line (FederationError): what cannot compose (`check_secure_aggregation`),
    and a threshold that is not a majority of every round's asked sites, or is more than they are."""
    settings = config.secure_aggregation.settings()
    if settings is None:
        return strategy
    check_secure_aggregation(for_strategy(config, strategy.name))
    rounds = strategy.num_rounds(config.train.rounds, sites)
    asked = sorted({len(plan) for plan in planned_sites(strategy, sites, rounds)})
    for count in asked:
        t = settings.threshold_for(count)
        if not count // 2 < t <= count:
            raise FederationError(f"secure_aggregation.threshold {t} must be a majority of the {count} sites a "
                                  "round asks, and at most all of them")
    return secure_agg.wrap(strategy, settings)


def update_validator(config: JobConfig) -> UpdateValidator:
    """The job's update checks (`validation:`). Under central DP the relative norm bound is off: the
    wrapper clips every update to `privacy.max_grad_norm`, which bounds each site's influence, and a
    bound that depends on the other sites' norms is not covered by the privacy accounting."""
    validator = config.validation.validator()
    return dataclasses.replace(validator, norm_multiplier=None) if config.privacy.mode == "central" else validator


def privacy_block(config: JobConfig, strategy: Strategy, records: Sequence[RoundRecord], rounds_done: int) -> dict:
    """summary.json's `privacy`: the job's mode and budget, and what each site (local) or the federation
    (central, after `rounds_done` completed rounds) spent."""
    if isinstance(strategy, central_dp.CentralDP):
        return central_dp.central_privacy_summary(strategy, rounds_done)
    return privacy_summary(config, records)


def initial_weights(task, seed: int, job: JobConfig | None = None):
    """The one shared initialisation every method and every site starts from: the task's model seeded by
    `seed`, or, when `job` has a `task.init` file (relative to its YAML's folder), that file's weights,
    checked against its `task.init_sha256` and the model's names, shapes and dtypes (`fedrad.tasks.pretrained`;
    a refusal is a FederationError, one line naming the file and the first mismatching tensor)."""
    from fedrad.tasks.pretrained import InitError, read_init

    torch.manual_seed(seed)
    weights = {k: v.copy() for k, v in model_weights(task.build_model()).items()}
    path = None if job is None else job.task.init_file(job._folder)
    if path is None:
        return weights
    try:
        return read_init(path, job.task.init_sha256, like=weights)
    except InitError as exc:
        raise FederationError(str(exc)) from None


@dataclass
class MethodRun:
    """One method on one federation, writing the results contract to `out`."""

    config: JobConfig
    method: str
    out: Path
    sites: list[SiteData]
    on_round: Callable[[RoundRecord], None] | None = None
    state_dir: Path | None = None  # each site's state in state_dir/SITE.safetensors, as deployed; None: in memory

    def __post_init__(self) -> None:
        # The job as this method runs it: its own strategy section, so config.yaml and the job hash say
        # which strategy ran with which settings (compare runs several methods on one job).
        self.config = for_strategy(self.config, self.method)

    def run(self) -> dict:
        started = time.perf_counter()
        task, strategy = build_task(self.config, self.sites), build_strategy(self.config, self.method)
        job_hash = self.config.job_hash()
        attacking = attack.attackers(self.config.attack, [d.site_id for d in self.sites])  # the last N sites
        sites = attack.poisoned(self.config.attack, self.sites, attacking, getattr(task, "num_classes", 2))
        secagg = self.config.secure_aggregation.settings()  # None: off
        site_objects = {d.site_id: Site(d, task, job_hash, self._state_file(d.site_id, job_hash), secagg)
                        for d in sites}  # fmt: skip
        ledger = Ledger(count_messages=not strategy.simulation_only)
        train_sites = list(site_objects)
        if self.method == "cds":
            pooled = SiteData(
                POOLED,
                concat_splits([d.train for d in sites]),
                concat_splits([d.val for d in sites]),
                concat_splits([d.test for d in sites]),
            )
            site_objects[POOLED] = Site(pooled, task, job_hash)
            train_sites = [POOLED]
            for d in self.sites:  # what pooling makes each hospital hand over
                ledger.record(0, "train", d.site_id, "sent", {DataKind.RAW_DATA: d.train.nbytes + d.val.nbytes})
        strategy = wrapped(self.config, strategy, train_sites, self.config.seed)
        directory = RunDirectory(self.out, self.method, self.config.to_yaml())

        final: list[ServerState] = []  # the model after the last completed round (its health is checked)

        def on_round(record: RoundRecord, state: ServerState) -> None:
            directory.on_round(record, state)
            final[:] = [state]
            if self.on_round is not None:
                self.on_round(record)

        transport = InProcessTransport(site_objects)
        hostile = None  # the attackers' replies rewritten on their way to the server (simulation only)
        if attacking:
            transport = hostile = attack.AttackTransport(transport, self.config.attack, attacking, self.config.seed)
        ctx = RunContext(transport, ledger, task, job_hash, self.config.seed,
                         validator=update_validator(self.config), declared=transport.declared_examples)
        orchestrator = Orchestrator(
            strategy, ctx, train_sites, [d.site_id for d in self.sites],
            strategy.num_rounds(self.config.train.rounds, train_sites), self.config.evaluation.every, on_round,
        )
        state = strategy.initial_state(initial_weights(task, self.config.seed, self.config), train_sites)
        interrupted = False
        try:
            orchestrator.run(state)
        except KeyboardInterrupt:
            interrupted = True
        summary = self.summary(directory, ledger, time.perf_counter() - started, interrupted)
        summary["metric"] = task.primary_metric  # what the report ranks by
        summary.update(method_extras(strategy, directory.records, train_sites))  # order, local epochs
        summary["privacy"] = privacy_block(self.config, strategy, directory.records, len(directory.records))
        summary.update(robustness_extras(self.config, strategy, attacking, hostile))  # robust, attack
        lines = [round_line(record) for record in directory.records]
        summary = with_health(summary, lines, final[-1] if final else state)  # status, status_reasons
        directory.write_summary(summary)
        if interrupted:
            raise KeyboardInterrupt
        return summary

    def _state_file(self, site_id: str, job_hash: str) -> SiteStateFile | None:
        if self.state_dir is None:
            return None
        return SiteStateFile(self.state_dir / f"{site_id}.safetensors", job_hash, site_id)

    def summary(self, directory: RunDirectory, ledger: Ledger, wall_s: float, interrupted: bool) -> dict:
        num_train = {d.site_id: d.num_train for d in self.sites}
        return run_summary(self.method, directory.records, ledger, wall_s, interrupted, num_train)



def with_robust(config: JobConfig, strategy: Strategy) -> Strategy:
    """`strategy` under its section's `strategy.aggregator` (`fedrad.strategies.robust`): unchanged for
    `mean`. Refused (FederationError, one line): an aggregator around a strategy it cannot wrap, and any
    robust aggregator with central DP (its accountant covers a clipped, noised mean, not a median or a
    selection: clipping and noise around a robust statistic are not what it proves private)."""
    section = for_strategy(config, strategy.name).strategy
    aggregator = getattr(section, "aggregator", "mean")
    if aggregator == "mean":
        return strategy
    why = robust_refusal(config, strategy.name)
    if why:
        raise FederationError(why)
    return robust.wrap(strategy, section)


def robust_refusal(config: JobConfig, method: str) -> str | None:
    """Why the job's `strategy.aggregator` cannot run with `method` (one line), or None."""
    try:
        section = for_strategy(config, method).strategy
    except ValueError as exc:  # scaffold's section refuses an aggregator other than mean
        errors = getattr(exc, "errors", None)
        first = errors()[0]["msg"].removeprefix("Value error, ") if callable(errors) else str(exc)
        return f"strategy {method!r}: {first}"
    aggregator = getattr(section, "aggregator", "mean")
    if aggregator == "mean":
        return None
    if config.privacy.mode == "central":
        return (f"strategy.aggregator {aggregator} cannot run with privacy mode 'central': the accountant covers "
                "a clipped, noised mean, not a robust statistic (use aggregator mean, or privacy.mode local)")
    return robust.refusal(method, aggregator)


def check_robust_and_attack(config: JobConfig, method: str, sites: Sequence[SiteData]) -> None:
    """Before anything runs (`fedrad run` / `compare`): the job's aggregator fits `method` and its privacy,
    one round of its updates fits `strategy.robust_max_mb`, and its attack leaves an honest site;
    FederationError, one line, otherwise."""
    why = robust_refusal(config, method)
    if why:
        raise FederationError(why)
    attack.attackers(config.attack, [d.site_id for d in sites])
    job = for_strategy(config, method)
    wrapper = with_robust(job, build_strategy(job, method))
    if isinstance(wrapper, robust.RobustAggregation):
        task = build_task(job, sites)
        try:
            wrapper.initial_state(initial_weights(task, job.seed), [d.site_id for d in sites])
        except ValueError as exc:
            raise FederationError(str(exc)) from None


def robustness_extras(
    config: JobConfig, strategy: Strategy, attacking: Sequence[str], hostile: attack.AttackTransport | None
) -> dict:
    """summary.json's `robust` (the aggregator, its parameters and, per round, what it chose or clipped;
    only for strategies with an aggregator key) and `attack` (kind, scale, attacking sites; only with one)."""
    extras: dict = {}
    section = for_strategy(config, strategy.name).strategy if strategy.name in registry.names() else None
    inner = strategy
    while isinstance(inner, StrategyWrapper) and not isinstance(inner, robust.RobustAggregation):
        inner = inner.inner
    if isinstance(inner, robust.RobustAggregation):
        extras["robust"] = inner.settings() | {"rounds": inner.rounds}
    elif section is not None and hasattr(section, "aggregator"):
        extras["robust"] = {"aggregator": "mean"}
    record = attack.attack_record(config.attack, attacking, hostile)
    if record is not None:
        extras["attack"] = record
    return extras
