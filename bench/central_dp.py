"""What does central DP (DP-FedAvg, site-level) cost FedAvg on the six phantom hospitals?

Runs the job (default examples/phantom.yaml) through the simulator's own machinery
(`fedrad.run.simulate.MethodRun`): once without DP (the baseline, same process), then with
`privacy: {mode: central, epsilon: E, delta: 1e-5, max_grad_norm: S}` for each E, with
`validation.norm_multiplier: null` (the clip bounds every update; the relative bound would reject
every update trained from a noisy model). The wrapper is
put in by patching `simulate.build_strategy` in this process only, the way the simulator wires
`central_dp.wrap` when `privacy.mode == "central"`. Prints the pooled balanced accuracy, the noise
multiplier z, the per-coordinate noise std on the mean update z S / n, and the epsilon spent.

    python bench/central_dp.py [--job examples/phantom.yaml] [--epsilons 1 4 8] [--clip 1.0] [--rounds N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fedrad.config import load_config
from fedrad.run import simulate
from fedrad.strategies import central_dp

_plain_build = simulate.build_strategy


def build_with_privacy(config, method=None):
    """`simulate.build_strategy`, wrapped by central DP when the job asks for it (the coordinator's wiring)."""
    strategy = _plain_build(config, method)
    if config.privacy.mode != "central":
        return strategy
    sites = [s.site_id for s in simulate.build_sites(config)]
    rounds = strategy.num_rounds(config.train.rounds, sites)
    return central_dp.wrap(strategy, config.privacy, sites, rounds, config.seed)


def measure(config, out: Path) -> tuple[dict, dict | None, float]:
    """(summary, central privacy summary or None, wall seconds) of one FedAvg run of `config`."""
    built: list = []

    def capture(config, method=None):
        built.append(build_with_privacy(config, method))
        return built[-1]

    simulate.build_strategy = capture
    try:
        started = time.perf_counter()
        sites = simulate.build_sites(config)
        summary = simulate.MethodRun(config, config.strategy.name, out, sites).run()
        wall = time.perf_counter() - started
    finally:
        simulate.build_strategy = _plain_build
    if config.privacy.mode != "central":
        return summary, None, wall
    return summary, central_dp.central_privacy_summary(built[-1], summary["rounds"]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="examples/phantom.yaml")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    parser.add_argument("--clip", type=float, default=1.0)  # privacy.max_grad_norm
    parser.add_argument("--rounds", type=int, default=None)  # default: the job's train.rounds
    args = parser.parse_args()
    torch.set_num_threads(2)
    job = load_config(args.job)
    if args.rounds is not None:
        job = job.model_copy(update={"train": job.train.model_copy(update={"rounds": args.rounds})})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for epsilon in [None, *args.epsilons]:
            privacy = job.privacy.model_copy(update={"mode": "none"}) if epsilon is None else job.privacy.model_copy(
                update={"mode": "central", "epsilon": epsilon, "noise_multiplier": None, "max_grad_norm": args.clip})
            # Under central DP the clip bounds every update; the relative norm bound would reject every update
            # trained from a noisy model (and is itself a data-dependent choice outside the accounting).
            validation = job.validation.model_copy(update={"norm_multiplier": None if epsilon else 10.0})
            config = job.model_copy(update={"privacy": privacy, "validation": validation})
            summary, dp, wall = measure(config, Path(tmp) / f"eps-{epsilon}")
            rows.append((epsilon, summary, dp, wall))
    baseline = rows[0][1]["pooled"]["balanced_accuracy"]
    n = len(rows[0][1]["sites"])
    print(f"job {args.job}: {n} sites, {rows[0][1]['rounds']} rounds, clip S = {args.clip}, delta = 1e-5")
    print(f"{'epsilon':>8} {'z':>7} {'z S / n':>8} {'eps spent':>9} {'bal. acc':>8} {'vs no DP':>8} {'wall s':>7}")
    for epsilon, summary, dp, wall in rows:
        acc = summary["pooled"]["balanced_accuracy"]
        if dp is None:
            print(f"{'no DP':>8} {'-':>7} {'-':>8} {'-':>9} {acc:8.3f} {1.0:8.2f} {wall:7.1f}")
            continue
        z = dp["noise_multiplier"]
        print(f"{epsilon:8g} {z:7.3f} {z * args.clip / n:8.3f} {dp['epsilon_final']:9.3f} {acc:8.3f} "
              f"{acc / baseline:8.2f} {wall:7.1f}")


if __name__ == "__main__":
    main()
