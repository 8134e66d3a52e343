"""Evaluation through the transport: a bad METRICS reply is that site's failure, and the run goes on."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from fedrad.codec import decode, encode
from fedrad.run.simulate import MethodRun, build_sites, build_task, initial_weights
from fedrad.server.evaluation import evaluate_models
from fedrad.server.ledger import Ledger
from fedrad.server.orchestrator import RunContext
from fedrad.site.handler import Site
from fedrad.strategies.base import GLOBAL
from fedrad.transport.inprocess import InProcessTransport
from fedrad.types import DataKind, FailureKind, InstructionKind, Reply


def test_an_evaluation_reply_without_metrics_is_that_sites_evaluation_failure_and_the_run_goes_on(
    tiny_config, tmp_path, monkeypatch
):
    original = Site._evaluate

    def evaluate(self, instruction):
        if self.site_id == "s2":  # statistics lost on the way: a reply with no payload
            return Reply(instruction.round, self.site_id, instruction.kind, num_examples=len(self.data.test))
        return original(self, instruction)

    monkeypatch.setattr(Site, "_evaluate", evaluate)
    summary = MethodRun(tiny_config, "fedavg", tmp_path, build_sites(tiny_config)).run()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == tiny_config.train.rounds
    for line in lines:
        assert line["failures"] == [{"site_id": "s2", "kind": "rejected", "phase": "evaluate",
                                     "reason": "site s2: evaluation rejected: the reply carries no metrics"}]
        assert set(line["train"]) == {"s1", "s2", "s3"} and set(line["sites"]) == {"s1", "s3"}
    assert summary["failures"] == tiny_config.train.rounds  # evaluation failures count with training ones
    assert summary["pooled"]["num_test"] == sum(len(d.test) for d in build_sites(tiny_config) if d.site_id != "s2")
    assert summary["status"] == "degraded"
    assert "site s2: rejected in evaluation, rounds 0-1: evaluation rejected: the reply carries no metrics" in (
        summary["status_reasons"])


class _Tampering:
    """A real site whose replies of one kind are rewritten by `tamper(reply)`: a hostile hospital."""

    def __init__(self, site: Site, kind: InstructionKind, tamper):
        self.site, self.site_id, self.kind, self.tamper = site, site.site_id, kind, tamper

    def handle(self, instruction):
        reply = self.site.handle(instruction)
        return self.tamper(reply) if instruction.kind == self.kind else reply


def _metrics(reply: Reply, blob: bytes) -> Reply:
    return dataclasses.replace(reply, payload={DataKind.METRICS: blob})


def _inflated(reply: Reply) -> Reply:  # every count 2**62: four such sites would wrap int64 when summed
    stats = decode(reply.payload[DataKind.METRICS])
    return _metrics(reply, encode({name: np.full_like(array, 2**62) for name, array in stats.items()}))


_NESTED = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HOSTILE_EVALUATIONS = {
    "no metrics": (lambda r: dataclasses.replace(r, payload={}), "the reply carries no metrics"),
    "another site": (lambda r: dataclasses.replace(r, site_id="s1"), "the reply names site 's1'"),
    "nested header": (lambda r: _metrics(r, len(_NESTED).to_bytes(8, "little") + _NESTED), "unreadable metrics"),
    "huge counts": (_inflated, "metrics 'confusion': 4 values above"),
}


@pytest.mark.parametrize("hostile", sorted(HOSTILE_EVALUATIONS))
def test_a_hostile_evaluation_reply_is_that_sites_rejected_failure_and_the_others_are_pooled(tiny_config, hostile):
    # Prepare: three real sites; s2 rewrites its evaluation reply
    task, data = build_task(tiny_config), build_sites(tiny_config)
    tamper, reason = HOSTILE_EVALUATIONS[hostile]
    sites = {d.site_id: Site(d, task) for d in data}
    sites["s2"] = _Tampering(sites["s2"], InstructionKind.EVALUATE, tamper)
    ctx = RunContext(InProcessTransport(sites), Ledger(), task)

    # Execute
    (evaluation,) = evaluate_models({GLOBAL: initial_weights(task, 0)}, list(sites), 0, ctx).values()

    # Assert: s2 is a REJECTED evaluation failure; s1 and s3 are pooled without it
    (failure,) = evaluation.failures
    assert (failure.site_id, failure.kind, failure.phase) == ("s2", FailureKind.REJECTED, "evaluate")
    assert failure.reason.startswith(f"site s2: evaluation rejected: {reason}")
    assert set(evaluation.sites) == {"s1", "s3"}
    assert evaluation.pooled["num_test"] == sum(len(d.test) for d in data if d.site_id != "s2")
