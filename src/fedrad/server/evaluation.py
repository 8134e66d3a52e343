"""Evaluation through the transport: each named model is sent to every site's test set.

Sites return summable statistics, so the pooled test set's metrics are computed from their sum
without any per-patient output leaving a site. Each reply is checked first (`server/site_stats.py`):
one that failed, or whose statistics are missing or malformed, is that site's SiteFailure (phase
"evaluate") and the others are pooled without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedrad.server.site_stats import pooled_metrics, read_stats
from fedrad.strategies.base import GLOBAL
from fedrad.types import DataKind, Instruction, InstructionKind, Reply, SiteFailure, Weights


@dataclass(frozen=True)
class ModelEvaluation:
    pooled: dict[str, float]
    sites: dict[str, dict[str, float]]
    failures: list[SiteFailure]  # phase "evaluate": the sites whose statistics did not come, or were rejected


def exchange(instructions: Sequence[Instruction], round: int, ctx) -> list[Reply]:
    """Dispatch evaluation-phase instructions and book both directions, as the site asked."""
    replies = ctx.transport.dispatch(instructions)
    for instruction, reply in zip(instructions, replies, strict=True):
        ctx.ledger.record_message(round, "evaluate", instruction.site_id, "received", instruction.nbytes())
        ctx.ledger.record_message(round, "evaluate", instruction.site_id, "sent", reply.nbytes())
    return replies


def evaluate_models(
    models: Mapping[str, Weights], sites: Sequence[str], round: int, ctx,
    local_names: Callable[[Weights], frozenset[str]] | None = None,
) -> dict[str, ModelEvaluation]:
    """Evaluate every model on every site's test set; `ctx` gives transport, ledger, task, job hash.

    `local_names(model)`: the entries each site evaluates with its own values when it has them
    (FedBN's BatchNorm); a site without uses the model's.
    """
    results = {}
    for name, weights in models.items():
        blob = ctx.blobs.encode(weights)  # the form the next round's FIT sends too: serialized once
        keep = local_names(weights) if local_names is not None else frozenset()
        instructions = [
            Instruction(round, site, InstructionKind.EVALUATE, {DataKind.WEIGHTS: blob}, job_hash=ctx.job_hash,
                        keep_local=keep)
            for site in sites
        ]
        stats, per_site, failures = [], {}, []
        what = "" if name == GLOBAL else f"model {name}: "
        for instruction, reply in zip(instructions, exchange(instructions, round, ctx), strict=True):
            site = instruction.site_id  # judged as the site asked, whatever the reply claims
            site_stats = read_stats(reply, site, ctx.task, what)  # a bad reply is this site's failure
            if isinstance(site_stats, SiteFailure):
                failures.append(site_stats)
                continue
            stats.append(site_stats)
            per_site[site] = ctx.task.metrics(site_stats)
        results[name] = ModelEvaluation(pooled_metrics(ctx.task, stats), per_site, failures)
    return results


def summarize(evaluations: Mapping[str, ModelEvaluation]) -> tuple[dict, dict]:
    """(pooled, sites) for summary.json.

    One shared model: its pooled metrics and its metrics on each site. One model per site
    (local-only): pooled is the mean over site models of each model's pooled metrics, and each
    site's entry is its own model on its own test set.
    """
    if GLOBAL in evaluations:
        return evaluations[GLOBAL].pooled, evaluations[GLOBAL].sites
    keys = next(iter(evaluations.values())).pooled.keys()
    pooled = {k: float(np.mean([e.pooled[k] for e in evaluations.values() if e.pooled])) for k in keys}
    sites = {site: e.sites[site] for site, e in evaluations.items() if site in e.sites}
    return pooled, sites
