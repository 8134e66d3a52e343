"""`fedrad server` and three `fedrad client` OS processes on loopback with mutual TLS.

The deployed FedAvg gives the simulator's model bit for bit (one engine, two transports); a
client killed mid-round is dropped from that round and rejoins; a server killed between rounds
resumes from its checkpoint and ends with the model of an uninterrupted run.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from fedrad.config import JobConfig
from fedrad.run.simulate import MethodRun, build_sites
from fedrad.server.checkpoint import load_checkpoint

from .helpers import JOB, SITES, Federation, status, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    federation = Federation(tmp_path)
    yield federation
    federation.close()


def _finish(federation: Federation, server, out: Path) -> dict:
    try:
        code = server.wait(timeout=240)  # generous: CI machines running other suites are slow
    except Exception:
        raise AssertionError(f"server did not finish:\n{federation.log('server')}") from None
    assert code == 0, federation.log("server")
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One whole run with every site present: the reference for the other tests."""
    federation = Federation(tmp_path_factory.mktemp("uninterrupted"))
    out = federation.root / "run"
    try:
        server = federation.server(out)
        for site in SITES:
            federation.client(site)
        _finish(federation, server, out)
    finally:
        federation.close()
    return out


def test_three_clients_finish_fedavg_with_the_simulators_model(uninterrupted: Path, tmp_path: Path) -> None:
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["failures"] == 0 and summary["pooled"]["num_test"] > 0
    final = status(uninterrupted)
    assert final["phase"] == "done"
    assert [r["sites"] for r in final["rounds"]] == [dict.fromkeys(SITES, "submitted")] * 3

    config = JobConfig.model_validate(JOB)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the clients (OMP_NUM_THREADS=1): float sums depend on the thread count
    try:
        MethodRun(config, "fedavg", tmp_path / "sim", build_sites(config)).run()
    finally:
        torch.set_num_threads(threads)
    simulated = load_file(tmp_path / "sim" / "model.safetensors")
    deployed = load_file(uninterrupted / "model.safetensors")
    assert simulated.keys() == deployed.keys()
    for name, array in simulated.items():
        np.testing.assert_array_equal(deployed[name].reshape(array.shape), array, err_msg=name)


def test_a_client_killed_mid_round_is_dropped_and_rejoins(tmp_path: Path) -> None:
    federation = Federation(tmp_path, job={**JOB, "train": {**JOB["train"], "rounds": 4}})
    try:
        out = federation.root / "run"
        server = federation.server(out, deadline_s=10)  # the dead client costs two deadlines: fit, evaluate
        clients = {site: federation.client(site) for site in SITES}
        wait_for(lambda: (status(out).get("round") or 0) >= 1, 180, "round 0 to complete")
        killed_in = status(out)["round"]
        clients["s3"].send_signal(signal.SIGKILL)  # no goodbye: the server only sees silence
        clients["s3"].wait()

        def s3_dropped() -> bool:
            return any(r["round"] >= killed_in and r["sites"]["s3"] != "submitted" for r in status(out)["rounds"])

        wait_for(s3_dropped, 120, "the server to drop s3")
        federation.client("s3")  # the hospital restarts its client
        summary = _finish(federation, server, out)
    finally:
        federation.close()

    rounds = status(out)["rounds"]
    assert summary["rounds"] == len(rounds) == 4
    after = [r for r in rounds if r["round"] >= killed_in]
    assert after[0]["sites"]["s3"].startswith("dropped"), rounds  # the round of the kill went on without s3
    assert all(r["sites"]["s1"] == r["sites"]["s2"] == "submitted" for r in after), rounds  # with the others
    assert rounds[-1]["sites"]["s3"] == "submitted", rounds  # and s3 came back


def test_a_server_killed_between_rounds_resumes_to_the_uninterrupted_model(
    federation: Federation, uninterrupted: Path
) -> None:
    out = federation.root / "run"
    server = federation.server(out)
    for site in SITES:
        federation.client(site)
    checkpoint = out / "checkpoint.safetensors"
    wait_for(checkpoint.exists, 180, "the first checkpoint")
    server.send_signal(signal.SIGKILL)
    server.wait()
    completed = load_checkpoint(checkpoint).round
    assert completed < 2, "the job finished before the kill: nothing left to resume"

    resumed = federation.server(out, "--resume")
    summary = _finish(federation, resumed, out)

    assert summary["resumed_from"] == completed + 1
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1, 2]  # no completed round lost, none repeated
    expected, got = load_file(uninterrupted / "model.safetensors"), load_file(out / "model.safetensors")
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)
    reference = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["pooled"] == reference["pooled"]
