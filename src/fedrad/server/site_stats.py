"""A site's evaluation statistics, parsed as hostile bytes: a bad reply is that site's failure, not the run's end.

Every evaluation reply (of a model, `server/evaluation.py`, or of an ensemble's combined outputs,
`server/ensemble_eval.py`) is checked against the task's `empty_stats()`, the statistics of no
examples, before it is summed into the pooled metrics:
1) the reply is not a failure (its kind is kept: timeout, dropped, refused, error, ...);
2) it comes from the site that was asked;
3) it carries METRICS, and they decode;
4) they have the task's keys, each with the task's shape and a number dtype (integer counts stay
   integer);
5) every value is finite and not negative (they are counts and sums of counts).
A reply failing 2) to 5) is REJECTED, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedrad.codec import CodecError, decode
from fedrad.types import DataKind, FailureKind, Reply, SiteFailure

Stats = dict[str, np.ndarray]


def read_stats(reply: Reply, site_id: str, task, what: str = "") -> Stats | SiteFailure:
    """The reply's statistics, checked against `task.empty_stats()`, or the SiteFailure (phase "evaluate")
    that stands for them. `what` prefixes the reason (the model evaluated, when there are several).
    """
    if not reply.ok:  # 1)
        return SiteFailure(site_id, what + (reply.error or "unknown error"), reply.error_kind, "evaluate")
    reason = _problem(reply, site_id, task.empty_stats())
    if isinstance(reason, str):
        return SiteFailure(site_id, f"{what}site {site_id}: evaluation rejected: {reason}", FailureKind.REJECTED,
                           "evaluate")
    return reason


def _problem(reply: Reply, site_id: str, template: Mapping[str, np.ndarray]) -> Stats | str:
    if reply.site_id != site_id:  # 2)
        return f"the reply names site {reply.site_id!r}"
    blob = reply.payload.get(DataKind.METRICS)
    if blob is None:  # 3)
        return "the reply carries no metrics"
    try:
        stats = decode(blob)
    except CodecError as exc:
        return f"unreadable metrics: {exc}"
    if set(stats) != set(template):  # 4)
        return f"metrics {sorted(stats)}, expected {sorted(template)}"
    for name, expected in template.items():
        array = stats[name]
        if array.shape != expected.shape:
            return f"metrics {name!r}: shape {list(array.shape)}, expected {list(expected.shape)}"
        allowed = "iu" if expected.dtype.kind in "iu" else "iuf"
        if array.dtype.kind not in allowed:
            return f"metrics {name!r}: dtype {array.dtype}, expected {expected.dtype}"
        values = array.astype(np.float64, copy=False)
        bad = int(np.count_nonzero(~np.isfinite(values) | (values < 0)))
        if bad:  # 5)
            return f"metrics {name!r}: {bad} non-finite or negative values"
    return stats


def pooled_metrics(task, stats: list[Stats]) -> dict[str, float]:
    """The pooled test set's metrics from the sites' summed statistics ({} when no site delivered)."""
    return task.metrics({k: np.sum([s[k] for s in stats], axis=0) for k in stats[0]}) if stats else {}
