"""The comparison report's measured tables (the review's Table 1 and the bias measures).

Every value is read from the summaries (with their `bias` entries, fedrad.report.bias), i.e.
from comparison.json. Each section is (title, note, header, rows), rendered to Markdown by
fedrad.report.comparison and to HTML by fedrad.report.html.
"""

from __future__ import annotations

Section = tuple[str, str, list[str], list[list[str]]]


def _f(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.2f}"


def _label(s: dict) -> str:
    return s["method"] + (" (sim only)" if s["simulation_only"] else "")


def table1(summaries: list[dict], metric: str) -> Section:
    header = [
        "method", "transferred", "total MB", "MB / round", "train MB", "raw-data MB", "outputs MB", "rounds",
        f"pooled {metric}", "site min", "site mean", "site max", "site std", "recency bias", "wall s",
    ]
    rows = []
    for s in summaries:
        by_kind, spread = s["ledger"]["by_kind"], s.get("bias", {}).get("spread") or {}
        recency = (s.get("bias", {}).get("recency") or {}).get("bias")
        total = s["ledger"]["total_bytes"]
        rows.append([
            _label(s), ", ".join(k for k, v in by_kind.items() if v > 0) or "nothing", _mb(total),
            _mb(total / s["rounds"]) if s["rounds"] else "n/a", _mb(s["ledger"]["by_phase"].get("train", 0)),
            _mb(by_kind.get("raw_data", 0)), _mb(by_kind.get("outputs", 0)), str(s["rounds"]),
            _f(s["pooled"].get(metric)), _f(spread.get("min")), _f(spread.get("mean")), _f(spread.get("max")),
            _f(spread.get("std")), _f(recency, signed=True), f"{s['wall_s']:.1f}",
        ])  # fmt: skip
    note = (
        "Table 1 of the review, measured. transferred: the kinds of bytes that crossed a site boundary; "
        "MB / round: total over rounds (SWT / CWT: one site visit per round); recency bias: metric on the "
        "last-visited site minus on the first-visited one."
    )
    return "Table 1: methods, measured", note, header, rows


def worst_sites(summaries: list[dict], metric: str) -> Section | None:
    rows = [
        [_label(s), w["site"], _f(w["metric"]), _f(w["gain"], signed=True)]
        for s in summaries
        if (w := s.get("bias", {}).get("worst_site"))
    ]
    if not rows:
        return None
    note = "gain: the method's metric on its worst site minus that site's local-only model on it."
    return "Worst site and its gain over local-only", note, ["method", "worst site", metric, "gain"], rows


def recency(summaries: list[dict], metric: str) -> Section | None:
    rows = []
    for s in summaries:
        r = s.get("bias", {}).get("recency")
        if not r:
            continue
        pair = s.get("bias", {}).get("recency_on_forward_pair")
        on_forward = "" if pair is None else f"{_f(pair['bias'], signed=True)} ({pair['last']} - {pair['first']})"
        rows.append([_label(s), " > ".join(s["order"][-len(s["sites"]):]), r["last"], r["first"],
                     _f(r["bias"], signed=True), on_forward])  # fmt: skip
    if not rows:
        return None
    note = (
        "order: the visiting order (CWT: its last cycle). The last column is the reversed run's metric "
        "difference on the forward run's (last, first) pair: its sign flips when the advantage follows recency."
    )
    header = ["method", "order", "last", "first", "last - first", "on the forward pair"]
    return "Recency bias (sequential methods)", note, header, rows


def budget(summaries: list[dict]) -> Section:
    sites = sorted({site for s in summaries for site in s.get("local_epochs", {})})
    rows = [[_label(s)] + [f"{s.get('local_epochs', {}).get(site, 0):.0f}" for site in sites] for s in summaries]
    note = "Local training epochs each site ran (CDS: epochs on the pool; SWT stops early on its validation loss)."
    return "Training budget: local epochs per site", note, ["method"] + sites, rows


def cross_site(summaries: list[dict], metric: str) -> Section | None:
    matrix = next((s["bias"]["cross_site"] for s in summaries if s.get("bias", {}).get("cross_site")), None)
    if not matrix:
        return None
    sites = sorted({site for row in matrix.values() for site in row})
    rows = [[model] + [_f(matrix[model].get(site)) for site in sites] for model in sorted(matrix)]
    note = "Each site's local-only model (rows) on every site's test set (columns)."
    return "Cross-site matrix (local-only)", note, ["local model of"] + sites, rows


def sections(summaries: list[dict], metric: str) -> list[Section]:
    found = [table1(summaries, metric), worst_sites(summaries, metric), recency(summaries, metric),
             budget(summaries), cross_site(summaries, metric)]  # fmt: skip
    return [s for s in found if s is not None]
