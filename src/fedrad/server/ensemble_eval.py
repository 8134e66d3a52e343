"""Ensemble evaluation through the transport: a site's test set is queried against every member.

For each querying site q (every evaluation site in turn):
1) PREDICT to q with no payload: q hands over its test images (RAW_DATA) and its own member's
   probabilities on them (OUTPUTS);
2) PREDICT to every other site with those images (RAW_DATA): each returns its member's
   probabilities (OUTPUTS);
3) the server combines the probabilities (the strategy's `combine_outputs`: mean or vote);
4) EVALUATE to q with the combined probabilities (OUTPUTS): q scores them against its labels and
   returns summable statistics (METRICS), so labels never leave q.
The ledger books every one of these messages, so the query images show up as raw data sent by q
and received by every other site, and the members' probabilities as outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedrad.codec import CodecError, decode, encode
from fedrad.server.evaluation import ModelEvaluation, exchange
from fedrad.server.site_stats import pooled_metrics, read_stats
from fedrad.strategies.base import GLOBAL
from fedrad.types import DataKind, FailureKind, Instruction, InstructionKind, Reply, SiteFailure

Combine = Callable[[Sequence[np.ndarray]], np.ndarray]


def _probs(reply: Reply, site_id: str, shape: tuple[int, ...] | None = None) -> np.ndarray | str:
    """A PREDICT reply's probabilities, or why they cannot be used (missing, unreadable, wrong shape)."""
    try:
        probs = decode(reply.payload[DataKind.OUTPUTS])["probs"]
    except (KeyError, CodecError) as exc:
        return f"site {site_id}: outputs rejected: unreadable or missing: {exc}"
    if shape is not None and probs.shape != shape:
        return f"site {site_id}: outputs rejected: shape {list(probs.shape)}, expected {list(shape)}"
    return probs


def _query(query_site: str, sites: Sequence[str], round: int, ctx, combine: Combine) -> tuple[Reply, list[SiteFailure]]:
    """Steps 1-4 for one querying site: the scoring reply (or a failed one), and the members that failed."""
    predict, rejected = InstructionKind.PREDICT, FailureKind.REJECTED
    (own,) = exchange([Instruction(round, query_site, predict, {}, job_hash=ctx.job_hash)], round, ctx)
    if not own.ok:
        return own, []
    own_probs = _probs(own, query_site)
    if isinstance(own_probs, str) or DataKind.RAW_DATA not in own.payload:
        why = own_probs if isinstance(own_probs, str) else f"site {query_site}: query rejected: it carries no images"
        return Reply(round, query_site, InstructionKind.EVALUATE, error=why, error_kind=rejected), []
    images = own.payload[DataKind.RAW_DATA]
    peers = [s for s in sites if s != query_site]
    asks = [Instruction(round, s, predict, {DataKind.RAW_DATA: images}, job_hash=ctx.job_hash) for s in peers]
    outputs, members = [own_probs], []
    for ask, reply in zip(asks, exchange(asks, round, ctx), strict=True):
        probs = _probs(reply, ask.site_id, own_probs.shape) if reply.ok else reply.error or "unknown error"
        if isinstance(probs, str):  # left out of this query's combination, and booked as its failure
            kind = reply.error_kind if not reply.ok else rejected
            members.append(SiteFailure(ask.site_id, f"as a member for site {query_site}: {probs}", kind, "evaluate"))
        else:
            outputs.append(probs)
    combined = {DataKind.OUTPUTS: encode({"probs": combine(outputs)})}
    score = Instruction(round, query_site, InstructionKind.EVALUATE, combined, job_hash=ctx.job_hash)
    (reply,) = exchange([score], round, ctx)
    return reply, members


def evaluate_ensemble(combine: Combine, sites: Sequence[str], round: int, ctx) -> dict[str, ModelEvaluation]:
    """The ensemble on every site's test set, as one ModelEvaluation named GLOBAL (the shared predictor).

    A member that fails to answer, or answers with unusable outputs, is left out of that query's
    combination and is a failure; a querying site that fails, or whose statistics are rejected
    (`server/site_stats.py`), is a failure of the evaluation, as in `evaluate_models`.
    """
    stats, per_site, failures = [], {}, []
    for site in sites:
        reply, members = _query(site, sites, round, ctx, combine)
        failures += members
        site_stats = read_stats(reply, site, ctx.task)
        if isinstance(site_stats, SiteFailure):
            failures.append(site_stats)
            continue
        stats.append(site_stats)
        per_site[site] = ctx.task.metrics(site_stats)
    return {GLOBAL: ModelEvaluation(pooled_metrics(ctx.task, stats), per_site, failures)}
