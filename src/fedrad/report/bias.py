"""Bias measures from run summaries: how evenly a method serves the sites, and whom it favours.

- spread: per-site metric min / mean / max / std (population std over sites);
- worst-site gain: the method's metric on its worst site minus that site's local-only model's
  metric on it (needs a `local` summary in the comparison);
- recency bias (SWT / CWT): metric on the last-visited site minus on the first-visited site.
  For a companion run (`swt-reversed`, registered as swt's companion) it is also given on the
  forward run's (last, first) pair, whose sign flips when the advantage follows the visiting
  order rather than the sites;
- cross-site matrix: each site's local model on every site's test set (local-only's `cross_site`).

`add_bias` writes these into each summary as `bias`, so comparison.json carries every number the
report shows.
"""

from __future__ import annotations

import numpy as np

from fedrad.strategies import registry
from fedrad.strategies.baselines import LocalOnly


def spread(sites: dict[str, dict], metric: str) -> dict[str, float] | None:
    values = [m[metric] for m in sites.values() if metric in m]
    if not values:
        return None
    return {"min": min(values), "mean": float(np.mean(values)), "max": max(values), "std": float(np.std(values))}


def worst_site_gain(sites: dict[str, dict], local_sites: dict[str, dict], metric: str) -> dict | None:
    """The method's worst site, its metric, and the gain over that site's local-only model."""
    scored = {s: m[metric] for s, m in sites.items() if metric in m}
    if not scored:
        return None
    worst = min(scored, key=lambda s: (scored[s], s))
    local = local_sites.get(worst, {}).get(metric)
    return {"site": worst, "metric": scored[worst], "gain": None if local is None else scored[worst] - local}


def recency_bias(sites: dict[str, dict], order: list[str], metric: str) -> dict | None:
    """Metric on the last-visited site minus on the first-visited site (None without an order)."""
    if not order or order[0] not in sites or order[-1] not in sites:
        return None
    first, last = order[0], order[-1]
    return {"first": first, "last": last, "bias": sites[last][metric] - sites[first][metric]}


def cross_site_matrix(summary: dict, metric: str) -> dict | None:
    """{model site: {test site: metric}} from a local-only summary's `cross_site`."""
    cross = summary.get("cross_site")
    if not cross:
        return None
    return {model: {site: m[metric] for site, m in e["sites"].items()} for model, e in cross.items()}


def add_bias(summaries: list[dict], metric: str) -> list[dict]:
    """Each summary with a `bias` entry; pure (returns new dicts)."""
    local = next((s for s in summaries if s["method"] == LocalOnly.name), None)
    by_method = {s["method"]: s for s in summaries}
    out = []
    for s in summaries:
        bias: dict = {"spread": spread(s["sites"], metric)}
        if local is not None:
            bias["worst_site"] = worst_site_gain(s["sites"], local["sites"], metric)
        if s.get("order"):
            # the visiting order of a cycle: the last len(sites) visits (CWT's final cycle)
            bias["recency"] = recency_bias(s["sites"], s["order"][-len(s["sites"]):], metric)
        forward = by_method.get(registry.companion_of(s["method"]) or "")  # swt-reversed: the swt run
        if forward is not None and forward.get("order") and s.get("order"):
            bias["recency_on_forward_pair"] = recency_bias(s["sites"], forward["order"], metric)
        if s.get("cross_site"):  # one model per site (local-only)
            bias["cross_site"] = cross_site_matrix(s, metric)
        out.append({**s, "bias": bias})
    return out
