from __future__ import annotations

import dataclasses
import json

import numpy as np
import yaml
from typer.testing import CliRunner

from fedrad.cli import app
from fedrad.cli import run as cli_run
from tests.conftest import TINY

METRICS = {"accuracy", "balanced_accuracy", "auc"}


def _config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_run_writes_the_results_contract(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(_config(tmp_path)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "fedavg" and summary["rounds"] == 2 and summary["wall_s"] > 0
    assert set(summary["pooled"]) >= METRICS
    for site in ("s1", "s2", "s3"):
        assert METRICS | {"num_train"} <= set(summary["sites"][site])
    assert {"total_bytes", "by_kind", "by_site"} <= set(summary["ledger"])
    assert summary["status"] in ("ok", "degraded") and isinstance(summary["status_reasons"], list)
    assert f"status: {summary['status']}" in result.output
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1]
    assert (out / "model.safetensors").stat().st_size > 0
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["rounds"] == 2


def test_compare_writes_one_folder_per_method_and_a_report(tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", str(_config(tmp_path)), "--methods", "fedavg,cds,local",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    summaries = json.loads((out / "comparison.json").read_text())
    assert [s["method"] for s in summaries] == ["fedavg", "cds", "local"]
    for s in summaries:
        assert json.loads((out / s["method"] / "summary.json").read_text()) == s
    report = (out / "report.md").read_text()
    for s in summaries:  # every pooled figure in the report is the JSON's
        assert f"{s['pooled']['balanced_accuracy']:.3f}" in report
    assert "cds (sim only)" in report and "raw_data" in report



def _nan_training(data):
    """The site with NaN training images: every update it sends is rejected."""
    nan = dataclasses.replace(data.train, inputs=np.full_like(data.train.inputs, np.nan))
    return dataclasses.replace(data, train=nan)


def _poison(monkeypatch, sites: tuple[str, ...]) -> None:
    real = cli_run.build_sites
    monkeypatch.setattr(cli_run, "build_sites",
                        lambda config: [_nan_training(d) if d.site_id in sites else d for d in real(config)])


def test_a_run_whose_every_update_of_one_site_is_rejected_prints_degraded_and_exits_3_only_when_strict(
    tmp_path, monkeypatch
):
    _poison(monkeypatch, ("s2",))
    config = _config(tmp_path)
    lenient = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "a")])
    assert lenient.exit_code == 0, lenient.output
    assert "status: degraded" in lenient.stderr and "site s2: every update rejected" in lenient.stderr
    strict = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "b"), "--strict"])
    assert strict.exit_code == 3, strict.output
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["status"] == "degraded"


def test_a_run_in_which_no_update_was_accepted_failed_and_exits_4(tmp_path, monkeypatch):
    _poison(monkeypatch, ("s1", "s2", "s3"))
    result = CliRunner().invoke(app, ["run", str(_config(tmp_path)), "--out", str(tmp_path / "run")])
    assert result.exit_code == 4, result.output
    assert "status: failed" in result.stderr and "no update was accepted in 2 round(s)" in result.stderr
    assert "Traceback" not in result.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_compare_writes_its_report_and_then_exits_with_the_worst_methods_status(tmp_path, monkeypatch):
    real = cli_run.MethodRun

    def local_fails(config, method, out, sites, on_round=None):  # local-only: no site's update is usable
        return real(config, method, out, [_nan_training(d) for d in sites] if method == "local" else sites, on_round)

    monkeypatch.setattr(cli_run, "MethodRun", local_fails)
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", str(_config(tmp_path)), "--methods", "fedavg,local",
                                      "--out", str(out)])
    assert result.exit_code == 4, result.output
    assert [s["status"] for s in json.loads((out / "comparison.json").read_text())][1] == "failed"
    assert (out / "report.md").exists() and "local: status: failed" in result.stderr
