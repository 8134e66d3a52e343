"""Every strategy that can be deployed runs over gRPC + mTLS and gives the simulator's result.

The server (`ServerRun`, the code behind `fedrad server`) and three `GrpcClient`s with the sites
`fedrad client` builds run as threads of this process on loopback, so a case takes seconds. FedAvg
and CWT are also run as OS processes (test_end_to_end.py, test_cwt_end_to_end.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fedrad.config import JobConfig
from fedrad.pki.kits import load_site_kit
from fedrad.run.join import client_site
from fedrad.run.serve import ServerOptions, ServerRun
from fedrad.transport.grpc_client import Backoff, GrpcClient
from tests.transport.helpers import Background

from .helpers import JOB, SITES, Federation, assert_same_model, bound_port, simulate

pytestmark = pytest.mark.slow

CASES = ["fedprox", "fedbn", "fedavgm", "fedadam", "scaffold", "swt", "ensemble"]


def _deployed(federation: Federation, job: dict, out: Path) -> dict:
    config = JobConfig.model_validate(job)
    options = ServerOptions(deadline_s=60, wait_sites_s=30, poll_s=0.5, bind="127.0.0.1:0")  # a port of its own
    clients: list[GrpcClient] = []
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `simulate`: float sums depend on the thread count
    try:
        server = Background(ServerRun(config, federation.kits.server, out, options).run)
        try:
            port = bound_port(out, os.getpid(), alive=lambda: not server.done.is_set())
        except AssertionError:
            server.result(0)  # raises what the server raised before it listened
            raise
        for site in SITES:
            kit = load_site_kit(federation.kits.sites[site])
            site_object = client_site(config, kit, federation.root / f"{site}.yaml")
            clients.append(GrpcClient(site_object, kit, server_address=f"127.0.0.1:{port}",
                                      backoff=Backoff(0.05, 0.5)))
        runs = [Background(client.run) for client in clients]
        summary = server.result(timeout_s=240)  # or what the server raised
        for run in runs:  # told that the job is done, each client's loop ends by itself (or raises here)
            run.result(timeout_s=30)
        assert all(client.finished for client in clients)
        return summary
    finally:
        for client in clients:
            client.stop()
        torch.set_num_threads(torch_threads)


@pytest.mark.parametrize("method", CASES)
def test_a_strategy_over_the_network_gives_the_simulators_result(method: str, tmp_path: Path) -> None:
    job = {**JOB, "name": f"net-{method}", "train": {**JOB["train"], "rounds": 2},
           "strategy": {"name": method} | ({"order": list(SITES)} if method == "swt" else {})}  # SWT's key only
    federation = Federation(tmp_path / "deployed", job=job)
    deployed = _deployed(federation, job, federation.root / "run")
    simulated = simulate(job, tmp_path / "simulated")

    assert deployed["method"] == simulated["method"] == method
    assert deployed["failures"] == 0 and deployed["pooled"]["num_test"] > 0
    assert deployed.get("order") == simulated.get("order")  # SWT: the same visits
    assert deployed["pooled"] == simulated["pooled"]  # the same model(s), scored on the same test sets
    without_counts = {site: {k: v for k, v in m.items() if k != "num_train"} for site, m in simulated["sites"].items()}
    assert deployed["sites"] == without_counts  # num_train: the deployed server never sees the data
    assert deployed["ledger"] == simulated["ledger"]  # the same payloads booked, by kind and direction
    for site, booked in deployed["ledger"]["by_site"].items():  # the wire carries them, plus framing
        wire = deployed["wire_bytes"][site]
        assert booked["received"] <= wire["to_site"] < booked["received"] + 200_000, (site, booked, wire)
        assert booked["sent"] <= wire["from_site"] < booked["sent"] + 200_000, (site, booked, wire)
    if method != "ensemble":  # an ensemble's members stay at their sites: no global model file
        assert_same_model(federation.root / "run", tmp_path / "simulated")


def test_resuming_after_the_final_round_rewrites_the_whole_runs_summary_without_the_sites(tmp_path: Path) -> None:
    # A server that crashed after its last checkpoint, before summary.json: --resume has nothing to run.
    federation = Federation(tmp_path, job=JOB)
    out = federation.root / "run"
    first = _deployed(federation, JOB, out)
    (out / "summary.json").unlink()
    options = ServerOptions(wait_sites_s=600, poll_s=0.5, bind="127.0.0.1:0")
    resumed = ServerRun(JobConfig.model_validate(JOB), federation.kits.server, out, options, resume=True).run()
    assert resumed["resumed_from"] == first["rounds"] == resumed["rounds"]  # no site needed: no 600 s wait
    assert resumed["pooled"] == first["pooled"] and resumed["sites"] == first["sites"]
    assert resumed["failures"] == first["failures"] == 0
    assert (out / "summary.json").exists()


def test_a_clients_phantom_site_is_harmonised_once_as_in_the_simulator(tmp_path: Path) -> None:
    import numpy as np

    from fedrad.run.simulate import build_sites

    job = {**JOB, "data": {**JOB["data"], "harmonize": {"intensity": {"kind": "percentile", "lower": 5, "upper": 95},
                                                         "size": [12, 12]}}}
    federation = Federation(tmp_path, job=job)
    config = JobConfig.model_validate(job)
    simulated = {d.site_id: d for d in build_sites(config)}
    for site in SITES:
        deployed = client_site(config, load_site_kit(federation.kits.sites[site]), federation.root / f"{site}.yaml")
        np.testing.assert_array_equal(deployed.data.train.inputs, simulated[site].train.inputs)
