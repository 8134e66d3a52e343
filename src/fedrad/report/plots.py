"""The comparison's figures as PNG bytes (matplotlib, Agg backend), every value from the summaries.

- curves: pooled metric per round, one line per method;
- site bars: per-site metric, one group per site, one bar per method;
- metric vs bytes: pooled metric against the bytes moved so far, per method (log x);
- cross-site heatmap: each site's local model on every site's test set.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def curves(summaries: list[dict], metric: str) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in summaries:
        points = [p for p in s.get("curve", []) if metric in p["pooled"]]
        ax.plot([p["round"] + 1 for p in points], [p["pooled"][metric] for p in points], marker=".", label=s["method"])
    ax.set_xlabel("round (SWT / CWT: one site visit per round)")
    ax.set_ylabel(f"pooled {metric}")
    ax.set_xscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def site_bars(summaries: list[dict], metric: str) -> bytes:
    sites = sorted({site for s in summaries for site in s["sites"]})
    fig, ax = plt.subplots(figsize=(max(7, len(sites) * 1.4), 4))
    width = 0.8 / max(len(summaries), 1)
    for k, s in enumerate(summaries):
        values = [s["sites"].get(site, {}).get(metric, np.nan) for site in sites]
        ax.bar(np.arange(len(sites)) + k * width, values, width, label=s["method"])
    ax.set_xticks(np.arange(len(sites)) + 0.4 - width / 2, sites)
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=3)
    return _png(fig)


def metric_vs_bytes(summaries: list[dict], metric: str) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in summaries:
        points = [p for p in s.get("curve", []) if metric in p["pooled"] and p["bytes"] > 0]
        if points:
            ax.plot([p["bytes"] / 1e6 for p in points], [p["pooled"][metric] for p in points], marker=".",
                    label=s["method"])  # fmt: skip
        elif s["pooled"].get(metric) is not None:  # nothing moved (local-only): one point at the axis floor
            ax.scatter([1e-3], [s["pooled"][metric]], marker="x", label=f"{s['method']} (0 MB)")
    ax.set_xscale("log")
    ax.set_xlabel("MB moved so far (all phases)")
    ax.set_ylabel(f"pooled {metric}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def cross_site_heatmap(matrix: dict[str, dict[str, float]], metric: str) -> bytes:
    models = sorted(matrix)
    sites = sorted({site for row in matrix.values() for site in row})
    values = np.array([[matrix[m].get(site, np.nan) for site in sites] for m in models])
    fig, ax = plt.subplots(figsize=(1 + 0.9 * len(sites), 1 + 0.7 * len(models)))
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
    for i in range(len(models)):
        for j in range(len(sites)):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(sites)), sites, rotation=45)
    ax.set_yticks(range(len(models)), models)
    ax.set_xlabel("test set")
    ax.set_ylabel("local model of")
    fig.colorbar(image, label=metric)
    return _png(fig)


def figures(summaries: list[dict], metric: str) -> dict[str, bytes]:
    """{file name: PNG bytes}; the heatmap only when a local-only summary carries its matrix."""
    out = {
        "curves.png": curves(summaries, metric),
        "sites.png": site_bars(summaries, metric),
        "metric_vs_bytes.png": metric_vs_bytes(summaries, metric),
    }
    matrix = next((s["bias"]["cross_site"] for s in summaries if s.get("bias", {}).get("cross_site")), None)
    if matrix:
        out["cross_site.png"] = cross_site_heatmap(matrix, metric)
    return out
