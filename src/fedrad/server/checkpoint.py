"""Server checkpoints: everything needed to continue a federation after a restart, in one file.

After each completed round the server writes `checkpoint.safetensors` atomically (temporary
file, then rename): the strategy's ServerState (`models/NAME/TENSOR` and `extra/NAME`) as tensors,
and in the safetensors metadata the strategy name, the job hash, the round, the ledger rows and
the metrics.jsonl lines so far. A crash leaves either the previous checkpoint or the new one,
never half of one. `fedrad server --resume` continues with the round after `round`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.numpy import load, save

from fedrad.server.ledger import Ledger, Transfer
from fedrad.server.results import atomic_write
from fedrad.strategies.base import ServerState
from fedrad.types import DataKind

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = "fedrad-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file and the reason."""


@dataclass(frozen=True)
class Checkpoint:
    round: int  # the last completed round
    strategy: str
    job_hash: str
    state: ServerState
    ledger_rows: list[dict]
    metrics_lines: list[str]  # metrics.jsonl as it was after `round`


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    tensors = {
        f"models/{model}/{name}": array for model, weights in checkpoint.state.models.items()
        for name, array in weights.items()
    }
    tensors |= {f"extra/{name}": array for name, array in checkpoint.state.extra.items()}
    meta = {
        "format": FORMAT,
        "round": checkpoint.round,
        "strategy": checkpoint.strategy,
        "job_hash": checkpoint.job_hash,
        "ledger": checkpoint.ledger_rows,
        "metrics": checkpoint.metrics_lines,
    }
    atomic_write(Path(path), save(tensors, metadata={"fedrad": json.dumps(meta)}))


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    try:
        blob = path.read_bytes()
        tensors = load(blob)
        header_len = int.from_bytes(blob[:8], "little")
        meta = json.loads(json.loads(blob[8 : 8 + header_len])["__metadata__"]["fedrad"])
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror}") from exc
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a fedrad checkpoint: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: key 'format': expected {FORMAT!r}, got {meta.get('format')!r}")
    models: dict[str, dict] = {}
    extra = {}
    for key, array in tensors.items():
        group, _, rest = key.partition("/")
        if group == "models":
            model, _, name = rest.partition("/")
            models.setdefault(model, {})[name] = array
        elif group == "extra":
            extra[rest] = array
    return Checkpoint(
        round=int(meta["round"]),
        strategy=str(meta["strategy"]),
        job_hash=str(meta["job_hash"]),
        state=ServerState(models=models, extra=extra),
        ledger_rows=list(meta["ledger"]),
        metrics_lines=[str(line) for line in meta["metrics"]],
    )


def restore_ledger(ledger: Ledger, rows: list[dict]) -> None:
    """Put the booked transfers of the completed rounds back into a fresh ledger."""
    ledger.transfers.extend(Transfer(**{**row, "kind": DataKind(row["kind"])}) for row in rows)
