"""How much do the robust aggregators keep of FedAvg when some of the eight phantom sites attack?

Runs the job (default examples/phantom_attack.yaml: eight IID phantom sites, boosted sign-flipped
updates) through the simulator's own machinery (`fedrad.run.simulate.MethodRun`, with its wiring:
`simulate.wrapped` puts the aggregator around FedAvg, `run.attack` rewrites the attackers' replies,
the job's `validation:` judges every reply as configured). First the baseline in the same process:
FedAvg with the mean and no attack at all; then every aggregator at every number of attackers.
Prints the pooled balanced accuracy, the drop from each aggregator's own attack-free run, its
no-attack cost against the mean, the replies the validator rejected, and the issue's targets
(within 3 points of the attack-free run at 2 attackers; no-attack cost at most 2 points).

    python bench/robust.py [--job examples/phantom_attack.yaml] [--attackers 0 1 2 3] [--scale S]
        [--aggregators mean median ...] [--rounds N] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fedrad.config import load_config
from fedrad.run import simulate

AGGREGATORS = ["mean", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound"]
METRIC = "balanced_accuracy"


def measure(config, out: Path, sites) -> tuple[dict, float]:
    """(summary, wall seconds) of one FedAvg run of `config`; the summary gains `rejected` (replies the
    validator refused, from metrics.jsonl) and `notes` (rounds that kept the previous model)."""
    started = time.perf_counter()
    summary = simulate.MethodRun(config, "fedavg", out, sites).run()
    wall = time.perf_counter() - started
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary["rejected"] = sum(f["kind"] == "rejected" for line in lines for f in line["failures"])
    summary["notes"] = [note for line in lines for note in line["notes"]]
    attacking = set((summary.get("attack") or {}).get("sites") or [])
    norms = lines[0]["train"] if lines else {}  # round 0: every run starts from the same model
    honest = sorted(m["update_norm"] for site, m in norms.items() if site not in attacking and "update_norm" in m)
    hostile = [m["update_norm"] for site, m in norms.items() if site in attacking and "update_norm" in m]
    summary["norm_ratio"] = max(hostile) / statistics.median(honest) if honest and hostile else None
    return summary, wall


def rejected(summary: dict) -> int:
    return summary["rejected"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="examples/phantom_attack.yaml")
    parser.add_argument("--attackers", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--aggregators", nargs="+", default=AGGREGATORS, choices=AGGREGATORS)
    parser.add_argument("--scale", type=float, default=None)  # default: the job's attack.scale
    parser.add_argument("--rounds", type=int, default=None)  # default: the job's train.rounds
    parser.add_argument("--json", type=Path, default=None)  # every summary's numbers, for the docs
    args = parser.parse_args()
    torch.set_num_threads(1)
    job = load_config(args.job)
    if job.attack is None:
        raise SystemExit(f"{args.job}: the job has no attack section (attack: {{kind: ..., scale: ...}})")
    if args.rounds is not None:
        job = job.model_copy(update={"train": job.train.model_copy(update={"rounds": args.rounds})})
    if args.scale is not None:
        job = job.model_copy(update={"attack": job.attack.model_copy(update={"scale": args.scale})})
    sites = simulate.build_sites(job)  # the same sites for every run: the attack never changes them here
    results: dict[tuple[str, int], tuple[dict, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        mean = job.strategy.model_copy(update={"aggregator": "mean"})
        plain = job.model_copy(update={"attack": None, "strategy": mean})
        baseline, baseline_wall = measure(plain, Path(tmp) / "baseline", sites)
        for aggregator in args.aggregators:
            section = job.strategy.model_copy(update={"aggregator": aggregator})
            for count in args.attackers:
                attack = job.attack.model_copy(update={"sites": count})
                config = job.model_copy(update={"strategy": section, "attack": attack})
                config = type(job).model_validate(config.model_dump(mode="json"))  # validated as a job YAML is
                results[aggregator, count] = measure(config, Path(tmp) / f"{aggregator}-{count}", sites)
    base = baseline["pooled"][METRIC]
    a = job.attack
    print(f"job {args.job}: {len(sites)} sites, {baseline['rounds']} rounds, attack {a.kind} scale {a.scale} "
          f"(the last N sites), validation.norm_multiplier {job.validation.norm_multiplier}, krum_f "
          f"{job.strategy.krum_f}, trimmed_beta {job.strategy.trimmed_beta}, multikrum_m "
          f"{job.strategy.multikrum_m or 'n - f'}")  # fmt: skip
    print(f"baseline (fedavg, mean, no attack): pooled {METRIC} {base:.3f}  ({baseline_wall:.0f} s)")
    most = max(args.attackers)
    ratio = results[args.aggregators[0], most][0]["norm_ratio"]
    if ratio is not None:
        print(f"round 0, {most} attackers: the largest attacker's update norm is {ratio:.2f} x the honest median "
              "(the norm is over every float entry, BatchNorm statistics included; the validator rejects above "
              f"{job.validation.norm_multiplier} x the previous round's median)")
    header = " ".join(f"{f'{c} att.':>7}" for c in args.attackers)
    print(f"{'aggregator':>13} {header} {'cost':>6} {'drop@2':>6} {'rejected':>8} {'wall s':>6}  targets")
    table = {}
    for aggregator in args.aggregators:
        row = {c: results[aggregator, c][0]["pooled"][METRIC] for c in args.attackers}
        table[aggregator] = row
        free = row.get(0)
        cost = base - free if free is not None else None
        drop = free - row[2] if free is not None and 2 in row else None
        targets = []
        if drop is not None:
            targets.append(f"drop@2 {'ok' if drop <= 0.03 else 'MISSED'}")
        if cost is not None and aggregator != "mean":
            targets.append(f"cost {'ok' if cost <= 0.02 else 'MISSED'}")
        cells = " ".join(f"{row[c]:7.3f}" for c in args.attackers)
        refused = sum(rejected(results[aggregator, c][0]) for c in args.attackers)
        wall = sum(results[aggregator, c][1] for c in args.attackers) / len(args.attackers)
        fmt = lambda v: "   n/a" if v is None else f"{v:+6.3f}"  # noqa: E731
        print(f"{aggregator:>13} {cells} {fmt(cost)} {fmt(drop)} {refused:8d} {wall:6.0f}  {', '.join(targets)}")
    print("cost: baseline minus the aggregator's attack-free run; drop@2: its attack-free run minus its run at 2 "
          "attackers; rejected: replies the validator refused, over the aggregator's runs (all attacker counts)")
    if args.json is not None:
        keep = {f"{agg}@{c}": {"pooled": s["pooled"], "attack": s.get("attack"), "robust": s.get("robust"),
                               "failures": s["failures"], "rejected": rejected(s), "notes": s["notes"],
                               "status": s["status"]}
                for (agg, c), (s, _) in results.items()}  # fmt: skip
        args.json.write_text(json.dumps({"baseline": baseline["pooled"], "runs": keep, "table": table}, indent=2))


if __name__ == "__main__":
    main()
