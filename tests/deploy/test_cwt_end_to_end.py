"""CWT deployed: `fedrad server` and three `fedrad client` OS processes on loopback with mutual TLS.

Cyclical weight transfer hands the one model from site to site, one orchestrator round per visit.
Over the network each site is visited once per cycle in the configured order, and the final model
is the simulator's bit for bit (the same engine and per-visit seeds; only the transport differs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import JOB, SITES, Federation, assert_same_model, finish, simulate, status

pytestmark = pytest.mark.slow

CYCLES, EPOCHS = 2, 1
ORDER = ["s2", "s3", "s1"]  # not the sorted order the server keeps its sites in
CWT_JOB = {
    **JOB,
    "name": "deploy-cwt",
    "train": {**JOB["train"], "rounds": CYCLES, "local_epochs": EPOCHS},  # CWT: rounds = cycles
    "strategy": {"name": "cwt", "order": ORDER},
    "evaluation": {"every": len(SITES)},  # after each cycle: fewer round trips, the same model
}


def test_three_clients_finish_cwt_in_order_with_the_simulators_model(tmp_path: Path) -> None:
    federation = Federation(tmp_path / "deployed", job=CWT_JOB)
    out = federation.root / "run"
    try:
        server = federation.server(out)
        clients = [federation.client(site) for site in SITES]
        summary = finish(federation, server, out)
        # the server tells each polling client that the job is over: they exit by themselves, status 0
        assert [client.wait(timeout=60) for client in clients] == [0, 0, 0], federation.log("s1")
        assert "job deploy-cwt finished after 6 rounds" in federation.log("s1")
    finally:
        federation.close()

    visits = ORDER * CYCLES
    assert summary["method"] == "cwt" and summary["failures"] == 0 and summary["pooled"]["num_test"] > 0
    assert summary["rounds"] == len(visits)  # one round per visit
    assert summary["order"] == visits  # each cycle visits every site once, in the configured order
    assert summary["local_epochs"] == dict.fromkeys(SITES, CYCLES * EPOCHS)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(line["round"], line["asked"], line["failures"]) for line in lines] == [
        (number, [site], []) for number, site in enumerate(visits)
    ]
    final = status(out)
    assert final["phase"] == "done" and final["error"] is None
    assert [r["sites"] for r in final["rounds"]] == [{site: "submitted"} for site in visits]

    simulated = simulate(CWT_JOB, tmp_path / "simulated")
    assert simulated["order"] == visits
    assert_same_model(out, tmp_path / "simulated")
    assert summary["pooled"] == simulated["pooled"]  # the sites evaluate the same model on the same test sets
