"""The results contract on disk: metrics.jsonl per round, model.safetensors, config.yaml, summary.json.

Every file is written atomically (temporary file, then rename), after every round, so Ctrl-C or a
crash leaves the completed rounds' results readable.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from safetensors.numpy import save_file

from fedrad.server.evaluation import summarize
from fedrad.server.orchestrator import RoundRecord
from fedrad.strategies.base import GLOBAL, ServerState


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def flat_models(state: ServerState) -> dict:
    """The shared model as is, or one model per site with names prefixed `SITE/`."""
    if set(state.models) == {GLOBAL}:
        return dict(state.models[GLOBAL])
    return {f"{owner}/{name}": array for owner, weights in state.models.items() for name, array in weights.items()}


def round_line(record: RoundRecord) -> dict:
    pooled, sites = summarize(record.evaluations) if record.evaluations else ({}, {})
    return {
        "round": record.round,
        "asked": record.asked,
        "failures": [asdict(f) for f in record.failures],
        "train": record.train_metrics,
        "pooled": pooled,
        "sites": sites,
        "bytes": record.bytes,
        "wall_s": round(record.wall_s, 4),
        "notes": record.notes,  # run-level reasons: an aggregate refused, the model kept
    }


class RunDirectory:
    """One run's folder. `on_round` is given to the Orchestrator."""

    def __init__(self, out: Path, method: str, config_yaml: str):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.method = method
        self.records: list[RoundRecord] = []
        atomic_write(self.out / "config.yaml", config_yaml.encode())
        (self.out / "metrics.jsonl").write_text("")

    def on_round(self, record: RoundRecord, state: ServerState) -> None:
        self.records.append(record)
        with (self.out / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(round_line(record)) + "\n")
        tmp = self.out / ".model.safetensors.tmp"
        save_file(flat_models(state), str(tmp), metadata={"method": self.method, "round": str(record.round)})
        os.replace(tmp, self.out / "model.safetensors")

    def write_summary(self, summary: dict) -> None:
        atomic_write(self.out / "summary.json", json.dumps(summary, indent=2).encode())
