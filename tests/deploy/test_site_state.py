"""A site's state survives its client: `fedrad client` processes killed mid-job and restarted continue.

An ensemble client and a SCAFFOLD client are killed (SIGKILL, no goodbye) once their state file
holds a fit, and restarted from the same data YAML. The restarted client reads its state file
(its ensemble member, its c_i) and, where its last reply was lost, repeats that round from where
the round began; so the job ends with every site evaluated and with the simulator's results bit
for bit: the same pooled metrics, the same global model (SCAFFOLD) and the same state at every site.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedrad.cli import app
from fedrad.config import JobConfig
from fedrad.run.simulate import MethodRun, build_sites
from fedrad.site.state import SiteState, SiteStateFile, default_state_path

from .helpers import JOB, SITES, Federation, assert_same_model, finish, wait_for

pytestmark = pytest.mark.slow

ROUNDS = 5
KILLED = "s3"


def _job(method: str) -> dict:
    return {**JOB, "name": f"state-{method}", "train": {**JOB["train"], "rounds": ROUNDS}, "strategy": {"name": method}}


def _state(path: Path, job_hash: str, site: str) -> SiteState | None:
    return SiteStateFile(path, job_hash, site).load()


def _simulated(job: dict, out: Path) -> dict:
    """The simulator with each site's state in out/state/SITE.safetensors, one torch thread as the clients."""
    config = JobConfig.model_validate(job)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the clients (OMP_NUM_THREADS=1): float sums depend on the thread count
    try:
        return MethodRun(config, config.strategy.name, out, build_sites(config), state_dir=out / "state").run()
    finally:
        torch.set_num_threads(threads)


def _run_with_a_restart(federation: Federation, job_hash: str) -> tuple[dict, SiteState]:
    """The job with KILLED killed once its state file holds a fit, then restarted; (summary, its state at the kill)."""
    out = federation.root / "run"
    server = federation.server(out, deadline_s=120)  # a restarted client needs seconds; the deadline is far off
    clients = {site: federation.client(site) for site in SITES}
    path = default_state_path(federation.root / f"{KILLED}.yaml", KILLED, job_hash)

    def has_fitted() -> bool:
        state = _state(path, job_hash, KILLED) if path.exists() else None
        return state is not None and state.last.round >= 1

    wait_for(has_fitted, 180, f"{KILLED} to save its state after a fit")
    clients[KILLED].send_signal(signal.SIGKILL)
    clients[KILLED].wait()
    at_kill = _state(path, job_hash, KILLED)
    assert at_kill is not None and at_kill.last.round < ROUNDS - 1, "killed after its last fit: nothing to continue"
    federation.client(KILLED)  # the hospital restarts its client, with the same data YAML
    return finish(federation, server, out), at_kill


def _assert_same_site_states(federation: Federation, job_hash: str, simulated: Path) -> None:
    for site in SITES:
        deployed = _state(default_state_path(federation.root / f"{site}.yaml", site, job_hash), job_hash, site)
        expected = _state(simulated / "state" / f"{site}.safetensors", job_hash, site)
        assert deployed is not None and expected is not None
        for got, want in [(deployed.last, expected.last), (deployed.before, expected.before)]:
            assert got.round == want.round, site
            for part in ("local", "control"):
                a, b = getattr(got, part) or {}, getattr(want, part) or {}
                assert a.keys() == b.keys(), (site, part)
                for name in b:
                    np.testing.assert_array_equal(a[name], b[name], err_msg=f"{site} {part} {name}")


def _assert_continued(federation: Federation, at_kill: SiteState) -> None:
    log = (federation.root / f"{KILLED}.log").read_text(errors="replace")
    assert f"site {KILLED} continues from its state after round {at_kill.last.round}" in log, log[-3000:]


@pytest.mark.parametrize("method", ["ensemble", "scaffold"])
def test_a_client_killed_and_restarted_mid_job_continues_with_its_state(method: str, tmp_path: Path) -> None:
    job = _job(method)
    job_hash = JobConfig.model_validate(job).job_hash()
    federation = Federation(tmp_path / "deployed", job=job)
    try:
        summary, at_kill = _run_with_a_restart(federation, job_hash)
    finally:
        federation.close()
    simulated = _simulated(job, tmp_path / "simulated")

    _assert_continued(federation, at_kill)
    assert summary["rounds"] == ROUNDS and summary["failures"] == 0  # the pending tasks waited for the restart
    assert set(summary["sites"]) == set(SITES)  # every site evaluated at the end
    assert summary["pooled"] == simulated["pooled"] and summary["ledger"] == simulated["ledger"]
    _assert_same_site_states(federation, job_hash, tmp_path / "simulated")  # members, c_i: as never interrupted
    if method == "scaffold":  # c_i reset to zero would have moved the global model
        assert_same_model(federation.root / "run", tmp_path / "simulated")


def test_a_client_with_an_unreadable_state_file_stops_with_one_line_naming_it(tmp_path: Path) -> None:
    federation = Federation(tmp_path)  # kits and YAMLs only: no process is started
    state = tmp_path / "s1-state.safetensors"
    state.write_bytes(b"not a state file")
    args = ["client", "--kit", str(federation.kits.sites["s1"]), "--data", str(tmp_path / "s1.yaml"),
            "--job", str(federation.job), "--state", str(state)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert str(state) in " ".join(result.output.split()) and "site state file" in line
