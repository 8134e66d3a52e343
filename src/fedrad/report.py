"""The comparison report: every number comes from the summaries in comparison.json."""

from __future__ import annotations

import json
from pathlib import Path

from fedrad.server.results import atomic_write

METRIC = "balanced_accuracy"


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.2f}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def method_rows(summaries: list[dict]) -> list[list[str]]:
    """One row per method: what it moves, how much, and how well it does, pooled and per site."""
    rows = []
    for s in summaries:
        site_values = [m[METRIC] for m in s["sites"].values()]
        by_kind = s["ledger"]["by_kind"]
        moved = [k for k, v in by_kind.items() if v > 0]
        rows.append(
            [
                s["method"] + (" (sim only)" if s["simulation_only"] else ""),
                ", ".join(moved) or "nothing",
                _mb(s["ledger"]["total_bytes"]),
                _mb(s["ledger"]["by_phase"].get("train", 0)),
                _mb(by_kind.get("raw_data", 0)),
                str(s["rounds"]),
                _fmt(s["pooled"].get("accuracy")),
                _fmt(s["pooled"].get(METRIC)),
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
    header = ["site", "n train"] + [s["method"] for s in summaries]
    rows = []
    for site in sites:
        num_train = next(s["sites"][site]["num_train"] for s in summaries if site in s["sites"])
        rows.append([site, str(num_train)] + [_fmt(s["sites"].get(site, {}).get(METRIC)) for s in summaries])
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
            markdown_table(METHOD_HEADER, method_rows(summaries)),
            "",
            f"## Per-site {METRIC.replace('_', ' ')} (each site's test set)",
            "",
            markdown_table(site_header, site_table),
            "",
        ]
    )


def write_comparison(out: Path, summaries: list[dict]) -> str:
    """Write comparison.json and report.md; return the markdown."""
    atomic_write(out / "comparison.json", json.dumps(summaries, indent=2).encode())
    markdown = render_markdown(summaries)
    atomic_write(out / "report.md", markdown.encode())
    return markdown
