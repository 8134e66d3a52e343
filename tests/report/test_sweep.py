"""The report of a sweep (`fedrad compare --sweep privacy.epsilon=...`): its plots and its table."""

from __future__ import annotations

import json

import pytest

from fedrad.config import JobConfig
from fedrad.report import plots
from fedrad.report.comparison import rebuild_report, write_comparison
from fedrad.report.sections import run_name, sweep_axis
from fedrad.run.simulate import MethodRun, build_sites
from tests.tiny import tiny_job

M = "balanced_accuracy"
KEY = "privacy.epsilon"


def _point(label: str) -> dict:
    return {"key": KEY, "value": None if label == "inf" else float(label), "label": label}


def _audit(auc: float) -> dict:
    """A hand-made audit.json of the shape `fedrad audit` writes (the loss attack only, no inversion)."""
    attack = {"members": 24, "non_members": 100, "auc": auc, "tpr_at_1pct_fpr": 0.02, "tpr_at_01pct_fpr": 0.0}
    return {"attacks": {"loss": attack}, "sites": {"s1": {"loss": attack}}, "populations": {"non_members": 100},
            "membership": {"attack": "loss", "auc": auc, "tpr_at_1pct_fpr": 0.02, "tpr_at_01pct_fpr": 0.0}}  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple:
    """fedavg and fedprox at epsilon 8, 1 and inf (central DP; inf: none), in their run folders."""
    out = tmp_path_factory.mktemp("sweep")
    summaries = []
    for label in ("8", "1", "inf"):
        privacy = {"mode": "none"} if label == "inf" else {"mode": "central", "epsilon": float(label)}
        config = JobConfig.model_validate(tiny_job(privacy=privacy))
        sites = build_sites(config)
        for method in ("fedavg", "fedprox"):
            point = _point(label)
            summary = MethodRun(config, method, out / run_name(method, point), sites).run()
            summaries.append(summary | {"sweep": point})
    return out, summaries


def _rows(markdown: str) -> dict[tuple[str, str], list[str]]:
    part = markdown.split(f"## Sweep: {KEY}")[1].split("\n## ")[0]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in part.splitlines() if line.startswith("| ")]
    return {(row[0], row[1]): row for row in cells[1:]}


def test_the_sweep_table_has_one_row_per_method_and_value_in_axis_order_read_from_the_summaries(swept):
    out, summaries = swept
    markdown = write_comparison(out, summaries)
    rows = _rows(markdown)
    assert list(rows) == [(m, v) for m in ("fedavg", "fedprox") for v in ("1", "8", "inf (no DP)")]
    for s in summaries:
        row = rows[(s["method"], "inf (no DP)" if s["sweep"]["value"] is None else s["sweep"]["label"])]
        site_min = min(m[M] for m in s["sites"].values())
        assert row[2:4] == [f"{s['pooled'][M]:.3f}", f"{site_min:.3f}"]
        spent = "no DP" if s["sweep"]["value"] is None else f"{s['privacy']['epsilon_final']:.3f}"
        assert row[4:] == [spent, "n/a"]  # nothing audited yet
    assert "| fedavg@epsilon=1 |" in markdown.split("## Table 1")[1]  # every table names the run, not the method
    assert (out / "sweep_metric.png").is_file() and not (out / "sweep_audit_auc.png").exists()


def test_an_audited_run_folder_adds_its_auc_to_the_table_and_the_auc_plot_appears(swept):
    out, summaries = swept
    write_comparison(out, summaries)
    for name, auc in (("fedavg@epsilon=1", 0.52), ("fedavg@epsilon=inf", 0.61)):
        (out / name / "audit.json").write_text(json.dumps(_audit(auc)))
    markdown = rebuild_report(out)
    rows = _rows(markdown)
    assert rows[("fedavg", "1")][5] == "0.520" and rows[("fedavg", "inf (no DP)")][5] == "0.610"
    assert rows[("fedavg", "8")][5] == rows[("fedprox", "1")][5] == "n/a"
    assert "## Leakage audit: membership inference (fedavg@epsilon=inf)" in markdown
    assert "![Membership inference AUC against the swept value](sweep_audit_auc.png)" in markdown
    assert (out / "sweep_audit_auc.png").stat().st_size > 0
    assert "Membership inference AUC against the swept value" in (out / "report.html").read_text()
    for name in ("fedavg@epsilon=1", "fedavg@epsilon=inf"):
        (out / name / "audit.json").unlink()  # the module's other tests see no audit


def test_without_a_sweep_the_report_has_no_sweep_figure_or_table(swept, tmp_path):
    _, summaries = swept
    plain = [{k: v for k, v in s.items() if k != "sweep"} for s in summaries[:2]]
    markdown = write_comparison(tmp_path, plain)
    assert "Sweep" not in markdown and not list(tmp_path.glob("sweep_*.png"))
    assert "| fedavg |" in markdown and "@" not in markdown


def _capture(monkeypatch) -> list:
    figures: list = []
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or b"")
    return figures


def test_the_no_dp_point_sits_right_of_every_epsilon_with_its_own_tick_and_a_dashed_line(swept, monkeypatch):
    _, summaries = swept
    figures = _capture(monkeypatch)
    plots.sweep_plot(summaries, lambda s: s["pooled"][M], "pooled", "Pooled balanced accuracy")
    ax = figures[0].axes[0]
    ticks = dict(zip([t.get_text() for t in ax.get_xticklabels()], ax.get_xticks(), strict=True))
    assert list(ticks) == ["1", "8", "inf (no DP)"]
    assert ticks["1"] == 0 and ticks["8"] == pytest.approx(0.90309)  # log10: epsilon spans a factor of 8
    assert ticks["inf (no DP)"] == pytest.approx(2 * 0.90309)  # one step right of the largest, not a number
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--" and line.get_label().startswith("_")]
    assert [list(line.get_xdata()) for line in dashed] == [[ticks["8"], ticks["inf (no DP)"]]] * 2
    assert ax.get_title() == "Pooled balanced accuracy against the privacy budget epsilon"


def test_a_method_has_the_same_colour_in_the_metric_and_the_auc_plots(swept, monkeypatch):
    _, summaries = swept
    audited = [s | {"audit": _audit(0.5 + 0.01 * k)} for k, s in enumerate(summaries)]
    figures = _capture(monkeypatch)
    names = plots.figures(audited, M)
    assert {"sweep_metric.png", "sweep_audit_auc.png"} <= set(names)
    colour = plots.colours(audited)
    assert colour == {"fedavg": "C0", "fedprox": "C1"}
    sweep_figures = [f for f in figures if "against the privacy budget epsilon" in f.axes[0].get_title()]
    assert len(sweep_figures) == 2
    for fig in sweep_figures:
        lines = {line.get_label(): line.get_color() for line in fig.axes[0].get_lines()}
        assert lines["fedavg"] == colour["fedavg"] and lines["fedprox"] == colour["fedprox"]


def test_the_sweep_axis_orders_numbers_ascending_and_the_value_without_a_number_last():
    summaries = [{"sweep": _point(label)} for label in ("8", "inf", "1", "4", "8")]
    assert [p["label"] for p in sweep_axis(summaries)] == ["1", "4", "8", "inf"]
    words = [{"sweep": {"key": "privacy.accountant", "value": v, "label": v}} for v in ("rdp", "prv")]
    assert [p["label"] for p in sweep_axis(words)] == ["rdp", "prv"]  # not numbers: the order given
    assert plots._sweep_x(sweep_axis(words)) == ({"rdp": 0.0, "prv": 1.0}, False)
