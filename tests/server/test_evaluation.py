"""Evaluation through the transport: a bad METRICS reply is that site's failure, and the run goes on."""

from __future__ import annotations

import json

from fedrad.run.simulate import MethodRun, build_sites
from fedrad.site.handler import Site
from fedrad.types import Reply


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
