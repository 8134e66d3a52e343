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

Every reply is parsed as hostile bytes before anything is combined or forwarded. Probabilities
must come from the site asked, as {"probs": a float array of at least two dimensions, finite, in
[0, 1]}, a member's of the querying site's shape; the query images as {"inputs": float32, finite,
one per probability row}, checked (without copying) before they go to the other sites, so a
querying site's garbage is its own failure, never theirs. A member failing this is left out of
that query's combination; a querying site failing it is that site's failure (REJECTED), and the
other sites are pooled without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedrad.codec import CodecError, decode, encode, views
from fedrad.server.evaluation import ModelEvaluation, exchange
from fedrad.server.site_stats import pooled_metrics, read_stats
from fedrad.strategies.base import GLOBAL
from fedrad.types import DataKind, FailureKind, Instruction, InstructionKind, Reply, SiteFailure

Combine = Callable[[Sequence[np.ndarray]], np.ndarray]


def _probs(reply: Reply, site_id: str, shape: tuple[int, ...] | None = None) -> np.ndarray | str:
    """A PREDICT reply's probabilities, or why they cannot be used (missing, unreadable, wrong shape or values)."""
    why = f"site {site_id}: outputs rejected:"
    if reply.site_id != site_id:
        return f"{why} the reply names site {str(reply.site_id)[:64]!r}"
    probs = _array(reply.payload.get(DataKind.OUTPUTS), "probs")
    if isinstance(probs, str):
        return f"{why} {probs}"
    if probs.dtype.kind != "f" or probs.ndim < 2:
        return f"{why} dtype {probs.dtype} of shape {list(probs.shape)}, expected float probabilities (N, ...)"
    if shape is not None and probs.shape != shape:
        return f"{why} shape {list(probs.shape)}, expected {list(shape)}"
    bad = int(np.count_nonzero(~((probs >= 0) & (probs <= 1))))  # NaN fails both comparisons
    if bad:
        return f"{why} {bad} values that are not probabilities (non-finite, or outside [0, 1])"
    return probs


def _images(blob: bytes | bytearray | None, site_id: str, rows: int) -> str | None:
    """Why the query images (RAW_DATA) cannot be sent to the other sites, or None; read without copying."""
    inputs = _array(blob, "inputs", copy=False)
    why = f"site {site_id}: query rejected:"
    if isinstance(inputs, str):
        return f"{why} images {inputs}"
    if inputs.dtype != np.float32 or inputs.ndim < 2 or len(inputs) != rows:
        return f"{why} images of dtype {inputs.dtype} and shape {list(inputs.shape)}, expected float32 ({rows}, ...)"
    if not np.isfinite(inputs).all():
        return f"{why} {int(np.count_nonzero(~np.isfinite(inputs)))} non-finite image values"
    return None


def _array(blob: bytes | bytearray | None, name: str, copy: bool = True) -> np.ndarray | str:
    """The one array `name` of a payload, or why not (missing, unreadable, another name)."""
    if blob is None:
        return "missing"
    try:
        arrays = decode(blob) if copy else views(blob)
    except CodecError as exc:
        return f"unreadable: {exc}"
    if set(arrays) != {name}:
        return f"carry {sorted(arrays)[:8]}, expected [{name!r}]"
    return arrays[name]


def _query(query_site: str, sites: Sequence[str], round: int, ctx, combine: Combine) -> tuple[Reply, list[SiteFailure]]:
    """Steps 1-4 for one querying site: the scoring reply (or a failed one), and the members that failed."""
    predict, rejected = InstructionKind.PREDICT, FailureKind.REJECTED
    (own,) = exchange([Instruction(round, query_site, predict, {}, job_hash=ctx.job_hash)], round, ctx)
    if not own.ok:
        return own, []
    own_probs, images = _probs(own, query_site), own.payload.get(DataKind.RAW_DATA)
    why = own_probs if isinstance(own_probs, str) else _images(images, query_site, len(own_probs))
    if why is not None:
        return Reply(round, query_site, InstructionKind.EVALUATE, error=why, error_kind=rejected), []
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
