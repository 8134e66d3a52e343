"""One engine, two transports: the same FedAvg run in-process and over gRPC + mTLS gives the same model."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from fedrad.config import JobConfig
from fedrad.pki.kits import load_server_kit, load_site_kit
from fedrad.pki.provision import ProjectSpec, provision
from fedrad.run.simulate import build_sites, build_strategy, build_task, initial_weights
from fedrad.server.ledger import Ledger
from fedrad.server.orchestrator import Orchestrator, RoundRecord, RunContext
from fedrad.site.handler import Site
from fedrad.strategies.base import ServerState
from fedrad.transport import InProcessTransport, Transport
from fedrad.transport.grpc_transport import GrpcClient, GrpcServerTransport

from .helpers import running


def _fedavg(config: JobConfig, transport: Transport) -> tuple[ServerState, list[RoundRecord], Ledger]:
    task, strategy, ledger = build_task(config), build_strategy(config, "fedavg"), Ledger()
    sites = [d.site_id for d in build_sites(config)]
    records: list[RoundRecord] = []
    ctx = RunContext(transport, ledger, task, config.job_hash(), config.seed)
    orchestrator = Orchestrator(
        strategy, ctx, sites, sites, config.train.rounds, on_round=lambda record, _: records.append(record)
    )
    state = orchestrator.run(strategy.initial_state(initial_weights(task, config.seed), sites))
    return state, records, ledger


@pytest.mark.slow
def test_fedavg_over_grpc_matches_the_simulation(tiny_config: JobConfig, tmp_path: Path) -> None:
    task, job_hash = build_task(tiny_config), tiny_config.job_hash()
    simulated = {d.site_id: Site(d, task, job_hash) for d in build_sites(tiny_config)}
    expected, _, expected_ledger = _fedavg(tiny_config, InProcessTransport(simulated))

    kits = provision(ProjectSpec(name="e2e", sites=tuple(simulated)), tmp_path / "project")
    server = GrpcServerTransport(load_server_kit(kits.server), bind="127.0.0.1:0", reply_timeout_s=60, poll_s=0.5)
    with server, ExitStack() as clients:
        for data in build_sites(tiny_config):  # each hospital holds its own Site, as it would on its machine
            kit = load_site_kit(kits.sites[data.site_id])
            client = GrpcClient(Site(data, task, job_hash), kit, server_address=f"127.0.0.1:{server.port}")
            clients.enter_context(running(client))
        state, records, ledger = _fedavg(tiny_config, server)

    assert all(not record.failures for record in records) and len(records) == tiny_config.train.rounds
    for name, array in expected.models["global"].items():
        np.testing.assert_array_equal(state.models["global"][name], array, err_msg=name)
    assert ledger.summary() == expected_ledger.summary()
    weights = ledger.summary()["by_kind"]["weights"]
    assert sum(t.to_site + t.from_site for t in server.traffic().values()) > weights
