from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fedrad.cli import app
from fedrad.cli import run as cli_run
from tests.conftest import TINY
from tests.tiny import tiny_job

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


def _central_job(tmp_path, epsilon: float = 8.0):
    """The tiny job with central DP (DP-FedAvg at the server: no per-site calibration, so it runs fast)."""
    path = tmp_path / "central.yaml"
    path.write_text(yaml.safe_dump(tiny_job(privacy={"mode": "central", "epsilon": epsilon})))
    return path


def test_a_sweep_runs_every_method_at_every_value_with_the_value_applied_and_inf_turning_privacy_off(tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", str(_central_job(tmp_path)), "--methods", "fedavg,fedprox",
                                      "--sweep", "privacy.epsilon=1,8,inf", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    summaries = json.loads((out / "comparison.json").read_text())
    names = [f"{m}@epsilon={v}" for v in ("1", "8", "inf") for m in ("fedavg", "fedprox")]
    assert [f"{s['method']}@epsilon={s['sweep']['label']}" for s in summaries] == names
    for s, name in zip(summaries, names, strict=True):
        assert json.loads((out / name / "summary.json").read_text()) == s  # the sweep value is in the run's own
        privacy = yaml.safe_load((out / name / "config.yaml").read_text())["privacy"]
        assert s["sweep"]["key"] == "privacy.epsilon" and privacy["epsilon"] == s["sweep"]["value"]
        if s["sweep"]["label"] == "inf":
            assert privacy["mode"] == "none" and s["sweep"]["value"] is None and s["privacy"] == {"mode": "none"}
        else:
            assert privacy["mode"] == "central" and s["sweep"]["value"] == float(s["sweep"]["label"])
            assert 0 < s["privacy"]["epsilon_final"] <= s["sweep"]["value"] * 1.0001
    report = (out / "report.md").read_text()
    assert "## Sweep: privacy.epsilon" in report and "| fedprox | inf (no DP) |" in report
    assert "![Pooled metric against the swept value](sweep_metric.png)" in report
    assert (out / "sweep_metric.png").stat().st_size > 0 and not (out / "sweep_audit_auc.png").exists()


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ("privacy.epsilon=1,0", "error: --sweep privacy.epsilon=0: key 'privacy.epsilon': Input should be greater"),
        ("privacy.epsilonn=1", "error: --sweep privacy.epsilonn=1: key 'privacy.epsilonn': unknown key"),
        ("train.rounds=2,two", "error: --sweep train.rounds=two: key 'train.rounds': Input should be a valid integer"),
        ("train.lr.x=1", "error: --sweep train.lr.x=1: key 'train.lr' is a value, not a section of the job"),
        ("privacy.epsilon", "error: --sweep 'privacy.epsilon': expected KEY=V1,V2,..."),
        ("privacy.epsilon=4,4.0", "error: --sweep privacy.epsilon=4,4.0: a value is given twice (4, 4)"),
    ],
)
def test_a_bad_sweep_key_or_value_is_one_line_and_exit_2_before_anything_runs(tmp_path, sweep, message):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", str(_central_job(tmp_path)), "--methods", "fedavg",
                                      "--sweep", sweep, "--out", str(out)])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output and not out.exists()


def test_sweeping_epsilon_of_a_job_without_privacy_is_refused_unless_every_value_turns_it_off(tmp_path):
    config, out = _config(tmp_path), tmp_path / "cmp"
    refused = CliRunner().invoke(app, ["compare", str(config), "--methods", "fedavg", "--sweep",
                                       "privacy.epsilon=8,inf", "--out", str(out)])  # fmt: skip
    assert refused.exit_code == 2 and not out.exists()
    assert "--sweep privacy.epsilon=8: the job's privacy.mode is 'none'; set privacy.mode" in refused.stderr
    off = CliRunner().invoke(app, ["compare", str(config), "--methods", "fedavg", "--sweep", "privacy.epsilon=none",
                                   "--out", str(out)])  # fmt: skip
    assert off.exit_code == 0, off.output
    assert [s["sweep"]["label"] for s in json.loads((out / "comparison.json").read_text())] == ["inf"]
    assert (out / "fedavg@epsilon=inf" / "summary.json").is_file()


def test_a_method_the_swept_privacy_cannot_run_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", str(_central_job(tmp_path)), "--methods", "fedavg,cds",
                                      "--sweep", "privacy.epsilon=inf,4", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 2 and not out.exists()
    assert "strategy 'cds' cannot run with privacy mode 'central'" in result.stderr
