"""What does secure aggregation cost FedAvg? Upload bytes and round time, with and without, in one process.

Simulation (always): the job (default examples/phantom.yaml, six hospitals) runs FedAvg through the
simulator's own machinery twice, plain (the baseline) and with `secure_aggregation: {enabled: true}`
(every key exchange, sealed share, mask and unmasking real). It prints, for each, the bytes the
sites sent to train (weights + the protocol's messages, from the ledger), the median round wall
time (plain, secure, secure, plain: the order cancels a drifting load) and the pooled balanced
accuracy, and the CPU seconds of each kind of run and of secure aggregation's own code (wall time
on a shared machine moves with its load; CPU time does not); then the ratios, and the largest
difference between the two models after one round (the fixed point's rounding; after more rounds
the runs train from slightly different models and training amplifies the difference, so the
accuracies differ as two seeds would).

Over gRPC (`--grpc`): the same pair, each as a provisioned project with a `fedrad server` and one
`fedrad client` process per hospital on loopback with mutual TLS, so the extra message phases pay
their real round trips and the clients sign and check their keys; the median round wall time is the
server's (metrics.jsonl).

    .venv/bin/python bench/secure_aggregation.py [--job examples/phantom.yaml] [--rounds 5] [--grpc]
    # targets: upload <= 1.1 x plain, round time <= 1.5 x plain
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.deploy.helpers, for --grpc

from fedrad.config import JobConfig, load_config  # noqa: E402
from fedrad.pki.provision import ProjectSpec, ServerSpec, provision  # noqa: E402
from fedrad.run import simulate  # noqa: E402
from fedrad.secagg.participant import Participant  # noqa: E402
from fedrad.strategies.secure_agg import SecureAggregation, SecureSum  # noqa: E402

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


PROTOCOL = ((SecureAggregation, "prepare"), (SecureAggregation, "settle"), (Participant, "mask"),
            (SecureSum, "add"), (SecureSum, "finish"))  # fmt: skip


@contextlib.contextmanager
def protocol_cpu(spent: list[float]):
    """CPU seconds spent in secure aggregation's own code (key exchange, masking, sum, unmasking), added to
    `spent`: a measure the machine's load does not move, unlike wall time."""
    originals = [(cls, name, getattr(cls, name)) for cls, name in PROTOCOL]

    def timed(function):
        def call(*args, **kwargs):
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent.append(time.process_time() - started)
        return call

    for cls, name, function in originals:
        setattr(cls, name, timed(function))
    try:
        yield
    finally:
        for cls, name, function in originals:
            setattr(cls, name, function)


def simulated(config: JobConfig, work: Path) -> list[dict]:
    """Plain, secure, secure, plain (each kind's rounds pooled for the median: the order cancels drift)."""
    runs: dict[str, list] = {"plain": [], "secure": []}
    cpu: dict[str, float] = {"plain": 0.0, "secure": 0.0}
    spent: list[float] = []
    for i, name in enumerate(("plain", "secure", "secure", "plain")):
        job = config if name == "plain" else _secure(config)
        out = work / f"sim-{i}-{name}"
        started = time.process_time()
        with protocol_cpu(spent) if name == "secure" else contextlib.nullcontext():
            summary = simulate.MethodRun(job, job.strategy.name, out, simulate.build_sites(job)).run()
        cpu[name] += time.process_time() - started
        runs[name].append((summary, out))
    print(f"CPU seconds of the whole runs: plain {cpu['plain']:.1f}, secure {cpu['secure']:.1f} "
          f"({cpu['secure'] / cpu['plain']:.3f}x); of it in secure aggregation's own code {sum(spent):.2f} "
          f"({100 * sum(spent) / cpu['secure']:.2f}% of the secure runs')")
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


def deployed(config: JobConfig, work: Path) -> list[dict]:
    """The job over gRPC + mTLS: a provisioned project, `fedrad server` and one `fedrad client` per site."""
    from tests.deploy.helpers import bound_port  # noqa: I001 (the repository root is on the path from here)

    sites = [d.site_id for d in simulate.build_sites(config)]
    rows = []
    for name, job in (("plain", config), ("secure", _secure(config))):
        root = work / f"grpc-{name}"
        kits = provision(ProjectSpec(name="bench", server=ServerSpec(hosts=("127.0.0.1",), port=1), sites=tuple(sites)),
                         root / "kits")  # fmt: skip
        (root / "job.yaml").write_text(yaml.safe_dump(job.model_dump(mode="json")))
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        fedrad = [sys.executable, "-m", "fedrad.cli"]
        out = root / "run"
        with (root / "server.log").open("wb") as log:
            server = subprocess.Popen([*fedrad, "server", "--job", str(root / "job.yaml"), "--kit", str(kits.server),
                                       "--out", str(out), "--bind", "127.0.0.1:0", "--deadline", "600", "--poll", "1",
                                       "--wait-sites", "900"],
                                      stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        port = bound_port(out, server.pid, lambda process=server: process.poll() is None)
        clients = []
        for site in sites:
            (root / f"{site}.yaml").write_text(yaml.safe_dump({"data": {"source": "phantom", "site_id": site}}))
            with (root / f"{site}.log").open("wb") as log:
                clients.append(subprocess.Popen(
                    [*fedrad, "client", "--kit", str(kits.sites[site]), "--data", str(root / f"{site}.yaml"),
                     "--job", str(root / "job.yaml"), "--server", f"127.0.0.1:{port}", "--backoff-cap", "1"],
                    stdout=log, stderr=subprocess.STDOUT, env=env))  # fmt: skip
        try:
            if server.wait(timeout=3600) != 0:
                raise SystemExit(f"the {name} server failed: {(root / 'server.log').read_text()[-2000:]}")
        finally:
            for client in clients:
                client.terminate()
                client.wait()
        summary = json.loads((out / "summary.json").read_text())
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
    with tempfile.TemporaryDirectory(prefix="fedrad-bench-secagg-") as work:
        report(f"simulation: {args.job}, FedAvg, {args.rounds} rounds (plain, secure, secure, plain; medians "
               "over both runs' rounds; accuracy of the first run of each)", simulated(config, Path(work)))
        print(f"largest model difference after one round (the fixed point): {one_aggregation(config, Path(work)):.2e}")
        if args.grpc:
            report(f"gRPC + mTLS, one client process per site: {args.job}, {args.rounds} rounds",
                   deployed(config, Path(work)))


if __name__ == "__main__":
    main()
