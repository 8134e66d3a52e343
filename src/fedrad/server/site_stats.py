"""A site's evaluation statistics, parsed as hostile bytes: a bad reply is that site's failure, not the run's end.

Every evaluation reply (of a model, `server/evaluation.py`, or of an ensemble's combined outputs,
`server/ensemble_eval.py`) is checked against the task's `empty_stats()`, the statistics of no
examples, before it is summed into the pooled metrics:
1) the reply is not a failure (its kind is kept: timeout, dropped, refused, error, ...);
2) it comes from the site that was asked;
3) it carries METRICS, and they decode;
4) they have the task's keys, each with the task's shape and a number dtype (integer counts stay
   integer);
5) every value is finite, not negative (they are counts and sums of counts) and at most MAX_STAT,
   so that the sum over any number of sites a federation has stays exact within int64.
A reply failing 2) to 5) is REJECTED, with the reason. An accepted reply's statistics come back in
the task's dtypes (a site's uint64 counts summed with another's int64 would turn float).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedrad.codec import CodecError, decode
from fedrad.types import DataKind, FailureKind, Reply, SiteFailure

Stats = dict[str, np.ndarray]
MAX_STAT = 2**48  # more pixels than any hospital's test set holds; 32,768 such sites still sum within int64


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
        return f"the reply names site {str(reply.site_id)[:64]!r}"
    blob = reply.payload.get(DataKind.METRICS)
    if blob is None:  # 3)
        return "the reply carries no metrics"
    try:
        stats = decode(blob)
    except CodecError as exc:
        return f"unreadable metrics: {exc}"
    if set(stats) != set(template):  # 4)
        return f"metrics {_names(stats)}, expected {sorted(template)}"
    checked = {}
    for name, expected in template.items():
        array = stats[name]
        if array.shape != expected.shape:
            return f"metrics {name!r}: shape {list(array.shape)}, expected {list(expected.shape)}"
        allowed = "iu" if expected.dtype.kind in "iu" else "iuf"
        if array.dtype.kind not in allowed:
            return f"metrics {name!r}: dtype {array.dtype}, expected {expected.dtype}"
        values = array.astype(np.float64)  # exact for every count up to 2**53, and for MAX_STAT
        bad = int(np.count_nonzero(~np.isfinite(values) | (values < 0)))
        if bad:  # 5)
            return f"metrics {name!r}: {bad} non-finite or negative values"
        if (values > MAX_STAT).any():
            return f"metrics {name!r}: {int(np.count_nonzero(values > MAX_STAT))} values above {MAX_STAT}"
        checked[name] = array.astype(expected.dtype)
    return checked


def _names(stats: Mapping[str, np.ndarray]) -> str:
    names = sorted(stats)
    return str(names) if len(names) <= 8 else f"{str(names[:8])[:-1]}, ... ({len(names)} names)]"


def pooled_metrics(task, stats: list[Stats]) -> dict[str, float]:
    """The pooled test set's metrics from the sites' summed statistics ({} when no site delivered)."""
    return task.metrics({k: np.sum([s[k] for s in stats], axis=0) for k in stats[0]}) if stats else {}
