from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from tests.tiny import TABULAR, tabular_sites

from fedrad.codec import decode, encode
from fedrad.config import JobConfig
from fedrad.run.simulate import MethodRun, build_sites, build_task, initial_weights
from fedrad.server.ensemble_eval import evaluate_ensemble
from fedrad.server.ledger import Ledger
from fedrad.server.orchestrator import RunContext
from fedrad.site.handler import Site
from fedrad.strategies.aggregate import mean_probabilities
from fedrad.transport.inprocess import InProcessTransport
from fedrad.types import DataKind, FailureKind, Instruction, InstructionKind, Reply


def test_ensemble_evaluation_moves_the_query_images_and_outputs(tiny_config, tmp_path):
    sites = build_sites(tiny_config)
    summary = MethodRun(tiny_config, "ensemble", tmp_path, sites).run()
    ledger, rounds = summary["ledger"], tiny_config.train.rounds
    # each round, each site's test images leave it (sent) and reach the two other sites (received)
    for s in sites:
        by_site = ledger["by_site"][s.site_id]["by_kind"]
        test_bytes = s.test.inputs.nbytes
        others = sum(o.test.inputs.nbytes for o in sites if o is not s)
        assert by_site["raw_data"] >= rounds * (test_bytes + others)
    assert ledger["by_kind"]["outputs"] > 0
    assert ledger["by_phase"]["evaluate"] > 0 and set(summary["sites"]) == {"s1", "s2", "s3"}
    # training shares nothing but the initialisation (round 0) and empty models afterwards
    assert ledger["by_kind"]["weights"] < 2 * 3 * 10_000 + rounds * 3 * 200


def test_an_ensemble_on_a_tabular_job_reports_a_pooled_metric(tmp_path):
    config = JobConfig.model_validate(TABULAR | {"strategy": {"name": "ensemble"}})
    summary = MethodRun(config, "ensemble", tmp_path, tabular_sites()).run()
    assert summary["metric"] == "balanced_accuracy" and 0.0 <= summary["pooled"]["balanced_accuracy"] <= 1.0
    assert summary["pooled"]["num_test"] == 3 * 10 and set(summary["sites"]) == {"t1", "t2", "t3"}
    assert summary["ledger"]["by_kind"]["outputs"] > 0  # the members' probabilities on the query features


class _Tampering:
    """A real, trained site whose PREDICT replies are rewritten by `tamper(instruction, reply)`: a hostile member."""

    def __init__(self, site: Site, tamper):
        self.site, self.site_id, self.tamper = site, site.site_id, tamper

    def handle(self, instruction):
        reply = self.site.handle(instruction)
        return self.tamper(instruction, reply) if instruction.kind == InstructionKind.PREDICT else reply


def _outputs(reply: Reply, change) -> Reply:
    probs = decode(reply.payload[DataKind.OUTPUTS])["probs"]
    return dataclasses.replace(reply, payload={**reply.payload, DataKind.OUTPUTS: encode({"probs": change(probs)})})


def _querying(instruction) -> bool:
    return DataKind.RAW_DATA not in instruction.payload


HOSTILE_MEMBERS = {  # t2's tampering -> the failures expected, as (site, reason starting with)
    "nan outputs": (
        lambda i, r: _outputs(r, lambda p: np.full_like(p, np.nan)),
        [("t2", "as a member for site t1: site t2: outputs rejected: 20 values that are not probabilities"),
         ("t2", "site t2: outputs rejected: 20 values that are not probabilities"),
         ("t2", "as a member for site t3: site t2: outputs rejected: 20 values that are not probabilities")],
    ),
    "a row short as the querying site": (
        lambda i, r: _outputs(r, lambda p: p[:-1]) if _querying(i) else r,
        [("t2", "site t2: query rejected: images of dtype float32 and shape [10, 4], expected float32 (9, ...)")],
    ),
    "three classes as a member": (
        lambda i, r: r if _querying(i) else _outputs(r, lambda p: np.full((len(p), 3), 1 / 3, np.float32)),
        [("t2", "as a member for site t1: site t2: outputs rejected: shape [10, 3], expected [10, 2]"),
         ("t2", "as a member for site t3: site t2: outputs rejected: shape [10, 3], expected [10, 2]")],
    ),
    "float64 images": (
        lambda i, r: dataclasses.replace(r, payload={**r.payload, DataKind.RAW_DATA: encode(
            {"inputs": decode(r.payload[DataKind.RAW_DATA])["inputs"].astype(np.float64)})}) if _querying(i) else r,
        [("t2", "site t2: query rejected: images of dtype float64")],
    ),
    "another site's name": (
        lambda i, r: dataclasses.replace(r, site_id="t1"),
        [("t2", "as a member for site t1: site t2: outputs rejected: the reply names site 't1'"),
         ("t2", "site t2: outputs rejected: the reply names site 't1'"),
         ("t2", "as a member for site t3: site t2: outputs rejected: the reply names site 't1'")],
    ),
}  # fmt: skip


@pytest.mark.parametrize("hostile", sorted(HOSTILE_MEMBERS))
def test_a_hostile_members_outputs_are_its_rejected_failure_and_the_others_are_pooled(hostile):
    # Prepare: three trained tabular sites; t2 rewrites its PREDICT replies
    config = JobConfig.model_validate(TABULAR | {"strategy": {"name": "ensemble"}})
    data = tabular_sites()
    task = build_task(config, data)
    sites = {d.site_id: Site(d, task) for d in data}
    start = encode(initial_weights(task, 0))
    for site in sites.values():
        site.handle(Instruction(0, site.site_id, InstructionKind.FIT, {DataKind.WEIGHTS: start}, config.train.fit()))
    tamper, expected = HOSTILE_MEMBERS[hostile]
    sites["t2"] = _Tampering(sites["t2"], tamper)
    ctx = RunContext(InProcessTransport(sites), Ledger(), task)

    # Execute
    (evaluation,) = evaluate_ensemble(mean_probabilities, list(sites), 1, ctx).values()

    # Assert: only t2 fails, REJECTED; t1 and t3 are pooled (t2 too when only its membership failed)
    assert [(f.kind, f.phase) for f in evaluation.failures] == [(FailureKind.REJECTED, "evaluate")] * len(expected)
    assert [f.site_id for f in evaluation.failures] == [site for site, _ in expected]
    for failure, (_, reason) in zip(evaluation.failures, expected, strict=True):
        assert failure.reason.startswith(reason), failure.reason
    pooled = {"t1", "t3"} | ({"t2"} if hostile == "three classes as a member" else set())
    assert set(evaluation.sites) == pooled and evaluation.pooled["num_test"] == 10 * len(pooled)
