"""Evaluation through the transport: each named model is sent to every site's test set.

Sites return summable statistics, so the pooled test set's metrics are computed from their sum
without any per-patient output leaving a site.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedrad.codec import decode, encode
from fedrad.strategies.base import GLOBAL
from fedrad.types import DataKind, Instruction, InstructionKind, Weights


@dataclass(frozen=True)
class ModelEvaluation:
    pooled: dict[str, float]
    sites: dict[str, dict[str, float]]
    failures: dict[str, str]


def evaluate_models(
    models: Mapping[str, Weights], sites: Sequence[str], round: int, ctx
) -> dict[str, ModelEvaluation]:
    """Evaluate every model on every site's test set; `ctx` gives transport, ledger, task, job hash."""
    results = {}
    for name, weights in models.items():
        blob = encode(weights)
        instructions = [
            Instruction(round, site, InstructionKind.EVALUATE, {DataKind.WEIGHTS: blob}, job_hash=ctx.job_hash)
            for site in sites
        ]
        stats, per_site, failures = [], {}, {}
        for instruction, reply in zip(instructions, ctx.transport.dispatch(instructions), strict=True):
            ctx.ledger.record_message(round, "evaluate", reply.site_id, "received", instruction.nbytes())
            ctx.ledger.record_message(round, "evaluate", reply.site_id, "sent", reply.nbytes())
            if not reply.ok:
                failures[reply.site_id] = reply.error or "unknown error"
                continue
            site_stats = decode(reply.payload[DataKind.METRICS])
            stats.append(site_stats)
            per_site[reply.site_id] = ctx.task.metrics(site_stats)
        pooled = ctx.task.metrics({k: np.sum([s[k] for s in stats], axis=0) for k in stats[0]}) if stats else {}
        results[name] = ModelEvaluation(pooled, per_site, failures)
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
