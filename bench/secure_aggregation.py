"""What does secure aggregation cost FedAvg? Upload bytes and round time, with and without, in one process.

Simulation (always): the job (default examples/phantom.yaml, six hospitals) runs FedAvg through the
simulator's own machinery twice, plain (the baseline) and with `secure_aggregation: {enabled: true}`
(every key exchange, sealed share, mask and unmasking real). It prints, for each, the bytes the
sites sent to train (weights + the protocol's messages, from the ledger), the median round wall
time and the pooled balanced accuracy; then the ratios and the largest difference between the two
final models (the fixed point's rounding).

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


def _median_round_s(out: Path) -> float:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(line["wall_s"] for line in lines)


def _row(name: str, summary: dict, out: Path) -> dict:
    upload = summary["ledger"]["train_upload_by_kind"]
    return {"run": name, "upload": sum(upload.values()), "secagg": upload.get("secagg", 0),
            "round_s": _median_round_s(out), "bacc": summary["pooled"]["balanced_accuracy"],
            "status": summary["status"], "model": load_file(out / "model.safetensors")}  # fmt: skip


def simulated(config: JobConfig, work: Path) -> list[dict]:
    rows = []
    for name, job in (("plain", config), ("secure", config.model_copy(update={
            "secure_aggregation": config.secure_aggregation.model_copy(update=SECURE)}))):  # fmt: skip
        job = JobConfig.model_validate(job.model_dump())
        out = work / f"sim-{name}"
        summary = simulate.MethodRun(job, job.strategy.name, out, simulate.build_sites(job)).run()
        rows.append(_row(name, summary, out))
    return rows


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
        rows.append(_row(name, summary, out))
    return rows


def report(title: str, rows: list[dict]) -> None:
    plain, secure = rows
    print(f"\n{title}")
    print(f"{'run':<8} {'upload MB':>10} {'of it secagg':>13} {'median round s':>15} {'pooled bal. acc':>16}  status")
    for r in rows:
        print(f"{r['run']:<8} {r['upload'] / 1e6:>10.3f} {r['secagg'] / 1e6:>13.4f} {r['round_s']:>15.3f} "
              f"{r['bacc']:>16.3f}  {r['status']}")
    diff = max(float(np.max(np.abs(plain["model"][n].astype(np.float64) - secure["model"][n])))
               for n in plain["model"] if plain["model"][n].dtype.kind == "f")  # fmt: skip
    print(f"secure / plain: upload {secure['upload'] / plain['upload']:.3f}x (target <= 1.1), "
          f"round time {secure['round_s'] / plain['round_s']:.2f}x (target <= 1.5); "
          f"largest model difference {diff:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default=str(ROOT / "examples/phantom.yaml"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--grpc", action="store_true", help="also over gRPC with three client processes")
    args = parser.parse_args()
    config = load_config(args.job)
    config = config.model_copy(update={"train": config.train.model_copy(update={"rounds": args.rounds})})
    with tempfile.TemporaryDirectory() as work:
        report(f"simulation: {args.job}, FedAvg, {args.rounds} rounds", simulated(config, Path(work)))
        if args.grpc:
            report(f"gRPC + mTLS, 3 client processes: the tiny test job, {args.rounds} rounds",
                   deployed(args.rounds, Path(work)))


if __name__ == "__main__":
    main()
