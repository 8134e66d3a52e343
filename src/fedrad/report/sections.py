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


def run_name(method: str, sweep: dict | None = None) -> str:
    """A run's name and its folder in the comparison: the method, with a sweep its value (`fedavg@epsilon=8`),
    with several swept keys each one's (`fedavg@sites=2@aggregator=median`)."""
    if not sweep:
        return method
    return method + "".join(f"@{r['key'].rsplit('.', 1)[-1]}={r['label']}" for r in sweep.get("keys") or [sweep])


def _label(s: dict) -> str:
    return run_name(s["method"], s.get("sweep")) + (" (sim only)" if s["simulation_only"] else "")


def sweep_axis(summaries: list[dict]) -> list[dict]:
    """The swept values in their order on the axis: numbers ascending, then a null value (privacy.epsilon
    inf: no DP) last; values that are not all numbers in the order given. Each is a summary's `sweep`."""
    points = list({s["sweep"]["label"]: s["sweep"] for s in summaries if s.get("sweep")}.values())
    numbers = [p for p in points if isinstance(p["value"], int | float) and not isinstance(p["value"], bool)]
    if len(numbers) == len([p for p in points if p["value"] is not None]):
        return sorted(numbers, key=lambda p: p["value"]) + [p for p in points if p["value"] is None]
    return points


def sweep_tick(point: dict) -> str:
    """A swept value as the report writes it: `inf (no DP)` for the privacy.epsilon point without DP."""
    no_dp = point["key"] == "privacy.epsilon" and point["value"] is None
    return f"{point['label']} (no DP)" if no_dp else point["label"]


def epsilon_spent(summary: dict) -> float | None:
    """The largest epsilon a site spent (local DP), the federation's (central DP); None without DP."""
    privacy = summary.get("privacy") or {}
    if privacy.get("mode") == "central":
        return privacy.get("epsilon_final")
    spent = [site["epsilon_spent"] for site in (privacy.get("sites") or {}).values() if "epsilon_spent" in site]
    return max(spent) if spent else None


def sweep(summaries: list[dict], metric: str) -> Section | None:
    """One row per (method, swept value): the pooled metric, the worst site, the privacy spent and leaked."""
    axis = [p["label"] for p in sweep_axis(summaries)]
    runs = [s for s in summaries if s.get("sweep")]
    if not runs:
        return None
    methods = list(dict.fromkeys(s["method"] for s in runs))
    runs.sort(key=lambda s: (methods.index(s["method"]), axis.index(s["sweep"]["label"])))
    rows = []
    for s in runs:
        sites = [m[metric] for m in s["sites"].values() if metric in m]
        audit = (s.get("audit") or {}).get("membership") or {}
        privacy = s.get("privacy") or {}
        spent = "no DP" if privacy.get("mode", "none") == "none" else _f(epsilon_spent(s))
        rows.append([s["method"], sweep_tick(s["sweep"]), _f(s["pooled"].get(metric)),
                     _f(min(sites) if sites else None), spent, _f(audit.get("auc"))])  # fmt: skip
    key = runs[0]["sweep"]["key"]
    note = (
        f"Every method at each value of {key} (`fedrad compare --sweep`), in the run folders METHOD@KEY=VALUE. "
        "epsilon spent: the largest over the sites (local DP) or the federation's (central DP); membership "
        "AUC: the stronger attack's pooled AUC from `fedrad audit` of the run folder (n/a: not audited; 0.5 is chance)."
    )
    header = ["method", key, f"pooled {metric}", "site min", "epsilon spent (max over sites)", "membership AUC"]
    return f"Sweep: {key}", note, header, rows


ATTACK_KEYS = ("attack.sites", "strategy.aggregator")  # the attack plot's axis and its lines


def num_attackers(summary: dict) -> int:
    """How many sites attacked in a run: its summary's `attack.sites` (0 without an attack)."""
    return len((summary.get("attack") or {}).get("sites") or [])


def defence(summary: dict) -> str:
    """A run's defence: its method and aggregator (`fedavg median`; the method alone when it has no
    aggregator), then any other swept value (`scale=5`), so that each line of the attack plot is one setting."""
    aggregator = (summary.get("robust") or {}).get("aggregator")
    records = (summary.get("sweep") or {}).get("keys") or ([summary["sweep"]] if summary.get("sweep") else [])
    others = [f"{r['key'].rsplit('.', 1)[-1]}={r['label']}" for r in records if r["key"] not in ATTACK_KEYS]
    return " ".join([summary["method"], *([aggregator] if aggregator else []), *others])


def attack_runs(summaries: list[dict]) -> list[dict]:
    """The runs of an attack comparison (some run has an `attack`, and they differ in how many sites attack);
    empty otherwise."""
    if not any(s.get("attack") for s in summaries) or len({num_attackers(s) for s in summaries}) < 2:
        return []
    return summaries


def attacks(summaries: list[dict], metric: str) -> Section | None:
    """One row per defence: the pooled metric at each number of attackers, and its drop from the attack-free run."""
    runs = attack_runs(summaries)
    if not runs:
        return None
    counts = sorted({num_attackers(s) for s in runs})
    table: dict[str, dict[int, float | None]] = {}
    for s in runs:
        table.setdefault(defence(s), {})[num_attackers(s)] = s["pooled"].get(metric)
    rows = []
    for name, by_count in table.items():
        free = by_count.get(0)
        drops = [free - v for k, v in by_count.items() if k and free is not None and v is not None]
        rows.append([name, *(_f(by_count.get(k)) for k in counts), _f(max(drops) if drops else None)])
    most = max((s for s in runs if s.get("attack")), key=num_attackers)["attack"]
    first = next((s["attack"] for s in runs if num_attackers(s)), most)  # an attacked run: the scale it applied
    scale = "the kind's default" if first.get("scale") is None else f"{first['scale']:g}"
    used = ", ".join(f"{v:.3g}" for v in first.get("scale_used") or []) or "n/a"
    note = (
        f"Pooled {metric} by the number of attacking sites (attack {first['kind']}, scale {scale}; applied: {used}). "
        f"The attackers are the last sites of the job ({', '.join(most['sites']) or 'none'} for {len(most['sites'])}). "
        "worst drop: the attack-free run's metric minus the worst attacked one's, per defence."
    )
    header = ["defence", *(f"{k} attacker{'s' if k != 1 else ''}" for k in counts), "worst drop"]
    return f"Attacks: pooled {metric} against the number of attackers", note, header, rows


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
    found = [table1(summaries, metric), sweep(summaries, metric), attacks(summaries, metric),
             worst_sites(summaries, metric), recency(summaries, metric), budget(summaries),
             cross_site(summaries, metric)]  # fmt: skip
    for summary in summaries:  # a method's run folder that was audited (`fedrad audit`): its leakage
        if summary.get("audit"):
            found += [(f"{title} ({run_name(summary['method'], summary.get('sweep'))})", note, header, rows)
                      for title, note, header, rows in leakage_audit(summary["audit"])]
    return [s for s in found if s is not None]


def leakage_audit(audit: dict) -> list[Section]:
    """The leakage audit of one run (its audit.json, `fedrad audit RUN_DIR`): membership inference per
    site and pooled, then the gradient inversion's image quality without and with DP."""
    attacks = [a for a in ("loss", "reference") if a in audit["attacks"]]
    header = ["site", "members", "non-members"] + [f"{a} {m}" for a in attacks for m in ("AUC", "TPR@1%", "TPR@0.1%")]

    def row(name: str, by_attack: dict) -> list[str]:
        counts = by_attack[attacks[0]]
        cells = [name, str(counts["members"]), str(counts["non_members"])]
        return cells + [_f(by_attack[a][k]) for a in attacks for k in ("auc", "tpr_at_1pct_fpr", "tpr_at_01pct_fpr")]

    rows = [row(site, by_attack) for site, by_attack in audit["sites"].items()] + [row("pooled", audit["attacks"])]
    m, populations = audit["membership"], audit.get("populations", {})
    note = (
        f"Membership inference on the final model; stronger attack: {m.get('attack', 'n/a')} (pooled AUC "
        f"{_f(m['auc'])}; 0.5 is chance). loss: -loss threshold; reference: offline LiRA against reference "
        f"models trained as the job on fresh phantom scans. Non-members: {populations.get('non_members', 'n/a')}."
    )
    sections: list[Section] = [("Leakage audit: membership inference", note, header, rows)]
    inv = audit.get("inversion")
    if inv:
        dp = inv["dp"]
        budget = f"epsilon {dp['epsilon']:g}" if dp.get("epsilon") is not None else "the job's noise"
        inv_rows = [["no DP", _f(inv["no_dp"]["psnr"]), _f(inv["no_dp"]["ssim"])],
                    [f"DP-SGD, noise multiplier {dp['noise_multiplier']:.2f} ({budget})", _f(dp["psnr"]),
                     _f(dp["ssim"])]]  # fmt: skip
        if "random" in inv:
            inv_rows.append(["random start (nothing recovered)", _f(inv["random"]["psnr"]), _f(inv["random"]["ssim"])])
        inv_note = (
            f"Inverting Gradients (Geiping et al. 2020) on site {inv['site']}'s one-step update of {inv['batch']} "
            f"scan(s) at {inv['image_size']}x{inv['image_size']}; picture: {inv['picture']} (original, no DP, DP)."
        )
        sections.append(("Leakage audit: gradient inversion", inv_note, ["update", "PSNR dB", "SSIM"], inv_rows))
    return sections
