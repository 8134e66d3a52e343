"""No update can poison the model and no reply can end the run (issue 14), through the real
Orchestrator, InProcessTransport and Sites: an inflated update or example count is rejected by
default, an exception while handling a reply is that site's failure, a non-finite aggregate keeps
the previous model, and a resumed run bounds updates as the uninterrupted one."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from tests.tiny import tiny_job

from fedrad.codec import decode, encode
from fedrad.config import JobConfig
from fedrad.run.simulate import MethodRun, build_sites, build_strategy, build_task, initial_weights
from fedrad.server.ledger import Ledger
from fedrad.server.orchestrator import Orchestrator, RoundRecord, RunContext, norm_history
from fedrad.server.validation import NormReference, UpdateValidator, update_norm
from fedrad.site.handler import Site
from fedrad.strategies.base import GLOBAL
from fedrad.transport import InProcessTransport
from fedrad.types import DataKind, FailureKind, Instruction, InstructionKind, Reply

SENT = {"w": np.ones((2, 3), np.float32), "n": np.array(4, np.int64)}


class Poisoned(Site):
    """A real site that trains honestly, then sends every float value as `value` or claims `num_examples`."""

    value: float | None = None
    num_examples: int | None = None

    def handle(self, instruction: Instruction) -> Reply:
        reply = super().handle(instruction)
        if DataKind.WEIGHTS not in reply.payload or instruction.kind != InstructionKind.FIT:
            return reply  # evaluation stays honest
        weights = decode(reply.payload[DataKind.WEIGHTS])
        if self.value is not None:
            weights = {n: np.full_like(a, self.value) if a.dtype.kind == "f" else a for n, a in weights.items()}
        return Reply(reply.round, reply.site_id, reply.kind, {DataKind.WEIGHTS: encode(weights)},
                     self.num_examples or reply.num_examples, reply.metrics)


def _federation(config: JobConfig, poisoned: dict | None = None, validator: UpdateValidator | None = None):
    """The tiny federation's orchestrator (FedAvg), s3 a Poisoned site with `poisoned` set; and its records."""
    task, job_hash = build_task(config), config.job_hash()
    sites = {d.site_id: Site(d, task, job_hash) for d in build_sites(config)}
    if poisoned is not None:
        site = Poisoned(sites["s3"].data, task, job_hash)
        site.value, site.num_examples = poisoned.get("value"), poisoned.get("num_examples")
        sites["s3"] = site
    transport = InProcessTransport(sites)
    ctx = RunContext(transport, Ledger(), task, job_hash, config.seed, declared=transport.declared_examples,
                     validator=validator or config.validation.validator())
    records: list[tuple[RoundRecord, object]] = []
    strategy = build_strategy(config, "fedavg")
    names = list(sites)
    orchestrator = Orchestrator(strategy, ctx, names, names, config.train.rounds,
                                on_round=lambda record, state: records.append((record, state)))
    return orchestrator, strategy.initial_state(initial_weights(task, config.seed), names), records


def test_the_norm_of_a_1e30_update_is_finite_and_compared():
    received = {"w": np.full((2, 3), 1e30, np.float32), "n": SENT["n"]}
    assert math.isclose(update_norm(received, SENT), 1e30 * math.sqrt(6), rel_tol=1e-6)
    reference = NormReference(0.84, "the median update norm 0.84 of round 2")
    assert UpdateValidator().check("a", received, SENT, 10, reference) == (
        "site a: update rejected: update norm 2.45e+30 is above 10 x the median update norm 0.84 of round 2")
    huge = {"w": np.array([1.5e308, -1.5e308]), "n": SENT["n"]}  # float64: the difference overflows, the norm is inf
    assert update_norm(huge, {"w": np.array([-1.5e308, 1.5e308]), "n": SENT["n"]}) == math.inf


def test_a_count_above_the_declared_one_is_rejected_and_an_undeclared_one_is_held_to_the_cap():
    received = {"w": np.full((2, 3), 1.1, np.float32), "n": SENT["n"]}
    assert UpdateValidator().check("a", received, SENT, 10_000_000, declared=12) == (
        "site a: update rejected: num_examples 10000000 exceeds the 12 training examples its data card declares")
    assert UpdateValidator().check("a", received, SENT, 10_000_000, declared=None) is None
    assert "outside [1, 10000000]" in UpdateValidator().check("a", received, SENT, 10_000_001, declared=None)


@pytest.mark.parametrize(
    ("poison", "reason"),
    [({"value": 1e30}, "is above 10 x the norm"),  # round 0: against the model sent; round 1: the median
     ({"num_examples": 10_000_000}, "num_examples 10000000 exceeds the 12 training examples")],
)
def test_an_inflated_update_or_example_count_is_rejected_by_default(tiny_config, poison, reason):
    orchestrator, state, records = _federation(tiny_config, poison)
    final = orchestrator.run(state)

    for record, _ in records:
        assert [(f.site_id, f.kind) for f in record.failures] == [("s3", FailureKind.REJECTED)]
        assert record.failures[0].reason.startswith("site s3: update rejected: ")
        assert set(record.train_metrics) == {"s1", "s2"}
    assert reason in records[0][0].failures[0].reason
    if "value" in poison:
        assert "the median update norm" in records[1][0].failures[0].reason and "of round 0" in (
            records[1][0].failures[0].reason)
    assert all(np.isfinite(a).all() for a in final.models[GLOBAL].values() if a.dtype.kind == "f")


def test_the_honest_run_is_unchanged_by_the_bound(tiny_config, tmp_path):
    bounded = MethodRun(tiny_config, "fedavg", tmp_path / "a", build_sites(tiny_config)).run()
    off = tiny_config.model_copy(update={"validation": tiny_config.validation.model_copy(
        update={"norm_multiplier": None})})
    unbounded = MethodRun(off, "fedavg", tmp_path / "b", build_sites(off)).run()
    assert bounded["failures"] == unbounded["failures"] == 0 and bounded["status"] == unbounded["status"]
    assert bounded["pooled"] == unbounded["pooled"] and bounded["ledger"] == unbounded["ledger"]
    line = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[0])
    assert all(m["update_norm"] > 0 for m in line["train"].values())  # the server's norms, in metrics.jsonl


def test_an_exception_while_handling_a_reply_is_that_sites_failure_and_the_run_goes_on(tiny_config, monkeypatch):
    import fedrad.server.orchestrator as orchestrator_module

    real_views = orchestrator_module.views
    poisoned_blobs = []

    def views(blob):
        if blob in poisoned_blobs:
            raise OverflowError("Python int too large to convert to C ssize_t")
        return real_views(blob)

    class Forged(Site):  # its reply's bytes make the codec raise what it does not map to CodecError
        def handle(self, instruction):
            reply = super().handle(instruction)
            if DataKind.WEIGHTS in reply.payload and instruction.kind == InstructionKind.FIT:
                poisoned_blobs.append(reply.payload[DataKind.WEIGHTS])
            return reply

    monkeypatch.setattr(orchestrator_module, "views", views)
    orchestrator, state, records = _federation(tiny_config)
    site = orchestrator.ctx.transport.sites["s2"]
    orchestrator.ctx.transport.sites["s2"] = Forged(site.data, site.task, site.job_hash)
    orchestrator.run(state)

    assert len(records) == tiny_config.train.rounds
    for record, _ in records:
        [failure] = record.failures
        assert failure.site_id == "s2" and failure.kind == FailureKind.REJECTED
        assert failure.reason == ("site s2: update rejected: the reply could not be handled: "
                                  "OverflowError: Python int too large to convert to C ssize_t")
        assert set(record.train_metrics) == {"s1", "s3"} and record.evaluations


def test_a_non_finite_aggregate_keeps_the_previous_model_and_the_summary_says_so(tiny_config, tmp_path, monkeypatch):
    # with the norm bound off, a finite 3e37 everywhere passes validation and overflows the float32 sum
    class Huge(Poisoned):
        value = 3e37

    monkeypatch.setattr("fedrad.run.simulate.Site", lambda data, *args: (Huge if data.site_id == "s3" else Site)(
        data, *args))
    off = tiny_config.model_copy(update={"validation": tiny_config.validation.model_copy(
        update={"norm_multiplier": None})})
    summary = MethodRun(off, "fedavg", tmp_path, build_sites(off)).run()

    assert summary["notes"][0].startswith("round 0: the aggregate was not finite (")
    assert summary["notes"][0].endswith("); the round kept the previous model") and len(summary["notes"]) == 2
    assert summary["status"] == "degraded" and summary["notes"][0] in summary["status_reasons"]
    assert not any("diverged" in r for r in summary["status_reasons"])  # the final model is the initial one


def test_a_round_in_which_every_update_was_rejected_degrades_the_run(tiny_config, tmp_path, monkeypatch):
    from fedrad.server.validation import UpdateValidator as Validator

    real_judge = Validator.judge
    rejected_round = {"n": 0}

    def judge(self, site_id, received, sent, num_examples, reference=None, declared=None):
        verdict = real_judge(self, site_id, received, sent, num_examples, reference, declared)
        if rejected_round["n"] >= 3:  # round 1 (three sites a round): every update rejected
            return type(verdict)(f"site {site_id}: update rejected: test", verdict.norm)
        rejected_round["n"] += 1
        return verdict

    monkeypatch.setattr(Validator, "judge", judge)
    summary = MethodRun(tiny_config, "fedavg", tmp_path, build_sites(tiny_config)).run()
    assert summary["status"] == "degraded"
    assert "round 1: no update accepted; the model stood still" in summary["status_reasons"]


def test_a_resumed_run_bounds_updates_as_the_uninterrupted_one(tiny_config):
    config = JobConfig.model_validate(tiny_job(train={"rounds": 3}))
    orchestrator, state, records = _federation(config)
    orchestrator.run(state)
    lines = [{"round": r.round, "train": r.train_metrics} for r, _ in records]  # as metrics.jsonl holds them

    fresh, _, again = _federation(config)  # a restarted server: its norms are what the checkpoint's lines say
    history = norm_history(json.loads(json.dumps(lines[:2])))
    resumed = Orchestrator(fresh.strategy, fresh.ctx, fresh.train_sites, fresh.eval_sites, 3,
                           on_round=fresh.on_round, norm_history=history)
    sent = records[1][1].models[GLOBAL]
    assert resumed._reference(2, sent) == orchestrator._reference(2, sent)
    resumed.run(records[1][1], start_round=2)
    final, resumed_final = records[2][1].models[GLOBAL], again[0][1].models[GLOBAL]
    assert all(np.array_equal(final[n], resumed_final[n]) for n in final)
    assert again[0][0].train_metrics == records[2][0].train_metrics
