"""The comparison report: every number comes from the summaries in comparison.json."""

from __future__ import annotations

import json
from pathlib import Path

from fedrad.report import plots
from fedrad.report.bias import add_bias
from fedrad.report.html import render_html
from fedrad.report.sections import run_name, sections
from fedrad.server.results import atomic_write

INTRO = (
    "Every number is read from comparison.json. Pooled metrics are on the union of every site's test set; "
    "each method trains rounds x local_epochs epochs per site (SWT: at most that, stopping early)."
)

METRIC = "balanced_accuracy"  # for summaries that declare none; a run's own is its task's primary_metric
_LABELS = {"balanced_accuracy": "bal. acc", "dice": "dice"}


def primary_metric(summaries: list[dict]) -> str:
    """The metric the tables show: the one the runs' task declared (each summary's `metric`)."""
    return next((s["metric"] for s in summaries if s.get("metric")), METRIC)


def method_header(summaries: list[dict]) -> list[str]:
    """METHOD_HEADER with the pooled column named after the runs' primary metric."""
    label = f"pooled {_LABELS.get(primary_metric(summaries), primary_metric(summaries))}"
    return [label if h == "pooled bal. acc" else h for h in METHOD_HEADER]


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.2f}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def method_rows(summaries: list[dict]) -> list[list[str]]:
    """One row per method: what it moves, how much, and how well it does, pooled and per site."""
    rows = []
    metric = primary_metric(summaries)
    for s in summaries:
        site_values = [m[metric] for m in s["sites"].values() if metric in m]
        by_kind = s["ledger"]["by_kind"]
        moved = [k for k, v in by_kind.items() if v > 0]
        rows.append(
            [
                run_name(s["method"], s.get("sweep")) + (" (sim only)" if s["simulation_only"] else ""),
                ", ".join(moved) or "nothing",
                _mb(s["ledger"]["total_bytes"]),
                _mb(s["ledger"]["by_phase"].get("train", 0)),
                _mb(by_kind.get("raw_data", 0)),
                str(s["rounds"]),
                _fmt(s["pooled"].get("accuracy")),
                _fmt(s["pooled"].get(metric)),
                _fmt(s["pooled"].get("auc")),
                _fmt(min(site_values) if site_values else None),
                _fmt(sum(site_values) / len(site_values) if site_values else None),
                _fmt(max(site_values) if site_values else None),
                f"{s['wall_s']:.1f}",
            ]
        )
    return rows


METHOD_HEADER = [
    "method", "transferred", "total MB", "train MB", "raw-data MB", "rounds", "pooled acc", "pooled bal. acc",
    "pooled AUC", "site min", "site mean", "site max", "wall s",
]


def site_rows(summaries: list[dict]) -> tuple[list[str], list[list[str]]]:
    sites = sorted({site for s in summaries for site in s["sites"]})
    header = ["site", "n train"] + [run_name(s["method"], s.get("sweep")) for s in summaries]
    metric = primary_metric(summaries)
    rows = []
    for site in sites:
        num_train = next(s["sites"][site]["num_train"] for s in summaries if site in s["sites"])
        rows.append([site, str(num_train)] + [_fmt(s["sites"].get(site, {}).get(metric)) for s in summaries])
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(summaries: list[dict]) -> str:
    site_header, site_table = site_rows(summaries)
    return "\n".join(
        [
            "# fedrad comparison",
            "",
            "Pooled metrics are on the union of every site's test set. For local-only, pooled is the mean",
            "over the site models of each model's pooled metrics, and each site's entry is its own model on",
            "its own test set. CDS books as raw data what each hospital would hand over (train + validation).",
            "Every method trains rounds x local_epochs epochs per site (CDS: that many epochs on the pool).",
            "total MB counts every byte across a site boundary, evaluation included; train MB only training.",
            "",
            "## Methods",
            "",
            markdown_table(method_header(summaries), method_rows(summaries)),
            "",
            f"## Per-site {primary_metric(summaries).replace('_', ' ')} (each site's test set)",
            "",
            markdown_table(site_header, site_table),
            "",
        ]
    )


def _measured_sections(summaries: list[dict], metric: str) -> str:
    """Table 1, worst site, recency, budget and cross-site sections (fedrad.report.sections)."""
    lines = []
    for title, note, header, rows in sections(summaries, metric):
        lines += [f"## {title}", "", note, "", markdown_table(header, rows), ""]
    return "\n".join(lines)


def write_comparison(out: Path, summaries: list[dict]) -> str:
    """Write comparison.json (the summaries), report.md, report.html and the figures (PNG); return
    the markdown. Every number shown is read from, or computed from, comparison.json's summaries
    (the bias measures by fedrad.report.bias.add_bias)."""
    atomic_write(out / "comparison.json", json.dumps(summaries, indent=2).encode())
    summaries = [_with_audit(out, summary) for summary in summaries]
    metric = primary_metric(summaries)
    summaries = _bias_per_point(summaries, metric)
    figures = plots.figures(summaries, metric)
    for name, png in figures.items():
        atomic_write(out / name, png)
    markdown = render_markdown(summaries) + "\n" + _measured_sections(summaries, metric)
    markdown += "\n## Figures\n\n" + "\n".join(f"![{plots.title(name)}]({name})" for name in figures) + "\n"
    atomic_write(out / "report.md", markdown.encode())
    titled = {plots.title(name): png for name, png in figures.items()}  # headed in words, not by file name
    page = render_html("fedrad comparison", INTRO, sections(summaries, metric), titled)
    atomic_write(out / "report.html", page.encode())
    return markdown


def _bias_per_point(summaries: list[dict], metric: str) -> list[dict]:
    """add_bias within each swept value's runs (worst-site gain against local-only at the same value), in order."""
    points = [(s.get("sweep") or {}).get("label") for s in summaries]
    biased: dict[int, dict] = {}
    for point in dict.fromkeys(points):
        group = [i for i, p in enumerate(points) if p == point]
        biased |= dict(zip(group, add_bias([summaries[i] for i in group], metric), strict=True))
    return [biased[i] for i in range(len(summaries))]


def _with_audit(out: Path, summary: dict) -> dict:
    """The summary with its run folder's audit.json (`fedrad audit out/METHOD`, with a sweep
    out/METHOD@KEY=VALUE), when there is one."""
    path = out / run_name(str(summary.get("method")), summary.get("sweep")) / "audit.json"
    return summary | {"audit": json.loads(path.read_text())} if path.is_file() else summary


def rebuild_report(out: Path) -> str:
    """Re-render report.md, report.html and the figures from an existing comparison.json."""
    return write_comparison(out, json.loads((out / "comparison.json").read_text()))
