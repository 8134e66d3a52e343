"""The comparison's figures as PNG bytes (matplotlib, Agg backend), every value from the summaries.

- curves: pooled metric per round, one line per method;
- site bars: per-site metric, one group per site, one bar per method;
- metric vs bytes: pooled metric against the bytes moved so far, per method (log x);
- cross-site heatmap: each site's local model on every site's test set;
- with a sweep (`fedrad compare --sweep KEY=...`): the pooled metric against the swept value, one line
  per method, and the membership-inference AUC of the audited runs (`fedrad audit`) against it (one
  swept key; a sweep of several keys gets its table only);
- with an attack (runs that differ in `attack.sites`): the pooled metric against the number of
  attackers, one line per defence (method and `strategy.aggregator`).

A method has one colour in every figure; with a sweep, its runs differ by line style (bars: hatch).
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from fedrad.report.sections import attack_runs, defence, num_attackers, run_name, sweep_axis, sweep_tick  # noqa: E402

TITLES = {  # each figure in words (report.md's image text, and the figure's own title)
    "curves.png": "Pooled metric per round",
    "sites.png": "Metric on each site's test set",
    "metric_vs_bytes.png": "Pooled metric against the bytes moved",
    "cross_site.png": "Local-only models on every site's test set",
    "sweep_metric.png": "Pooled metric against the swept value",
    "sweep_audit_auc.png": "Membership inference AUC against the swept value",
    "attacks.png": "Pooled metric against the number of attackers",
}
_STYLES, _HATCHES = ("-", "--", ":", "-."), ("", "//", "..", "xx", "\\\\", "++")


def title(name: str) -> str:
    return TITLES.get(name, name)


def colours(summaries: list[dict]) -> dict[str, str]:
    """One colour per method, the same in every figure: matplotlib's cycle in the methods' order."""
    return {m: f"C{k % 10}" for k, m in enumerate(dict.fromkeys(s["method"] for s in summaries))}


def _variant(s: dict, axis: list[str], styles: tuple[str, ...]) -> str:
    """The line style (or hatch) of a run: by its swept value's place on the axis; the first without a sweep."""
    return styles[axis.index(s["sweep"]["label"]) % len(styles)] if s.get("sweep") else styles[0]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def curves(summaries: list[dict], metric: str) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4))
    colour, axis = colours(summaries), [p["label"] for p in sweep_axis(summaries)]
    for s in summaries:
        points = [p for p in s.get("curve", []) if metric in p["pooled"]]
        ax.plot([p["round"] + 1 for p in points], [p["pooled"][metric] for p in points], marker=".",
                label=run_name(s["method"], s.get("sweep")), color=colour[s["method"]],
                linestyle=_variant(s, axis, _STYLES))  # fmt: skip
    ax.set_title(TITLES["curves.png"])
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
    colour, axis = colours(summaries), [p["label"] for p in sweep_axis(summaries)]
    for k, s in enumerate(summaries):
        values = [s["sites"].get(site, {}).get(metric, np.nan) for site in sites]
        ax.bar(np.arange(len(sites)) + k * width, values, width, label=run_name(s["method"], s.get("sweep")),
               color=colour[s["method"]], hatch=_variant(s, axis, _HATCHES), edgecolor="white")  # fmt: skip
    ax.set_xticks(np.arange(len(sites)) + 0.4 - width / 2, sites)
    ax.set_title(TITLES["sites.png"])
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=3)
    return _png(fig)


def metric_vs_bytes(summaries: list[dict], metric: str) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4))
    colour, axis = colours(summaries), [p["label"] for p in sweep_axis(summaries)]
    for s in summaries:
        points = [p for p in s.get("curve", []) if metric in p["pooled"] and p["bytes"] > 0]
        name, c = run_name(s["method"], s.get("sweep")), colour[s["method"]]
        if points:
            ax.plot([p["bytes"] / 1e6 for p in points], [p["pooled"][metric] for p in points], marker=".",
                    label=name, color=c, linestyle=_variant(s, axis, _STYLES))  # fmt: skip
        elif s["pooled"].get(metric) is not None:  # nothing moved (local-only): one point at the axis floor
            ax.scatter([1e-3], [s["pooled"][metric]], marker="x", label=f"{name} (0 MB)", color=c)
    ax.set_title(TITLES["metric_vs_bytes.png"])
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
    ax.set_title(TITLES["cross_site.png"])
    fig.colorbar(image, label=metric)
    return _png(fig)


def _sweep_x(axis: list[dict]) -> tuple[dict[str, float], bool]:
    """Each swept value's x (by label) and whether x is log10 of it. Numbers sit at their value (log when
    all are positive and span a factor of 4 or more); a null value (privacy.epsilon inf: no DP) is not a
    number and sits one step right of the largest, with its own tick; other values are evenly spaced."""
    given = [p for p in axis if p["value"] is not None]
    if not given or not all(isinstance(p["value"], int | float) and not isinstance(p["value"], bool) for p in given):
        return {p["label"]: float(k) for k, p in enumerate(axis)}, False
    values = [float(p["value"]) for p in given]
    log = min(values) > 0 and max(values) >= 4 * min(values)
    xs = [math.log10(v) if log else v for v in values]
    step = (max(xs) - min(xs)) / (len(xs) - 1) if len(xs) > 1 else 1.0
    nulls = [p["label"] for p in axis if p["value"] is None]
    return dict(zip([p["label"] for p in given], xs, strict=True)) | {
        label: max(xs) + (k + 1) * step for k, label in enumerate(nulls)}, log  # fmt: skip


def _axis_words(key: str) -> str:
    return "the privacy budget epsilon" if key == "privacy.epsilon" else key


def sweep_plot(summaries: list[dict], y_of, ylabel: str, heading: str, chance: float | None = None) -> bytes:
    """y_of(summary) against the swept value, one line per method (`chance`: a grey level drawn across);
    a line to a value without a number (no DP) is dashed, past a dotted separator, so its x is not read
    as a number."""
    runs = [s for s in summaries if s.get("sweep") and y_of(s) is not None]
    axis = sweep_axis(summaries)
    x, log = _sweep_x(axis)
    nulls = {p["label"] for p in axis if p["value"] is None}
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, c in colours(summaries).items():
        points = sorted((x[s["sweep"]["label"]], y_of(s), s["sweep"]["label"] in nulls) for s in runs
                        if s["method"] == method)  # fmt: skip
        given = [(px, py) for px, py, null in points if not null]
        if given:
            ax.plot(*zip(*given, strict=True), marker="o", color=c, label=method)
        if len(given) < len(points):
            tail = given[-1:] + [(px, py) for px, py, null in points if null]
            ax.plot(*zip(*tail, strict=True), marker="o", color=c, linestyle="--",
                    label=None if given else method)  # fmt: skip
    if nulls and len(nulls) < len(axis):
        ax.axvline((max(x[p["label"]] for p in axis if p["value"] is not None) + min(x[n] for n in nulls)) / 2,
                   color="grey", linestyle=":", linewidth=1)  # fmt: skip
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:g})")
    ax.set_xticks([x[p["label"]] for p in axis], [sweep_tick(p) for p in axis])
    lo, hi = min(x.values(), default=0.0), max(x.values(), default=1.0)
    ax.set_xlim(lo - 0.06 * ((hi - lo) or 1), hi + 0.06 * ((hi - lo) or 1))  # every value shown, audited or not
    key = axis[0]["key"] if axis else "swept value"
    ax.set_xlabel(f"{key} (log scale)" if log else key)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{heading} against {_axis_words(key)}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def attack_plot(summaries: list[dict], metric: str) -> bytes:
    """The pooled metric against the number of attacking sites, one line per defence (`sections.defence`)."""
    runs = attack_runs(summaries)
    fig, ax = plt.subplots(figsize=(7, 4))
    lines: dict[str, list[tuple[int, float]]] = {}
    for s in runs:
        if s["pooled"].get(metric) is not None:
            lines.setdefault(defence(s), []).append((num_attackers(s), s["pooled"][metric]))
    for k, (name, points) in enumerate(lines.items()):
        ax.plot(*zip(*sorted(points), strict=True), marker="o", color=f"C{k % 10}",
                linestyle=_STYLES[(k // 10) % len(_STYLES)], label=name)  # fmt: skip
    counts = sorted({num_attackers(s) for s in runs})
    ax.set_xticks(counts, [str(c) for c in counts])
    kind = next((s["attack"]["kind"] for s in runs if s.get("attack")), "attack")
    ax.set_xlabel(f"attacking sites ({kind})")
    ax.set_ylabel(f"pooled {metric}")
    ax.set_title(TITLES["attacks.png"])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def _auc(summary: dict) -> float | None:
    return ((summary.get("audit") or {}).get("membership") or {}).get("auc")


def figures(summaries: list[dict], metric: str) -> dict[str, bytes]:
    """{file name: PNG bytes}; the heatmap only when a local-only summary carries its matrix; with a sweep
    the metric against the swept value, and the membership AUC when a swept run was audited."""
    out = {
        "curves.png": curves(summaries, metric),
        "sites.png": site_bars(summaries, metric),
        "metric_vs_bytes.png": metric_vs_bytes(summaries, metric),
    }
    matrix = next((s["bias"]["cross_site"] for s in summaries if s.get("bias", {}).get("cross_site")), None)
    if matrix:
        out["cross_site.png"] = cross_site_heatmap(matrix, metric)
    if attack_runs(summaries):
        out["attacks.png"] = attack_plot(summaries, metric)
    if any(s.get("sweep") for s in summaries) and not any((s.get("sweep") or {}).get("keys") for s in summaries):
        label = metric.replace("_", " ")
        out["sweep_metric.png"] = sweep_plot(summaries, lambda s: s["pooled"].get(metric), f"pooled {metric}",
                                             f"Pooled {label}")  # fmt: skip
    if any(s.get("sweep") and not s["sweep"].get("keys") and _auc(s) is not None for s in summaries):
        out["sweep_audit_auc.png"] = sweep_plot(summaries, _auc, "membership inference AUC (pooled)",
                                                "Membership inference AUC", chance=0.5)  # fmt: skip
    return out
