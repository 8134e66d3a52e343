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

from .helpers import JOB, SITES, Federation, finish, status, wait_for

pytestmark = pytest.mark.slow
KILL_ROUNDS = 5  # the kill lands in round 1 or 2: rounds are left for the restarted client to rejoin in


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    federation = Federation(tmp_path)
    yield federation
    federation.close()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One whole run with every site present: the reference for the other tests."""
    federation = Federation(tmp_path_factory.mktemp("uninterrupted"))
    out = federation.root / "run"
    try:
        server = federation.server(out)
        for site in SITES:
            federation.client(site)
        finish(federation, server, out)
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
    federation = Federation(tmp_path, job={**JOB, "train": {**JOB["train"], "rounds": KILL_ROUNDS}})
    try:
        out = federation.root / "run"
        # The dead client costs up to two deadlines (fit, evaluate); 30 s, not less: on a loaded machine the
        # live clients' first fit (torch warming up) took over 10 s, and a round 0 they missed failed this test.
        # --gone-after 600: every later task of s3 waits its deadline, which is the time the restarted client
        # has to come back (by default a site silent for 60 s is not waited for, and the job could end first).
        server = federation.server(out, "--gone-after", "600", deadline_s=30)
        clients = {site: federation.client(site) for site in SITES}
        wait_for(lambda: (status(out).get("round") or 0) >= 1, 180, "round 0 to complete")
        clients["s3"].send_signal(signal.SIGKILL)  # no goodbye: the server only sees silence
        clients["s3"].wait()

        def round_without_s3() -> int | None:  # the round of the kill: s3 may have finished the open one
            return next((r["round"] for r in status(out).get("rounds", []) if r["sites"]["s3"] != "submitted"), None)

        wait_for(lambda: round_without_s3() is not None, 120, "the server to drop s3")
        killed_in = round_without_s3()
        # The hospital restarts its client once that round is over (sooner, it would answer the round's
        # open task and not be dropped); the rounds left give it more than one deadline to come back in.
        federation.client("s3")
        summary = finish(federation, server, out)
    finally:
        federation.close()

    rounds = status(out)["rounds"]
    assert summary["rounds"] == len(rounds) == KILL_ROUNDS
    assert killed_in is not None and 1 <= killed_in <= KILL_ROUNDS - 2, rounds  # after round 0, rounds to spare
    assert all(r["sites"] == dict.fromkeys(SITES, "submitted") for r in rounds[:killed_in]), rounds
    # the round of the kill went on without s3: silent after its instruction (timeout), or before it (dropped)
    assert rounds[killed_in]["sites"]["s3"].split()[0] in ("timeout", "dropped"), rounds
    assert all(r["sites"]["s1"] == r["sites"]["s2"] == "submitted" for r in rounds), rounds  # with the others
    back = next(r["round"] for r in rounds if r["round"] > killed_in and r["sites"]["s3"] == "submitted")
    assert all(r["sites"]["s3"] == "submitted" for r in rounds[back:]), rounds  # s3 came back, and stayed


def test_a_server_killed_between_rounds_resumes_to_the_uninterrupted_model(
    federation: Federation, uninterrupted: Path
) -> None:
    out = federation.root / "run"
    server = federation.server(out)
    for site in SITES:
        federation.client(site)
    checkpoint = out / "checkpoint.safetensors"
    wait_for(checkpoint.exists, 180, "the first checkpoint")
    federation.keep_port()  # the resumed server listens where the clients dial, as a real one would
    server.send_signal(signal.SIGKILL)
    server.wait()
    completed = load_checkpoint(checkpoint).round  # the round of the kill, from the server's own record
    assert completed < 2, "the job finished before the kill: nothing left to resume"

    resumed = federation.server(out, "--resume", port=federation.port)
    summary = finish(federation, resumed, out)

    assert summary["resumed_from"] == completed + 1
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1, 2]  # no completed round lost, none repeated
    expected, got = load_file(uninterrupted / "model.safetensors"), load_file(out / "model.safetensors")
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)
    reference = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["pooled"] == reference["pooled"]
