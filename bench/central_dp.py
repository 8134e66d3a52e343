"""What does central DP (DP-FedAvg, site-level) cost FedAvg on the six phantom hospitals?

Runs the job (default examples/phantom.yaml) through the simulator's own machinery
(`fedrad.run.simulate.MethodRun`): once without DP (the baseline, same process), then with
`privacy: {mode: central, epsilon: E, delta: 1e-5, max_grad_norm: S}` for each E, with
the simulator's own wiring (`simulate.with_privacy` wraps the strategy in `central_dp`, and
`simulate.update_validator` turns the relative norm bound off: the clip bounds every update).
Prints the pooled balanced accuracy, the noise multiplier z, the per-coordinate noise std on the
mean update z S / n, and the epsilon spent.

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


def measure(config, out: Path) -> tuple[dict, dict | None, float]:
    """(summary, its central privacy block or None, wall seconds) of one FedAvg run of `config`."""
    started = time.perf_counter()
    summary = simulate.MethodRun(config, config.strategy.name, out, simulate.build_sites(config)).run()
    wall = time.perf_counter() - started
    return summary, (summary["privacy"] if config.privacy.mode == "central" else None), wall


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
            config = job.model_copy(update={"privacy": privacy})  # central: the simulator wraps the strategy
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
