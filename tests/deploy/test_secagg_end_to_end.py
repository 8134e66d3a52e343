"""Secure aggregation over gRPC: `fedrad server` and three `fedrad client` processes on loopback, mutual TLS.

The key exchange, the sealed shares and the unmasking travel as extra phases of each round
through the same TaskBoard as the fits. The unmasked sum is exact integer arithmetic, so the
deployed model equals the simulator's bit for bit, although every mask differs between the two
runs. A client killed after the key exchange (it dies when its masked fit arrives) is recovered:
the other two reveal the shares that remove its pairwise masks, and the round aggregates them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from .helpers import JOB, SITES, Federation, assert_same_model, finish, simulate

pytestmark = pytest.mark.slow

SECURE_JOB = {**JOB, "name": "secagg", "train": {**JOB["train"], "rounds": 2},
              "secure_aggregation": {"enabled": True, "threshold": 2}}  # fmt: skip
KILLED = "s2"


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_secure_fedavg_job_over_grpc_gives_the_simulators_model(tmp_path: Path):
    federation = Federation(tmp_path / "deployed", job=SECURE_JOB)
    out = federation.root / "run"
    try:
        server = federation.server(out)
        for site in SITES:
            federation.client(site)
        summary = finish(federation, server, out)
    finally:
        federation.close()
    simulated = simulate(SECURE_JOB, tmp_path / "simulated")
    assert summary["rounds"] == 2 and summary["failures"] == 0 and summary["status"] == simulated["status"]
    assert summary["ledger"]["by_kind"]["secagg"] > 0
    assert summary["pooled"] == simulated["pooled"]
    assert_same_model(out, tmp_path / "simulated")
    assert [set(line["train"]) for line in _lines(out)] == [set(SITES)] * 2


def test_a_client_killed_after_the_key_exchange_is_recovered_by_the_others(tmp_path: Path):
    federation = Federation(tmp_path / "deployed", job=SECURE_JOB)
    out = federation.root / "run"
    try:
        # the killed site's fit is waited for until the deadline (it had taken the task); after that it
        # is gone (no contact for 5 s) and its evaluation is not waited for
        server = federation.server(out, "--gone-after", "5", deadline_s=30)
        for site in SITES:
            if site == KILLED:
                federation.client(site, module="tests.deploy.dying_client", env={"FEDRAD_TEST_DIE_ROUND": "1"})
            else:
                federation.client(site)
        summary = finish(federation, server, out)
    finally:
        federation.close()
    log = (federation.root / f"{KILLED}.log").read_text(errors="replace")
    assert f"site {KILLED}: killed after the key exchange of round 1" in log, log[-3000:]
    first, second = _lines(out)
    assert set(first["train"]) == set(SITES) and not first["failures"]
    assert set(second["train"]) == set(SITES) - {KILLED}  # the two survivors' mean, masks removed
    train_failures = [f for f in second["failures"] if f["phase"] == "train"]
    assert [(f["site_id"], f["kind"]) for f in train_failures] == [(KILLED, "timeout")], train_failures
    assert summary["rounds"] == 2 and summary["status"] == "degraded"
    assert not any("secure aggregation" in reason and "threshold" in reason for reason in summary["status_reasons"])
    model = load_file(out / "model.safetensors")
    assert all(np.isfinite(a).all() for a in model.values())
    assert not second["notes"]  # the round aggregated (its masks removed), it did not keep the previous model
    evaluation = [f for f in second["failures"] if f["phase"] == "evaluate"]
    assert [(f["site_id"], f["kind"]) for f in evaluation] == [(KILLED, "dropped")]
    assert "not waited for" in evaluation[0]["reason"], evaluation  # gone: its evaluation cost no deadline
