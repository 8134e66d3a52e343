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
from fedrad.server.evaluation import ModelEvaluation
from fedrad.strategies.base import GLOBAL
from fedrad.types import DataKind, Instruction, InstructionKind, Reply

Combine = Callable[[Sequence[np.ndarray]], np.ndarray]


def _exchange(instructions: list[Instruction], round: int, ctx) -> list[Reply]:
    replies = ctx.transport.dispatch(instructions)
    for instruction, reply in zip(instructions, replies, strict=True):
        ctx.ledger.record_message(round, "evaluate", reply.site_id, "received", instruction.nbytes())
        ctx.ledger.record_message(round, "evaluate", reply.site_id, "sent", reply.nbytes())
    return replies


def _query(query_site: str, sites: Sequence[str], round: int, ctx, combine: Combine) -> Reply:
    """Steps 1-4 for one querying site; the reply carries its statistics or the reason it failed."""
    predict = InstructionKind.PREDICT
    (own,) = _exchange([Instruction(round, query_site, predict, {}, job_hash=ctx.job_hash)], round, ctx)
    if not own.ok:
        return own
    images = own.payload[DataKind.RAW_DATA]
    peers = [s for s in sites if s != query_site]
    asks = [Instruction(round, s, predict, {DataKind.RAW_DATA: images}, job_hash=ctx.job_hash) for s in peers]
    outputs = [decode(own.payload[DataKind.OUTPUTS])["probs"]]
    outputs += [decode(r.payload[DataKind.OUTPUTS])["probs"] for r in _exchange(asks, round, ctx) if r.ok]
    combined = {DataKind.OUTPUTS: encode({"probs": combine(outputs)})}
    score = Instruction(round, query_site, InstructionKind.EVALUATE, combined, job_hash=ctx.job_hash)
    (reply,) = _exchange([score], round, ctx)
    return reply


def evaluate_ensemble(combine: Combine, sites: Sequence[str], round: int, ctx) -> dict[str, ModelEvaluation]:
    """The ensemble on every site's test set, as one ModelEvaluation named GLOBAL (the shared predictor).

    A member that fails to answer is left out of that query's combination; a querying site that
    fails is a failure of the evaluation, as in `evaluate_models`.
    """
    stats, per_site, failures = [], {}, {}
    for site in sites:
        reply = _query(site, sites, round, ctx, combine)
        try:
            if not reply.ok:
                raise ValueError(reply.error or "unknown error")
            site_stats = decode(reply.payload[DataKind.METRICS])
        except (ValueError, KeyError, CodecError) as exc:
            failures[site] = str(exc)
            continue
        stats.append(site_stats)
        per_site[site] = ctx.task.metrics(site_stats)
    pooled = ctx.task.metrics({k: np.sum([s[k] for s in stats], axis=0) for k in stats[0]}) if stats else {}
    return {GLOBAL: ModelEvaluation(pooled, per_site, failures)}
