"""What a run's summary adds about its method: local epochs per site, the curve, the visiting order.

Every method gets the same sites, seed and budget, `rounds x local_epochs` epochs of local training
per site; how each strategy spends it (SWT: one visit of up to that many epochs, CWT: `rounds`
cycles of `local_epochs` per visit) is its own module's business (`fedrad.strategies`, built
through `fedrad.strategies.registry`).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedrad.server.evaluation import summarize
from fedrad.server.orchestrator import RoundRecord
from fedrad.strategies.base import Strategy


def curve(records: Sequence[RoundRecord]) -> list[dict]:
    """Per evaluated round: the pooled metrics and the bytes moved so far (for the report's plots)."""
    points, moved = [], 0
    for record in records:
        moved += record.bytes
        if record.evaluations:
            points.append({"round": record.round, "pooled": summarize(record.evaluations)[0], "bytes": moved})
    return points


def method_extras(strategy: Strategy, records: Sequence[RoundRecord], sites: list[str]) -> dict:
    """What summary.json adds: local epochs run per site, the curve, and (SWT / CWT) the visiting order."""
    epochs: dict[str, float] = {}
    for record in records:
        for site, metrics in record.train_metrics.items():
            epochs[site] = epochs.get(site, 0.0) + metrics.get("epochs", 0.0)
    extra: dict = {"local_epochs": epochs, "curve": curve(records)}
    if strategy.records_order:
        extra["order"] = [a for r in records for a in r.asked]  # every visit, as it happened
    return extra
