"""The federated methods beyond FedAvg, built from a job config with the same sites, seed and budget.

Budget: every method gets `rounds x local_epochs` epochs of local training per site.
- fedavg, fedprox, fedbn, fedavgm, fedadam, scaffold: `rounds` rounds of `local_epochs` epochs;
- swt: one visit per site of up to `rounds x local_epochs` epochs, stopping early on a
  validation-loss plateau (`strategy.patience`), so at most the same budget;
- cwt: `rounds` cycles of `local_epochs` epochs per visit (one orchestrator round per visit);
- ensemble: `rounds` rounds of `local_epochs` epochs, each site on its own model.
`swt-reversed` is SWT with the visiting order reversed (to measure recency bias).
"""

from __future__ import annotations

from dataclasses import replace

from fedrad.config import JobConfig
from fedrad.server.evaluation import summarize
from fedrad.strategies.ensemble import Ensemble, EnsembleConfig
from fedrad.strategies.fedavg import FedAvgConfig
from fedrad.strategies.fedbn import FedBN
from fedrad.strategies.fedopt import FedOpt, FedOptConfig
from fedrad.strategies.fedprox import FedProx, FedProxConfig
from fedrad.strategies.scaffold import Scaffold
from fedrad.strategies.sequential import SequentialConfig, SequentialTraining

FEDERATED = ("fedprox", "fedbn", "fedavgm", "fedadam", "scaffold", "swt", "swt-reversed", "cwt", "ensemble")


def build_federated(config: JobConfig, method: str):
    """The strategy for one of FEDERATED (FedAvg and the baselines are built in fedrad.run.simulate)."""
    s, fit = config.strategy, config.train.fit()
    fedavg = FedAvgConfig(fraction=s.fraction, min_sites=s.min_sites, seed=config.seed, fit=fit)
    order = tuple(s.order) if s.order else None
    if method == "fedprox":
        return FedProx(FedProxConfig(mu=s.prox_mu, fedavg=fedavg))
    if method == "fedbn":
        return FedBN(fedavg)
    if method in ("fedavgm", "fedadam"):
        optimizer = "adam" if method == "fedadam" else "momentum"
        return FedOpt(FedOptConfig(optimizer, s.server_lr, beta1=s.server_momentum, fedavg=fedavg))
    if method == "scaffold":
        return Scaffold(fedavg)
    if method in ("swt", "swt-reversed"):
        budget = replace(fit, epochs=config.train.rounds * config.train.local_epochs, patience=s.patience)
        sequential = SequentialConfig(order=order, reverse=method == "swt-reversed", seed=config.seed, fit=budget)
        return SequentialTraining(sequential, name=method)
    if method == "cwt":
        return SequentialTraining(
            SequentialConfig(cycles=config.train.rounds, order=order, reshuffle=s.reshuffle, seed=config.seed, fit=fit)
        )
    if method == "ensemble":
        return Ensemble(EnsembleConfig(rule=s.ensemble_rule, fit=fit))
    raise ValueError(f"unknown method {method!r}")


def num_rounds(strategy, config: JobConfig, sites: list[str]) -> int:
    """Orchestrator rounds: `train.rounds`, or one per visit for SWT / CWT."""
    custom = getattr(strategy, "num_rounds", None)
    return custom(sites) if custom is not None else config.train.rounds


def curve(records) -> list[dict]:
    """Per evaluated round: the pooled metrics and the bytes moved so far (for the report's plots)."""
    points, moved = [], 0
    for record in records:
        moved += record.bytes
        if record.evaluations:
            points.append({"round": record.round, "pooled": summarize(record.evaluations)[0], "bytes": moved})
    return points


def method_extras(strategy, records, sites: list[str]) -> dict:
    """What summary.json adds: local epochs run per site, the curve, and (SWT / CWT) the visiting order."""
    epochs: dict[str, float] = {}
    for record in records:
        for site, metrics in record.train_metrics.items():
            epochs[site] = epochs.get(site, 0.0) + metrics.get("epochs", 0.0)
    extra: dict = {"local_epochs": epochs, "curve": curve(records)}
    if hasattr(strategy, "visit_order"):
        extra["order"] = [a for r in records for a in r.asked]  # every visit, as it happened
    return extra


def planned_rounds(config: JobConfig, method: str, num_sites: int) -> int:
    """How many orchestrator rounds `method` will run (for progress bars)."""
    if method in ("swt", "swt-reversed"):
        return num_sites
    return config.train.rounds * (num_sites if method == "cwt" else 1)
