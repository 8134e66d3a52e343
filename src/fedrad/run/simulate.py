"""The simulator: phantom (or other) sites in this process, one method at a time, results on disk.

CDS and local-only are simulation-only baselines: CDS needs every hospital's data in one place,
local-only needs no federation. All methods get the same sites, seed and budget
(rounds x local_epochs epochs of local training per site).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fedrad.config import JobConfig
from fedrad.data.base import SiteData, concat_splits
from fedrad.run.federation import build_task_for, load_federation
from fedrad.run.methods import FEDERATED, build_federated, method_extras, num_rounds
from fedrad.server.evaluation import summarize
from fedrad.server.ledger import Ledger
from fedrad.server.orchestrator import Orchestrator, RoundRecord, RunContext
from fedrad.server.results import RunDirectory
from fedrad.site.handler import Site, model_weights
from fedrad.strategies import CentralizedDataSharing, FedAvg, FedAvgConfig, LocalOnly
from fedrad.strategies.base import GLOBAL
from fedrad.strategies.baselines import POOLED
from fedrad.transport import InProcessTransport
from fedrad.types import DataKind


def build_sites(config: JobConfig) -> list[SiteData]:
    """The job's sites (fedrad.run.federation): phantom hospitals or site YAMLs, harmonised and checked."""
    return load_federation(config).sites


def build_task(config: JobConfig, sites: Sequence[SiteData] = ()):
    """The job's task (classification, segmentation or tabular), sized from the sites' data."""
    return build_task_for(config, sites)


def build_strategy(config: JobConfig, method: str):
    fit = config.train.fit()
    if method == "fedavg":
        s = config.strategy
        return FedAvg(FedAvgConfig(fraction=s.fraction, min_sites=s.min_sites, seed=config.seed, fit=fit))
    if method == "cds":
        return CentralizedDataSharing(fit)
    if method == "local":
        return LocalOnly(fit)
    if method in FEDERATED:
        return build_federated(config, method)
    raise ValueError(f"unknown method {method!r}; choose from fedavg, cds, local, {', '.join(FEDERATED)}")


def initial_weights(task, seed: int):
    """The one shared initialisation every method and every site starts from."""
    torch.manual_seed(seed)
    return {k: v.copy() for k, v in model_weights(task.build_model()).items()}


@dataclass
class MethodRun:
    """One method on one federation, writing the results contract to `out`."""

    config: JobConfig
    method: str
    out: Path
    sites: list[SiteData]
    on_round: Callable[[RoundRecord], None] | None = None

    def run(self) -> dict:
        started = time.perf_counter()
        task, strategy = build_task(self.config, self.sites), build_strategy(self.config, self.method)
        job_hash = self.config.job_hash()
        site_objects = {d.site_id: Site(d, task, job_hash) for d in self.sites}
        ledger = Ledger(count_messages=not strategy.simulation_only)
        train_sites = list(site_objects)
        if self.method == "cds":
            pooled = SiteData(
                POOLED,
                concat_splits([d.train for d in self.sites]),
                concat_splits([d.val for d in self.sites]),
                concat_splits([d.test for d in self.sites]),
            )
            site_objects[POOLED] = Site(pooled, task, job_hash)
            train_sites = [POOLED]
            for d in self.sites:  # what pooling makes each hospital hand over
                ledger.record(0, "train", d.site_id, "sent", {DataKind.RAW_DATA: d.train.nbytes + d.val.nbytes})
        directory = RunDirectory(self.out, self.method, self.config.to_yaml())

        def on_round(record: RoundRecord, state) -> None:
            directory.on_round(record, state)
            if self.on_round is not None:
                self.on_round(record)

        ctx = RunContext(InProcessTransport(site_objects), ledger, task, job_hash, self.config.seed)
        orchestrator = Orchestrator(
            strategy, ctx, train_sites, [d.site_id for d in self.sites],
            num_rounds(strategy, self.config, train_sites), self.config.evaluation.every, on_round,
        )
        state = strategy.initial_state(initial_weights(task, self.config.seed), train_sites)
        interrupted = False
        try:
            orchestrator.run(state)
        except KeyboardInterrupt:
            interrupted = True
        summary = self.summary(directory, ledger, time.perf_counter() - started, interrupted)
        summary["metric"] = getattr(task, "primary_metric", "balanced_accuracy")  # what the report ranks by
        summary.update(method_extras(strategy, directory.records, train_sites))  # order, local epochs
        directory.write_summary(summary)
        if interrupted:
            raise KeyboardInterrupt
        return summary

    def summary(self, directory: RunDirectory, ledger: Ledger, wall_s: float, interrupted: bool) -> dict:
        num_train = {d.site_id: d.num_train for d in self.sites}
        return run_summary(self.method, directory.records, ledger, wall_s, interrupted, num_train)


def run_summary(
    method: str, records: list[RoundRecord], ledger: Ledger, wall_s: float, interrupted: bool,
    num_train: dict[str, int] | None = None,  # None: not known (the deployed server never sees the data)
) -> dict:
    """summary.json: the same contract from the simulator and from `fedrad server`."""
    evaluated = [r for r in records if r.evaluations]
    last = evaluated[-1].evaluations if evaluated else {}
    pooled, sites = summarize(last) if last else ({}, {})
    extra = {}
    if last and GLOBAL not in last:  # one model per site: the cross-site matrix (model x test set)
        extra["cross_site"] = {name: {"pooled": e.pooled, "sites": e.sites} for name, e in last.items()}
    counts = num_train or {}
    return {
        "method": method,
        "simulation_only": method in ("cds", "local"),
        "rounds": len(records),
        "wall_s": round(wall_s, 3),
        "interrupted": interrupted,
        "pooled": pooled,
        "sites": {s: {**m, **({"num_train": counts[s]} if s in counts else {})} for s, m in sites.items()},
        "failures": sum(len(r.failures) for r in records),
        "ledger": ledger.summary(),
        **extra,
    }
