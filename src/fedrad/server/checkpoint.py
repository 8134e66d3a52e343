"""Server checkpoints: everything needed to continue a federation after a restart, in one file that cannot lie.

After each completed round the server writes `checkpoint.safetensors`: the strategy's ServerState
(`models/NAME/TENSOR` and `extra/NAME`) as tensors, and in the safetensors metadata the strategy
name, the job hash, the round, the ledger rows and the metrics.jsonl lines so far (key `fedrad`,
a JSON string), with a digest of all of it (key `fedrad-digest`). `fedrad server --resume`
continues with the round after `round`, so the file is checked before anything in it is used:

1. its format is this version's (`fedrad-checkpoint-2`); a `-1` file has no digest and is
   refused, since resuming from unverified bytes is the failure this format exists to prevent;
2. the digest matches: sha256 over a canonical encoding (`checkpoint_digest`) of each tensor's
   name, dtype, shape and little-endian bytes in sorted name order, then the metadata JSON
   exactly as stored. One flipped bit anywhere, tensor or header, is refused;
3. the round agrees with the stored metrics lines (rounds 0..round, in order, one line each) and
   no ledger row is booked after it: an error that re-runs or skips a round is caught even if it
   came with a valid digest (a writer bug, or someone who knows the format);
4. every float tensor is finite: NaN or inf is never resumed silently.

Any failure is a CheckpointError naming the file and the reason. The previous good checkpoint is
kept as `checkpoint.prev.safetensors`, so a refused last one costs one round, not the job. Each
write is ordered so that a crash at any point leaves a state `--resume` handles:

1) the new file is written to `.checkpoint.safetensors.tmp` and fsynced (a crash now: the old
   pair is intact, the partial temporary file is ignored and later overwritten);
2) the current file becomes the previous one: a hard link (a copy where the file system has
   none) renamed onto `checkpoint.prev.safetensors`, so the current name never goes missing (a
   crash now: current and prev are the same round; resume from current);
3) the temporary file is renamed onto the current one. Every rename is atomic and the folder
   is fsynced after each, so they reach the disk in this order. (A current file missing all the
   same, deleted by hand, makes `--resume` fall back on prev: `fedrad.run.serve`.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from fedrad.server.ledger import Ledger, Transfer
from fedrad.strategies.base import ServerState
from fedrad.types import DataKind

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = "fedrad-checkpoint-2"
META_KEY, DIGEST_KEY = "fedrad", "fedrad-digest"


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


def previous_path(path: Path) -> Path:
    """Where the checkpoint before `path`'s is kept: `checkpoint.prev.safetensors` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def checkpoint_digest(tensors: Mapping[str, np.ndarray], meta_json: str) -> str:
    """sha256 over each tensor's name, dtype, shape and little-endian C-order bytes (sorted by name),
    then the metadata JSON; every part is length-prefixed, so no two checkpoints encode alike."""
    digest = hashlib.sha256(FORMAT.encode() + b"\0")

    def part(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)

    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        part(name.encode())
        part(array.dtype.name.encode())
        part(json.dumps(list(array.shape)).encode())
        part(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    part(meta_json.encode())
    return digest.hexdigest()


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write `checkpoint` to `path`, keeping the checkpoint it replaces at `previous_path(path)`."""
    tensors = {
        f"models/{model}/{name}": array for model, weights in checkpoint.state.models.items()
        for name, array in weights.items()
    }
    tensors |= {f"extra/{name}": array for name, array in checkpoint.state.extra.items()}
    meta = json.dumps({
        "format": FORMAT,
        "round": checkpoint.round,
        "strategy": checkpoint.strategy,
        "job_hash": checkpoint.job_hash,
        "ledger": checkpoint.ledger_rows,
        "metrics": checkpoint.metrics_lines,
    })
    blob = save(tensors, metadata={META_KEY: meta, DIGEST_KEY: checkpoint_digest(tensors, meta)})
    _replace_keeping_previous(Path(path), blob)


def _replace_keeping_previous(path: Path, blob: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:  # 1) the new checkpoint, whole and on disk, beside the old pair
        handle.write(blob)
        handle.flush()
        os.fsync(handle.fileno())
    if path.exists():  # 2) the current one becomes the previous one, and stays the current one until 3)
        kept = path.with_name(f".{previous_path(path).name}.tmp")
        kept.unlink(missing_ok=True)
        try:
            os.link(path, kept)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, kept)
            _fsync_file(kept)
        os.replace(kept, previous_path(path))
        kept.unlink(missing_ok=True)  # left when prev already was this file (POSIX: a rename between links is a no-op)
        _fsync_folder(path.parent)
    os.replace(tmp, path)  # 3) the new one becomes the current one
    _fsync_folder(path.parent)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make the renames in `folder` durable, in order (POSIX; Windows has no folder handle to sync)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint at `path`, verified (format, digest, round against metrics, finite values)."""
    path = Path(path)
    tensors, meta_json, digest = _read(path)
    try:
        meta = json.loads(meta_json)
        fmt = meta.get("format")
    except (ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a fedrad checkpoint: metadata is not a JSON object") from exc
    if fmt != FORMAT:
        raise CheckpointError(
            f"{path}: format {fmt!r} is not resumed by this version, which reads {FORMAT!r} (a checkpoint "
            "with a digest): finish the job with the fedrad that wrote it, or start afresh without --resume"
        )
    if digest != checkpoint_digest(tensors, meta_json):
        raise CheckpointError(f"{path}: digest mismatch: the file was changed or corrupted after it was written")
    try:
        checkpoint = Checkpoint(
            round=_exact_int(meta["round"]),
            strategy=str(meta["strategy"]),
            job_hash=str(meta["job_hash"]),
            state=_state(tensors),
            ledger_rows=[dict(row) for row in meta["ledger"]],
            metrics_lines=[str(line) for line in meta["metrics"]],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a fedrad checkpoint: metadata {type(exc).__name__}: {exc}") from exc
    _check_rounds(path, checkpoint)
    _check_finite(path, tensors)
    return checkpoint


def _read(path: Path) -> tuple[dict[str, np.ndarray], str, str]:
    """The tensors, the metadata JSON and the stored digest; CheckpointError if the file cannot be parsed."""
    try:
        blob = path.read_bytes()
        tensors = load(blob)
        header_len = int.from_bytes(blob[:8], "little")
        metadata = json.loads(blob[8 : 8 + header_len])["__metadata__"]
        return tensors, str(metadata[META_KEY]), str(metadata.get(DIGEST_KEY))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror}") from exc
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a fedrad checkpoint: {exc}") from exc


def _exact_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"key 'round' must be a round number, got {value!r}")
    return value


def _state(tensors: Mapping[str, np.ndarray]) -> ServerState:
    models: dict[str, dict] = {}
    extra = {}
    for key, array in tensors.items():
        group, _, rest = key.partition("/")
        if group == "models":
            model, _, name = rest.partition("/")
            models.setdefault(model, {})[name] = array
        elif group == "extra":
            extra[rest] = array
    return ServerState(models=models, extra=extra)


def _check_rounds(path: Path, checkpoint: Checkpoint) -> None:
    """The last completed round is the last metrics line's; the lines are rounds 0..round, in order."""
    last = checkpoint.round
    if len(checkpoint.metrics_lines) != last + 1:
        raise CheckpointError(
            f"{path}: round {last} does not match the stored metrics: {len(checkpoint.metrics_lines)} "
            f"line(s), expected {last + 1} (rounds 0..{last})"
        )
    for expected, line in enumerate(checkpoint.metrics_lines):
        try:
            got = json.loads(line).get("round")
        except (ValueError, AttributeError):
            got = None
        if got != expected or isinstance(got, bool):
            raise CheckpointError(
                f"{path}: round {last} does not match the stored metrics: line {expected + 1} is round {got!r}, "
                f"expected {expected}"
            )
    booked = [row.get("round") for row in checkpoint.ledger_rows]
    late = [r for r in booked if not isinstance(r, int) or r > last]
    if late:
        raise CheckpointError(f"{path}: the ledger books round {late[0]!r}, after the last completed round {last}")


def _check_finite(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    for name in sorted(tensors):
        array = tensors[name]
        if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or infinity: a non-finite state is not resumed")


def restore_ledger(ledger: Ledger, rows: list[dict]) -> None:
    """Put the booked transfers of the completed rounds back into a fresh ledger."""
    ledger.transfers.extend(Transfer(**{**row, "kind": DataKind(row["kind"])}) for row in rows)
