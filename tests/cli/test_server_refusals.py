"""`fedrad server` refuses a job it cannot run in one line (exit 2), before it listens: no traceback."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from fedrad.cli import app
from fedrad.pki.provision import ProjectSpec, provision
from tests.tiny import tiny_job


def test_a_robust_aggregator_above_its_memory_bound_is_one_line_and_exit_2(tmp_path):
    kits = provision(ProjectSpec(name="refusals", sites=("s1", "s2", "s3")), tmp_path / "kits")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_job(strategy={"name": "fedavg", "aggregator": "median",
                                                     "robust_max_mb": 1e-6})))  # fmt: skip
    result = CliRunner().invoke(app, ["server", "--job", str(job), "--kit", str(kits.server),
                                      "--out", str(tmp_path / "run"), "--bind", "127.0.0.1:0"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "robust_max_mb" in result.output


def test_gone_after_not_above_the_poll_is_refused_in_one_line(tmp_path):
    kits = provision(ProjectSpec(name="refusals", sites=("s1",)), tmp_path / "kits")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_job()))
    result = CliRunner().invoke(app, ["server", "--job", str(job), "--kit", str(kits.server), "--out",
                                      str(tmp_path / "run"), "--poll", "5", "--gone-after", "5"])  # fmt: skip
    assert result.exit_code == 2
    assert "--gone-after 5 must exceed --poll 5" in result.output
