"""Local DP over gRPC: three `fedrad client` processes train FedAvg with DP-SGD; one is killed and restarted.

Each client calibrates nothing here (the noise is fixed, so the test takes seconds) but accounts
every fit with Opacus' RDP accountant and keeps the history in its state file. The client killed
once its state holds a fit restarts from that file: it continues from the budget it has spent,
never from zero, and a round it had fitted but not delivered is repeated without spending twice.
So the job ends with every site's epsilon in metrics.jsonl and in its state, equal to the
simulator's bit for bit.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from fedrad.config import JobConfig
from fedrad.site.state import SiteStateFile, default_state_path

from .helpers import JOB, SITES, Federation, assert_same_model, finish, simulate, wait_for

pytestmark = pytest.mark.slow

ROUNDS = 4
KILLED = "s2"
DP_JOB = {**JOB, "name": "dp-local", "train": {**JOB["train"], "rounds": ROUNDS},
          "privacy": {"mode": "local", "noise_multiplier": 1.1, "max_grad_norm": 1.0}}  # fmt: skip


def _state(federation: Federation, site: str, job_hash: str):
    path = default_state_path(federation.root / f"{site}.yaml", site, job_hash)
    return SiteStateFile(path, job_hash, site).load() if path.exists() else None


def test_a_dp_fedavg_job_over_grpc_reports_each_sites_epsilon_and_a_restarted_client_keeps_its_spend(tmp_path: Path):
    job_hash = JobConfig.model_validate(DP_JOB).job_hash()
    federation = Federation(tmp_path / "deployed", job=DP_JOB)
    out = federation.root / "run"
    try:
        server = federation.server(out, deadline_s=120)
        clients = {site: federation.client(site) for site in SITES}

        def has_fitted() -> bool:
            state = _state(federation, KILLED, job_hash)
            return state is not None and state.last.round >= 1

        wait_for(has_fitted, 180, f"{KILLED} to save its state after a fit")
        clients[KILLED].send_signal(signal.SIGKILL)
        clients[KILLED].wait()
        at_kill = _state(federation, KILLED, job_hash)
        assert at_kill.last.epsilon_spent > 0 and at_kill.last.round < ROUNDS - 1
        federation.client(KILLED)
        summary = finish(federation, server, out)
    finally:
        federation.close()
    simulated = simulate(DP_JOB, tmp_path / "simulated")

    assert summary["rounds"] == ROUNDS and summary["failures"] == 0 and set(summary["sites"]) == set(SITES)
    log = (federation.root / f"{KILLED}.log").read_text(errors="replace")
    assert f"site {KILLED} continues from its state after round {at_kill.last.round}" in log, log[-3000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (tmp_path / "simulated" / "metrics.jsonl").read_text().splitlines()]
    for line, want in zip(lines, expected, strict=True):  # every site's epsilon, every round, as simulated
        assert set(line["train"]) == set(SITES)
        for site in SITES:
            assert line["train"][site]["epsilon_spent"] == want["train"][site]["epsilon_spent"] > 0
    spent = {site: _state(federation, site, job_hash).last.epsilon_spent for site in SITES}
    assert spent == {site: lines[-1]["train"][site]["epsilon_spent"] for site in SITES}
    assert spent[KILLED] > at_kill.last.epsilon_spent  # continued from its spend, and spent each round once
    assert summary["pooled"] == simulated["pooled"]
    assert_same_model(out, tmp_path / "simulated")
