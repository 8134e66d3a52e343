"""The simulator: phantom (or other) sites in this process, one method at a time, results on disk.

CDS and local-only are simulation-only baselines: CDS needs every hospital's data in one place,
local-only needs no federation. All methods get the same sites, seed and budget
(rounds x local_epochs epochs of local training per site).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from fedrad.config import JobConfig
from fedrad.data.base import SiteData, concat_splits
from fedrad.data.phantom import DEFAULT_HOSPITALS, HospitalSpec, ScannerProfile, phantom_sites
from fedrad.server.evaluation import summarize
from fedrad.server.ledger import Ledger
from fedrad.server.orchestrator import Orchestrator, RoundRecord, RunContext
from fedrad.server.results import RunDirectory
from fedrad.site import Site, model_weights
from fedrad.strategies import CentralizedDataSharing, FedAvg, FedAvgConfig, LocalOnly
from fedrad.strategies.base import GLOBAL
from fedrad.strategies.baselines import POOLED
from fedrad.tasks import ClassificationTask
from fedrad.transport import InProcessTransport
from fedrad.types import DataKind


def build_sites(config: JobConfig) -> list[SiteData]:
    data = config.data
    if data.hospitals is not None:
        specs = [
            HospitalSpec(h.site_id, ScannerProfile(**h.scanner.model_dump()), h.num_patients, h.prevalence)
            for h in data.hospitals
        ]
    else:
        specs = list(DEFAULT_HOSPITALS[: data.num_sites])
    return phantom_sites(specs, seed=config.seed, size=data.image_size)


def build_task(config: JobConfig) -> ClassificationTask:
    return ClassificationTask(channels=tuple(config.task.channels))


def build_strategy(config: JobConfig, method: str):
    fit = config.train.fit()
    if method == "fedavg":
        s = config.strategy
        return FedAvg(FedAvgConfig(fraction=s.fraction, min_sites=s.min_sites, seed=config.seed, fit=fit))
    if method == "cds":
        return CentralizedDataSharing(fit)
    if method == "local":
        return LocalOnly(fit)
    raise ValueError(f"unknown method {method!r}; choose from fedavg, cds, local")


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
        task, strategy = build_task(self.config), build_strategy(self.config, self.method)
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
            self.config.train.rounds, self.config.evaluation.every, on_round,
        )
        state = strategy.initial_state(initial_weights(task, self.config.seed), train_sites)
        interrupted = False
        try:
            orchestrator.run(state)
        except KeyboardInterrupt:
            interrupted = True
        summary = self.summary(directory, ledger, time.perf_counter() - started, interrupted)
        directory.write_summary(summary)
        if interrupted:
            raise KeyboardInterrupt
        return summary

    def summary(self, directory: RunDirectory, ledger: Ledger, wall_s: float, interrupted: bool) -> dict:
        evaluated = [r for r in directory.records if r.evaluations]
        last = evaluated[-1].evaluations if evaluated else {}
        pooled, sites = summarize(last) if last else ({}, {})
        num_train = {d.site_id: d.num_train for d in self.sites}
        extra = {}
        if last and GLOBAL not in last:  # one model per site: the cross-site matrix (model x test set)
            extra["cross_site"] = {name: {"pooled": e.pooled, "sites": e.sites} for name, e in last.items()}
        return {
            "method": self.method,
            "simulation_only": self.method in ("cds", "local"),
            "rounds": len(directory.records),
            "wall_s": round(wall_s, 3),
            "interrupted": interrupted,
            "pooled": pooled,
            "sites": {s: {**m, "num_train": num_train[s]} for s, m in sites.items()},
            "failures": sum(len(r.failures) for r in directory.records),
            "ledger": ledger.summary(),
            **extra,
        }
