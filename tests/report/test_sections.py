from __future__ import annotations

import json

from fedrad.report.bias import add_bias
from fedrad.report.comparison import write_comparison
from fedrad.run.simulate import MethodRun, build_sites

M = "balanced_accuracy"


def _row(markdown: str, label: str, section: str) -> list[str]:
    part = markdown.split(f"## {section}")[1]
    line = next(line for line in part.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_tables_match_comparison_json(tiny_config, tmp_path):
    sites = build_sites(tiny_config)
    summaries = [MethodRun(tiny_config, m, tmp_path / m, sites).run() for m in ("fedavg", "swt", "ensemble", "local")]
    markdown = write_comparison(tmp_path, summaries)
    saved = {s["method"]: s for s in add_bias(json.loads((tmp_path / "comparison.json").read_text()), M)}
    for method in ("fedavg", "swt", "ensemble"):
        s, row = saved[method], _row(markdown, method, "Table 1")
        assert row[2] == f"{s['ledger']['total_bytes'] / 1e6:.2f}"
        assert row[3] == f"{s['ledger']['total_bytes'] / s['rounds'] / 1e6:.2f}"
        assert row[5] == f"{s['ledger']['by_kind']['raw_data'] / 1e6:.2f}"
        assert row[7] == str(s["rounds"])
        assert row[8] == f"{s['pooled']['balanced_accuracy']:.3f}"
        assert row[9] == f"{s['bias']['spread']['min']:.3f}" and row[11] == f"{s['bias']['spread']['max']:.3f}"
    assert _row(markdown, "swt", "Table 1")[13] == f"{saved['swt']['bias']['recency']['bias']:+.3f}"
    assert saved["ensemble"]["ledger"]["by_kind"]["raw_data"] > 0 == saved["fedavg"]["ledger"]["by_kind"]["raw_data"]
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "Table 1" in html
    assert {"curves.png", "sites.png", "metric_vs_bytes.png", "cross_site.png"} <= {p.name for p in tmp_path.iterdir()}
