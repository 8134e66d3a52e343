"""`fedrad server`'s result: a round short of its quorum ends the run `failed`, with its summary written."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from fedrad.cli import app
from fedrad.pki.provision import ProjectSpec, ServerSpec, provision
from tests.tiny import tiny_job


def test_a_server_whose_first_round_misses_its_quorum_writes_a_failed_summary_and_exits_4(tmp_path: Path) -> None:
    kits = provision(ProjectSpec(name="quorum", server=ServerSpec(hosts=("127.0.0.1",), port=1),
                                 sites=("s1", "s2", "s3")), tmp_path / "kits")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_job(name="quorum")))
    out = tmp_path / "run"
    args = ["server", "--job", str(job), "--kit", str(kits.server), "--out", str(out), "--bind", "127.0.0.1:0",
            "--deadline", "0.2", "--quorum-wait", "0.1", "--wait-sites", "0.1", "--poll", "0.2", "--min-sites", "1"]
    result = CliRunner().invoke(app, args)  # no site ever connects
    assert result.exit_code == 4, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds"] == 0
    assert summary["status_reasons"][0].startswith("quorum not met: round 0: 0 of 3 sites replied, the quorum is 1")
    assert "status: failed" in result.stderr and "Traceback" not in result.output
    assert json.loads((out / "status.json").read_text())["phase"] == "failed"


def test_a_server_whose_round_loop_raises_writes_a_failed_summary_and_exits_4(tmp_path: Path, monkeypatch) -> None:
    def broken(self, state, start_round=0):
        raise RuntimeError("a server bug\nwith a second line")

    monkeypatch.setattr("fedrad.run.serve.Orchestrator.run", broken)
    kits = provision(ProjectSpec(name="bug", server=ServerSpec(hosts=("127.0.0.1",), port=1),
                                 sites=("s1", "s2", "s3")), tmp_path / "kits")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_job(name="bug")))
    out = tmp_path / "run"
    args = ["server", "--job", str(job), "--kit", str(kits.server), "--out", str(out), "--bind", "127.0.0.1:0",
            "--deadline", "0.2", "--quorum-wait", "0.1", "--wait-sites", "0.1", "--poll", "0.2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 4, result.output
    reason = "round 0: RuntimeError: a server bug with a second line"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["status_reasons"][0] == f"the server stopped: {reason}"
    status = json.loads((out / "status.json").read_text())
    assert status["phase"] == "failed" and status["error"] == reason
