"""The admin's commands without a running federation: provision, add / revoke a site, status, hash pinning."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedrad.cli import app
from fedrad.config import load_config
from fedrad.pki.kits import load_server_kit
from fedrad.pki.provision import ProjectSpec, provision, revoked_sites
from fedrad.run.simulate import build_sites
from fedrad.transport.grpc_transport import GrpcServerTransport
from tests.transport.helpers import Background
from tests.transport.test_grpc_client import expired

from .helpers import JOB, Federation


def test_provision_then_add_and_revoke_a_site(tmp_path: Path) -> None:
    project = tmp_path / "project.yaml"
    project.write_text(yaml.safe_dump({"name": "p", "sites": ["hosp-a", "hosp-b"]}))
    out = tmp_path / "kits"
    runner = CliRunner()
    assert runner.invoke(app, ["provision", str(project), "--out", str(out)]).exit_code == 0
    assert (out / "sites" / "hosp-b" / "site.key").exists()

    assert runner.invoke(app, ["provision", "--out", str(out), "--add-site", "hosp-c"]).exit_code == 0
    assert "hosp-c" in json.loads((out / "server" / "kit.json").read_text())["sites"]
    assert runner.invoke(app, ["provision", "--out", str(out), "--revoke-site", "hosp-a"]).exit_code == 0
    assert revoked_sites(out) == ["hosp-a"]

    again = runner.invoke(app, ["provision", str(project), "--out", str(out)])
    assert again.exit_code == 2 and "already provisioned" in again.output


def test_status_prints_each_site_per_round(tmp_path: Path) -> None:
    doc = {
        "phase": "running", "round": 2, "updated": "now", "error": None,
        "rounds": [{"round": 0, "sites": {"a": "submitted", "b": "dropped"}, "failures": {}},
                   {"round": 1, "sites": {"a": "submitted", "b": "rejected"}, "failures": {}}],
        "sites": {"a": {"state": "training", "late": 0}, "b": {"state": "disconnected", "late": 1}},
    }
    (tmp_path / "status.json").write_text(json.dumps(doc))
    result = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert result.exit_code == 0, result.output
    row_b = next(line for line in result.output.splitlines() if " b " in line)
    assert "disconnected" in row_b and "dropped" in row_b and "rejected" in row_b
    missing = CliRunner().invoke(app, ["status", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "cannot read" in missing.output


def test_status_prints_the_ended_runs_health_from_its_summary(tmp_path: Path) -> None:
    doc = {"phase": "done", "round": 2, "rounds": [{"round": 0, "sites": {"a": "timeout in evaluation"}}],
           "sites": {"a": {"state": "connected", "late": 0}}}
    (tmp_path / "status.json").write_text(json.dumps(doc))
    reasons = ["site a: timeout in evaluation, round 0: no reply within 5 s"]
    (tmp_path / "summary.json").write_text(json.dumps({"status": "degraded", "status_reasons": reasons}))
    result = CliRunner().invoke(app, ["status", str(tmp_path / "status.json")])
    assert result.exit_code == 0, result.output
    assert "result: degraded" in result.output and f"  - {reasons[0]}" in result.output


def test_a_client_refuses_a_job_whose_hash_its_admin_did_not_approve(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(JOB))
    args = ["client", "--kit", str(tmp_path), "--data", str(tmp_path / "d.yaml"), "--job", str(job)]
    result = CliRunner().invoke(app, [*args, "--expect-hash", "0123abcd"])
    assert result.exit_code == 2 and "does not match the approved 0123abcd" in result.output


# `fedrad client`: when it stops by itself, and with which exit code (docs/deploy.md) -------------------


@pytest.fixture
def federation(tmp_path: Path) -> Federation:
    return Federation(tmp_path)  # kits and YAMLs only: the server below runs in this process


@pytest.fixture
def job_server(federation: Federation) -> Iterator[GrpcServerTransport]:
    with GrpcServerTransport(load_server_kit(federation.kits.server), bind="127.0.0.1:0", poll_s=0.2) as server:
        yield server


def _client_cli(federation: Federation, kit: Path, port: int) -> tuple[int, str]:
    """`fedrad client` for site s1 with `kit`: its exit code and its output, unwrapped (the console wraps
    long lines); the timeout only bounds a client that would never stop."""
    args = ["client", "--kit", str(kit), "--data", str(federation.root / "s1.yaml"), "--job", str(federation.job),
            "--server", f"127.0.0.1:{port}", "--backoff-cap", "0.1"]
    result = Background(lambda: CliRunner().invoke(app, args)).result(timeout_s=120)
    return result.exit_code, " ".join(result.output.split())


def _error(output: str) -> str:
    """The one error the client printed: from "error:" to the end of the output."""
    assert output.count("error:") == 1, output
    return output[output.index("error:"):]


def test_a_client_exits_4_with_the_servers_reason_when_the_job_failed(
    federation: Federation, job_server: GrpcServerTransport
) -> None:
    job_hash = load_config(federation.job).job_hash()
    job_server.board.finish(job_hash, "job deploy-tiny failed: quorum not met: round 1: 1 of 3 sites", failed=True)
    code, output = _client_cli(federation, federation.kits.sites["s1"], job_server.port)
    assert code == 4, output
    assert _error(output) == ("error: site s1: the server reports the job failed: job deploy-tiny failed: quorum "
                              "not met: round 1: 1 of 3 sites; 0 instructions handled, exiting")
    s1 = next(site for site in build_sites(load_config(federation.job)) if site.site_id == "s1")
    assert job_server.declared_examples("s1") == s1.num_train > 0  # its data card's count, in its request


def test_a_client_exits_0_when_its_job_finished(federation: Federation, job_server: GrpcServerTransport) -> None:
    job_server.board.finish(load_config(federation.job).job_hash(), "job deploy-tiny finished after 3 rounds")
    code, output = _client_cli(federation, federation.kits.sites["s1"], job_server.port)
    assert code == 0 and output.endswith("site s1: job deploy-tiny finished after 3 rounds; 0 instructions handled, "
                                         "exiting"), output


def test_a_client_exits_5_naming_both_hashes_when_the_server_ended_another_job(
    federation: Federation, job_server: GrpcServerTransport
) -> None:
    job_server.board.finish("f0" * 32, "job other finished after 3 rounds")
    code, output = _client_cli(federation, federation.kits.sites["s1"], job_server.port)
    assert code == 5, output  # it used to keep polling
    mine = load_config(federation.job).job_hash()
    assert _error(output) == (f"error: site s1: the server ended job {'f0' * 6}, not this site's job {mine[:12]}: "
                              "compare the job hashes with the coordinator (0 instructions handled)")


def _kit_with(federation: Federation, problem: str, tmp_path: Path) -> Path:
    """A copy of site s1's kit whose certificate the server would refuse at the handshake."""
    kit = Path(shutil.copytree(federation.kits.sites["s1"], tmp_path / f"kit-{problem}"))
    if problem == "expired":
        kits = dataclasses.replace(federation.kits, sites={"s1": kit})
        (kit / "site.crt").write_bytes(expired(kits, "s1").cert_pem)
    elif problem == "another-ca":
        other = provision(ProjectSpec(name="other", sites=("s1",)), tmp_path / "other")
        shutil.copy(other.sites["s1"] / "site.crt", kit / "site.crt")
    else:  # another site's name in kit.json
        meta = json.loads((kit / "kit.json").read_text())
        (kit / "kit.json").write_text(json.dumps(meta | {"site_id": "s2"}))
    return kit


@pytest.mark.parametrize(("problem", "says"), [
    ("expired", "site.crt: expired on "),
    ("another-ca", "site.crt: not signed by the kit's ca.crt (CN=deploy-test CA,O=deploy-test): issued by "),
    ("another-site", "site.crt: its CN is 's1', but the kit's kit.json names site 's2'"),
])
def test_a_client_whose_certificate_the_server_would_refuse_exits_3_before_dialing(
    federation: Federation, job_server: GrpcServerTransport, tmp_path: Path, problem: str, says: str
) -> None:
    kit = _kit_with(federation, problem, tmp_path)
    code, output = _client_cli(federation, kit, job_server.port)
    assert code == 3, output
    error = _error(output)
    assert error.startswith(f"error: refused before dialing: {kit / 'site.crt'}: ") and says in error, error
    assert job_server.wait_for_sites(["s1"], 0) == {"s1"}  # it never dialled
