"""The admin's commands without a running federation: provision, add / revoke a site, status, hash pinning."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from fedrad.cli import app
from fedrad.pki.provision import revoked_sites

from .helpers import JOB


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
