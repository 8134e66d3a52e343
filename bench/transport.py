"""One FedAvg round over gRPC + mTLS on loopback: 1 / 50 / 200 MB models, 4 and 8 client processes.

For each case a fresh server process runs one round through the real server path (Orchestrator,
FedAvg's running sum, update validation, GrpcServerTransport) while the client processes echo the
model back (no training: this measures the transport and the server's aggregation). It prints
the round's wall time, the model bytes moved (down + up) per second, and the server's peak
resident memory above its baseline (VmRSS after a warm-up round, before the model exists), in
model sizes; then the same round in-process (the simulator's transport) in the same server
process, as the baseline ratio. Last, from the 50 and 200 MB rows, the memory each extra model MB
costs (the slope) and the fixed part (gRPC's stream buffers and threads), and the 8-client row
against the 4-client row at 50 MB: the sum does not grow with the number of sites.

    .venv/bin/python bench/transport.py            # targets: >= 100 MB/s, peak < 4 x model + baseline
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SITES = tuple(f"c{i}" for i in range(8))
CASES = ((1, 4, 1), (50, 4, 1), (200, 4, 1), (50, 8, 1), (50, 8, 2))  # (model MB, clients, max_uploads)
MB = 1 << 20


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Echo:
    """A site that returns the weights it received: the transport's work without any training."""

    def __init__(self, site_id: str):
        self.site_id = site_id

    def handle(self, instruction):
        from fedrad.types import DataKind, Reply

        blob = instruction.payload[DataKind.WEIGHTS]
        return Reply(instruction.round, self.site_id, instruction.kind, {DataKind.WEIGHTS: blob}, num_examples=10)


def client(kit: str, port: int) -> None:
    from fedrad.pki.kits import load_site_kit
    from fedrad.transport.grpc_client import Backoff, GrpcClient

    site_kit = load_site_kit(kit)
    GrpcClient(Echo(site_kit.site_id), site_kit, server_address=f"127.0.0.1:{port}", backoff=Backoff(0.1, 0.5)).run()


def _one_round(transport, weights, sites) -> float:
    from fedrad.server.ledger import Ledger
    from fedrad.server.orchestrator import Orchestrator, RunContext
    from fedrad.strategies import FedAvg

    strategy = FedAvg()
    orchestrator = Orchestrator(strategy, RunContext(transport, Ledger(), None), sites, sites, 2, eval_every=100)
    state = strategy.initial_state(weights, sites)
    started = time.perf_counter()
    orchestrator.round(0, state)  # round 0 of 2, evaluation every 100: train and aggregate only
    return time.perf_counter() - started


def server(kit: str, port: int, size_mb: int, clients: int, uploads: int) -> None:
    from fedrad.transport.grpc_transport import GrpcServerTransport
    from fedrad.transport.inprocess import InProcessTransport

    sites = SITES[:clients]
    rng = np.random.default_rng(0)
    transport = GrpcServerTransport.from_kit_dir(kit, bind=f"127.0.0.1:{port}", reply_timeout_s=300, poll_s=1,
                                                 max_uploads=uploads)
    with transport:
        if transport.wait_for_sites(sites, 60):
            raise SystemExit("clients did not connect")
        _one_round(transport, {"w": np.zeros(16, np.float32)}, sites)  # warm-up: connections, threads
        baseline = _rss_mb("VmRSS")
        n = size_mb * MB // 4 // 8  # eight float32 tensors
        weights = {f"layer{i}.weight": rng.standard_normal(n, dtype=np.float32) for i in range(8)}
        wall = _one_round(transport, weights, sites)
        peak = _rss_mb("VmHWM")
    local = _one_round(InProcessTransport({s: Echo(s) for s in sites}), weights, sites)
    moved = 2 * clients * size_mb
    print(f"{size_mb:>8} {clients:>8} {uploads:>8} {wall:>8.2f} {moved / wall:>8.0f} {baseline:>8.0f} "
          f"{peak - baseline:>9.0f} {(peak - baseline) / size_mb:>8.2f} {local:>8.2f} {wall / local:>8.1f}", flush=True)


def main() -> None:
    from fedrad.pki.provision import ProjectSpec, ServerSpec, provision

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        kits = provision(ProjectSpec(name="bench", server=ServerSpec(hosts=("127.0.0.1",), port=port), sites=SITES),
                         Path(tmp) / "kits")
        me = [sys.executable, __file__]
        print("one FedAvg round, gRPC + mTLS on loopback (MB = 2**20 bytes)")
        print(f"{'model MB':>8} {'clients':>8} {'uploads':>8} {'round s':>8} {'MB/s':>8} {'base MB':>8} "
              f"{'peak+ MB':>9} {'x model':>8} {'inproc s':>8} {'ratio':>8}")
        rows = {}
        for size, count, uploads in CASES:
            clients = [subprocess.Popen([*me, "client", str(kits.sites[s]), str(port)], stderr=subprocess.DEVNULL)
                       for s in SITES[:count]]
            try:
                command = [*me, "server", str(kits.server), str(port), str(size), str(count), str(uploads)]
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                print(out, end="", flush=True)
                rows[size, count, uploads] = float(out.split()[6])
            finally:
                for process in clients:
                    process.kill()
                    process.wait()
        slope = (rows[200, 4, 1] - rows[50, 4, 1]) / 150
        print("MB/s: model bytes moved (clients down + clients up) / round wall; peak+: server VmHWM - VmRSS after")
        print("a warm-up round, before the model; x model: peak+ / model size; ratio: gRPC / in-process round")
        print(f"memory per model MB (50 -> 200 MB, 4 clients): {slope:.2f} (target < 4); fixed part: "
              f"{rows[50, 4, 1] - 50 * slope:.0f} MB")
        print(f"8 vs 4 clients at 50 MB: {rows[50, 8, 1] - rows[50, 4, 1]:+.0f} MB; "
              f"2 uploads at once vs 1 (50 MB, 8 clients): {rows[50, 8, 2] - rows[50, 8, 1]:+.0f} MB")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "server":
        server(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
