from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from fedrad.cli import app
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
