"""What does fedrad's engine cost over a plain PyTorch FedAvg loop? (floor vs fedrad, same workload)

Workload: 8 clients x 256 phantom scans of 64x64, the small BatchNorm CNN, 5 rounds, 1 local
epoch, batch 32, SGD (lr 0.01, momentum 0.9), same seed; each run evaluated once at the end on
the same pooled test set (fedrad: `evaluation.every = rounds`).

Each measurement is a child process started by this script, alternating floor, fedrad, floor,
fedrad, ... (three of each), so both see the same machine noise. Wall and CPU time cover the
training loop (data generation and imports excluded); peak memory is the child's max RSS.

    python bench/overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLIENTS, SCANS, TEST_SCANS, ROUNDS, EPOCHS, BATCH, LR, MOMENTUM, SEED = 8, 256, 64, 5, 1, 32, 0.01, 0.9, 0


def make_clients():
    """(train images, train labels, test images, test labels) per client, from the phantom scanners."""
    from fedrad.data.phantom import DEFAULT_HOSPITALS, generate_scans

    clients = []
    for i in range(CLIENTS):
        spec = DEFAULT_HOSPITALS[i % len(DEFAULT_HOSPITALS)]
        x, y, _ = generate_scans(SCANS + TEST_SCANS, spec.prevalence, spec.scanner, np.random.default_rng([SEED, i]))
        clients.append((x[:SCANS], y[:SCANS], x[SCANS:], y[SCANS:]))
    return clients


def run_floor(clients) -> float:
    """FedAvg in plain PyTorch: load the global state, train, average the state dicts.

    Minibatches index the tensors directly (a DataLoader over a TensorDataset was ~2x slower
    here, which would flatter fedrad).
    """
    import torch

    from fedrad.tasks.classification import SmallCNN

    torch.manual_seed(SEED)
    model = SmallCNN()
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    for round in range(ROUNDS):
        states, sizes = [], []
        for i, (x, y, _, _) in enumerate(clients):
            model.load_state_dict(global_state)
            optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
            generator = torch.Generator().manual_seed(SEED * 1000 + round * 100 + i)
            xs, ys = torch.from_numpy(x), torch.from_numpy(y)
            model.train()
            for _ in range(EPOCHS):
                order = torch.randperm(len(xs), generator=generator)
                for start in range(0, len(xs), BATCH):  # direct indexing: the tightest plain loop
                    index = order[start : start + BATCH]
                    loss = torch.nn.functional.cross_entropy(model(xs[index]), ys[index])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            sizes.append(len(x))
        total = sum(sizes)
        global_state = {
            k: (sum(s[k].double() * (n / total) for s, n in zip(states, sizes, strict=True))).to(v.dtype)
            for k, v in states[0].items()
        }
    model.load_state_dict(global_state)
    model.eval()
    with torch.no_grad():  # in batches of 256, as fedrad's sites evaluate
        x_test = torch.from_numpy(np.concatenate([c[2] for c in clients]))
        y_test = np.concatenate([c[3] for c in clients])
        predicted = torch.cat([model(x_test[i : i + 256]).argmax(1) for i in range(0, len(x_test), 256)])
        return float((predicted.numpy() == y_test).mean())


def run_fedrad(clients) -> float:
    """The same workload through fedrad's simulator (Site, FedAvg, Orchestrator, ledger, results)."""
    from fedrad.config import JobConfig
    from fedrad.data.base import SiteData, Split
    from fedrad.run.simulate import MethodRun

    config = JobConfig.model_validate(
        {
            "seed": SEED,
            "train": {"rounds": ROUNDS, "local_epochs": EPOCHS, "batch_size": BATCH, "lr": LR, "momentum": MOMENTUM},
            "evaluation": {"every": ROUNDS},
        }
    )
    sites = [
        SiteData(f"client-{i}", Split(x, y), Split(x[:2], y[:2]), Split(xt, yt))
        for i, (x, y, xt, yt) in enumerate(clients)
    ]
    with tempfile.TemporaryDirectory() as out:
        summary = MethodRun(config, "fedavg", Path(out), sites).run()
    return summary["pooled"]["accuracy"]


def worker(mode: str) -> None:
    clients = make_clients()
    import torch  # noqa: F401  (imported before timing in both modes)

    wall, cpu = time.perf_counter(), time.process_time()
    accuracy = run_floor(clients) if mode == "floor" else run_fedrad(clients)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_mb": peak_mb, "accuracy": accuracy}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=["floor", "fedrad"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    runs: dict[str, list[dict]] = {"floor": [], "fedrad": []}
    for repeat in range(args.repeats):
        for mode in ("floor", "fedrad"):
            done = subprocess.run([sys.executable, __file__, "--worker", mode], capture_output=True, text=True,
                                  check=True)
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"run {repeat + 1}/{args.repeats} {mode:>6}: {runs[mode][-1]}", flush=True)
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    print(f"\nmedians of {args.repeats} runs each ({CLIENTS} clients x {SCANS} scans, {ROUNDS} rounds)")
    print(f"{'':>8} {'wall s':>8} {'cpu s':>8} {'peak MB':>8} {'accuracy':>9}")
    for mode in ("floor", "fedrad"):
        m = med[mode]
        print(f"{mode:>8} {m['wall_s']:8.2f} {m['cpu_s']:8.2f} {m['peak_mb']:8.0f} {m['accuracy']:9.3f}")
    ratio = {k: med["fedrad"][k] / med["floor"][k] for k in ("wall_s", "cpu_s", "peak_mb")}
    print(f"{'ratio':>8} {ratio['wall_s']:8.3f} {ratio['cpu_s']:8.3f} {ratio['peak_mb']:8.3f}"
          "   (fedrad / floor; targets: wall <= 1.10, peak memory <= 1.25)")


if __name__ == "__main__":
    main()
