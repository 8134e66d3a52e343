"""What does secure aggregation cost FedAvg? Upload bytes and round time, with and without, in one process.

Simulation (always): the job (default examples/phantom.yaml, six hospitals) runs FedAvg through the
simulator's own machinery twice, plain (the baseline) and with `secure_aggregation: {enabled: true}`
(every key exchange, sealed share, mask and unmasking real). It prints, for each, the bytes the
sites sent to train (weights + the protocol's messages, from the ledger), the median round wall
time (plain, secure, secure, plain: the order cancels a drifting load) and the pooled balanced
accuracy; then the ratios, and the largest difference between the two models after one round (the
fixed point's rounding; after more rounds the runs train from slightly different models and
training amplifies the difference, so the accuracies differ as two seeds would).

Over gRPC (`--grpc`): the same pair on the tiny three-site job of the tests, each as a `fedrad
server` and three `fedrad client` processes on loopback with mutual TLS (tests/deploy/helpers.py),
so the extra message phases pay their real round trips; the median round wall time is the server's.

    .venv/bin/python bench/secure_aggregation.py [--job examples/phantom.yaml] [--rounds 5] [--grpc]
    # targets: upload <= 1.1 x plain, round time <= 1.5 x plain
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.deploy.helpers, for --grpc

from fedrad.config import JobConfig, load_config  # noqa: E402
from fedrad.run import simulate  # noqa: E402

SECURE = {"enabled": True}


def _round_times(out: Path) -> list[float]:
    return [json.loads(line)["wall_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _row(name: str, summary: dict, out: Path, times: list[float]) -> dict:
    upload = summary["ledger"]["train_upload_by_kind"]
    return {"run": name, "upload": sum(upload.values()), "secagg": upload.get("secagg", 0),
            "round_s": statistics.median(times), "bacc": summary["pooled"]["balanced_accuracy"],
            "status": summary["status"], "model": load_file(out / "model.safetensors")}  # fmt: skip


def _secure(config: JobConfig) -> JobConfig:
    return JobConfig.model_validate(config.model_dump(mode="json") | {"secure_aggregation": SECURE})


def simulated(config: JobConfig, work: Path) -> list[dict]:
    """Plain, secure, secure, plain (each kind's rounds pooled for the median: the order cancels drift)."""
    runs: dict[str, list] = {"plain": [], "secure": []}
    for i, name in enumerate(("plain", "secure", "secure", "plain")):
        job = config if name == "plain" else _secure(config)
        out = work / f"sim-{i}-{name}"
        summary = simulate.MethodRun(job, job.strategy.name, out, simulate.build_sites(job)).run()
        runs[name].append((summary, out))
    rows = []
    for name, done in runs.items():
        times = [t for _, out in done for t in _round_times(out)]
        rows.append(_row(name, done[0][0], done[0][1], times))
    return rows


def one_aggregation(config: JobConfig, work: Path) -> float:
    """The largest difference between plain and secure FedAvg after one round: the fixed point's rounding
    alone (later rounds train from slightly different models, and training amplifies the difference)."""
    one = JobConfig.model_validate(config.model_dump(mode="json") | {"train": {**config.train.model_dump(),
                                                                               "rounds": 1}})  # fmt: skip
    models = []
    for name, job in (("plain", one), ("secure", _secure(one))):
        simulate.MethodRun(job, job.strategy.name, work / f"one-{name}", simulate.build_sites(job)).run()
        models.append(load_file(work / f"one-{name}" / "model.safetensors"))
    return max(float(np.max(np.abs(models[0][n].astype(np.float64) - models[1][n])))
               for n in models[0] if models[0][n].dtype.kind == "f")  # fmt: skip


def deployed(rounds: int, work: Path) -> list[dict]:
    from tests.deploy.helpers import JOB, SITES, Federation, finish

    rows = []
    for name, extra in (("plain", {}), ("secure", {"secure_aggregation": SECURE})):
        job = {**JOB, "name": f"bench-{name}", "train": {**JOB["train"], "rounds": rounds}, **extra}
        federation = Federation(work / f"grpc-{name}", job=job)
        out = federation.root / "run"
        try:
            server = federation.server(out, deadline_s=120)
            for site in SITES:
                federation.client(site)
            summary = finish(federation, server, out, timeout_s=900)
        finally:
            federation.close()
        rows.append(_row(name, summary, out, _round_times(out)))
    return rows


def report(title: str, rows: list[dict]) -> None:
    plain, secure = rows
    print(f"\n{title}")
    print(f"{'run':<8} {'upload MB':>10} {'of it secagg':>13} {'median round s':>15} {'pooled bal. acc':>16}  status")
    for r in rows:
        print(f"{r['run']:<8} {r['upload'] / 1e6:>10.3f} {r['secagg'] / 1e6:>13.4f} {r['round_s']:>15.3f} "
              f"{r['bacc']:>16.3f}  {r['status']}")
    print(f"secure / plain: upload {secure['upload'] / plain['upload']:.3f}x (target <= 1.1), "
          f"round time {secure['round_s'] / plain['round_s']:.2f}x (target <= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default=str(ROOT / "examples/phantom.yaml"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--grpc", action="store_true", help="also over gRPC with three client processes")
    args = parser.parse_args()
    config = load_config(args.job)
    config = config.model_copy(update={"train": config.train.model_copy(update={"rounds": args.rounds})})
    with tempfile.TemporaryDirectory() as work:
        report(f"simulation: {args.job}, FedAvg, {args.rounds} rounds (plain, secure, secure, plain; medians "
               "over both runs' rounds; accuracy of the first run of each)", simulated(config, Path(work)))
        print(f"largest model difference after one round (the fixed point): {one_aggregation(config, Path(work)):.2e}")
        if args.grpc:
            report(f"gRPC + mTLS, 3 client processes: the tiny test job, {args.rounds} rounds",
                   deployed(args.rounds, Path(work)))


if __name__ == "__main__":
    main()
