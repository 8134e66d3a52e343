"""A checkpoint cannot lie: digest, round against metrics, finite state, the previous one kept."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from fedrad.server.checkpoint import (
    DIGEST_KEY,
    FORMAT,
    META_KEY,
    Checkpoint,
    CheckpointError,
    checkpoint_digest,
    load_checkpoint,
    previous_path,
    save_checkpoint,
)
from fedrad.server.ledger import Ledger
from fedrad.strategies.base import ServerState
from fedrad.types import DataKind

MISMATCH = "checkpoint.safetensors: digest mismatch: the file was changed or corrupted after it was written"
ROUND_1 = b'checkpoint-2\\", \\"round\\": 1,'  # the top-level round in the metadata JSON, escaped in the header


def _checkpoint(round: int = 1, lines: list[str] | None = None, weight: float = 0.0) -> Checkpoint:
    state = ServerState({"global": {"w": np.arange(6, dtype=np.float32).reshape(2, 3) + weight, "n": np.array(7)}},
                        extra={"m/w": np.ones(3)})
    ledger = Ledger()
    ledger.record(round, "train", "a", "sent", {DataKind.WEIGHTS: 123})
    lines = [json.dumps({"round": r, "failures": []}) for r in range(round + 1)] if lines is None else lines
    return Checkpoint(round, "fedavg", "abc", state, ledger.rows(), lines)


def _written(tmp_path: Path, checkpoint: Checkpoint | None = None) -> Path:
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, checkpoint or _checkpoint())
    return path


def _header_end(blob: bytes) -> int:
    return 8 + int.from_bytes(blob[:8], "little")


def _forge(path: Path, tensors: dict, meta: dict) -> None:
    """A file written by someone who knows the format: its digest is right for what it holds."""
    meta_json = json.dumps(meta)
    path.write_bytes(save(tensors, metadata={META_KEY: meta_json, DIGEST_KEY: checkpoint_digest(tensors, meta_json)}))


def test_a_flipped_bit_in_a_tensor_is_refused_as_a_digest_mismatch(tmp_path: Path) -> None:
    path = _written(tmp_path)
    blob = bytearray(path.read_bytes())
    blob[_header_end(blob) + 5] ^= 0x40  # a high bit of the first float of models/global/... in the data section
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=MISMATCH):
        load_checkpoint(path)


def test_a_round_changed_in_the_metadata_is_refused(tmp_path: Path) -> None:
    path = _written(tmp_path)
    blob = path.read_bytes()
    assert blob.count(ROUND_1) == 1
    path.write_bytes(blob.replace(ROUND_1, ROUND_1.replace(b"1", b"3")))
    with pytest.raises(CheckpointError, match=MISMATCH):
        load_checkpoint(path)


def test_a_raw_bit_flip_in_the_round_digit_of_the_header_is_refused(tmp_path: Path) -> None:
    path = _written(tmp_path)
    blob = bytearray(path.read_bytes())
    at = bytes(blob).index(ROUND_1) + len(ROUND_1) - 2
    blob[at] ^= 0x01  # "1" -> "0": the round before, which would run round 1 again
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=MISMATCH):
        load_checkpoint(path)


def test_every_single_bit_flip_anywhere_in_the_file_is_refused(tmp_path: Path) -> None:
    path = _written(tmp_path)
    blob = path.read_bytes()
    accepted = []
    for at in range(len(blob)):  # every byte, header length, header and data, one bit each
        damaged = bytearray(blob)
        damaged[at] ^= 1 << (at % 8)
        path.write_bytes(bytes(damaged))
        try:
            load_checkpoint(path)
        except CheckpointError as exc:
            assert str(exc).startswith(f"{path}: "), exc
        else:
            accepted.append(at)
    assert accepted == []


def test_a_nan_with_a_recomputed_digest_is_refused_as_non_finite(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.safetensors"
    meta = {"format": FORMAT, "round": 0, "strategy": "fedavg", "job_hash": "abc", "ledger": [],
            "metrics": ['{"round": 0}']}
    _forge(path, {"models/global/w": np.array([1.0, np.nan], dtype=np.float32), "extra/n": np.array(3)}, meta)
    with pytest.raises(CheckpointError, match="checkpoint.safetensors: tensor 'models/global/w' holds NaN or inf"):
        load_checkpoint(path)
    _forge(path, {"models/global/w": np.ones(2, dtype=np.float32), "extra/m/w": np.array([-np.inf])}, meta)
    with pytest.raises(CheckpointError, match="tensor 'extra/m/w' holds NaN or infinity"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("round", "lines", "reason"),
    [
        (3, ['{"round": 0}', '{"round": 1}'], "round 3 does not match the stored metrics: 2 line"),
        (1, ['{"round": 0}'], "round 1 does not match the stored metrics: 1 line"),
        (1, ['{"round": 1}', '{"round": 0}'], "line 1 is round 1, expected 0"),
        (1, ['{"round": 0}', '{"round": 2}'], "line 2 is round 2, expected 1"),
        (1, ['{"round": 0}', "not json"], "line 2 is round None, expected 1"),
    ],
)
def test_a_round_that_disagrees_with_the_metrics_lines_is_refused(
    tmp_path: Path, round: int, lines: list[str], reason: str
) -> None:
    path = _written(tmp_path, _checkpoint(round, lines))  # a valid digest over a lie: a writer's bug
    with pytest.raises(CheckpointError, match=f"checkpoint.safetensors: (round {round} .*)?{reason}"):
        load_checkpoint(path)


def test_a_ledger_row_after_the_last_round_is_refused(tmp_path: Path) -> None:
    checkpoint = _checkpoint(1)
    rows = [*checkpoint.ledger_rows, {**checkpoint.ledger_rows[0], "round": 2}]
    path = _written(tmp_path, Checkpoint(1, "fedavg", "abc", checkpoint.state, rows, checkpoint.metrics_lines))
    with pytest.raises(CheckpointError, match="the ledger books round 2, after the last completed round 1"):
        load_checkpoint(path)


def test_a_format_1_checkpoint_without_a_digest_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.safetensors"  # as fedrad-checkpoint-1 wrote it: no digest
    meta = {"format": "fedrad-checkpoint-1", "round": 0, "strategy": "fedavg", "job_hash": "abc", "ledger": [],
            "metrics": ['{"round": 0}']}
    path.write_bytes(save({"models/global/w": np.ones(2, dtype=np.float32)}, metadata={"fedrad": json.dumps(meta)}))
    with pytest.raises(CheckpointError, match=r"format 'fedrad-checkpoint-1' is not resumed by this version.*afresh"):
        load_checkpoint(path)


def test_the_digest_covers_names_dtypes_and_shapes_not_only_bytes() -> None:
    x = np.arange(6, dtype=np.float32)
    base = checkpoint_digest({"a": x.reshape(2, 3), "b": np.array(1)}, "{}")
    assert checkpoint_digest({"b": np.array(1), "a": x.reshape(2, 3)}, "{}") == base  # insertion order: none
    assert checkpoint_digest({"a": x.reshape(3, 2), "b": np.array(1)}, "{}") != base  # same bytes, other shape
    assert checkpoint_digest({"a": x.view(np.int32).reshape(2, 3), "b": np.array(1)}, "{}") != base  # other dtype
    assert checkpoint_digest({"c": x.reshape(2, 3), "b": np.array(1)}, "{}") != base  # other name
    assert checkpoint_digest({"a": x.reshape(2, 3), "b": np.array(1)}, "{ }") != base  # other metadata


def test_each_write_keeps_the_checkpoint_it_replaces_as_prev(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, _checkpoint(0))
    assert not previous_path(path).exists()
    save_checkpoint(path, _checkpoint(1, weight=1.0))
    save_checkpoint(path, _checkpoint(2, weight=2.0))

    assert previous_path(path) == tmp_path / "checkpoint.prev.safetensors"
    current, prev = load_checkpoint(path), load_checkpoint(previous_path(path))
    assert (current.round, prev.round) == (2, 1)
    np.testing.assert_array_equal(prev.state.models["global"]["w"], np.arange(6, dtype=np.float32).reshape(2, 3) + 1)
    assert prev.metrics_lines == current.metrics_lines[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.safetensors", "checkpoint.safetensors"]


def test_a_partial_temporary_file_from_a_crash_mid_write_is_ignored_and_replaced(tmp_path: Path) -> None:
    path = _written(tmp_path, _checkpoint(0))
    tmp = tmp_path / ".checkpoint.safetensors.tmp"
    tmp.write_bytes(path.read_bytes()[:50])  # the crash: step 1 of the next write, half done
    assert load_checkpoint(path).round == 0
    save_checkpoint(path, _checkpoint(1))
    assert load_checkpoint(path).round == 1 and load_checkpoint(previous_path(path)).round == 0
    assert not tmp.exists()


@pytest.mark.parametrize("crash_at", [".checkpoint.prev.safetensors.tmp", ".checkpoint.safetensors.tmp"])
def test_a_crash_at_either_rename_leaves_a_current_checkpoint_that_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    path = _written(tmp_path, _checkpoint(0))
    save_checkpoint(path, _checkpoint(1))
    replace = os.replace

    def crashing(src: os.PathLike, dst: os.PathLike) -> None:
        if Path(src).name == crash_at:
            raise KeyboardInterrupt("the server dies here")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _checkpoint(2))
    monkeypatch.undo()

    # before step 2's rename: the old pair; before step 3's: current and prev both the old current
    assert load_checkpoint(path).round == 1
    assert load_checkpoint(previous_path(path)).round == (0 if crash_at.startswith(".checkpoint.prev") else 1)
    save_checkpoint(path, _checkpoint(2))  # the next write after the restart cleans up and goes on
    assert (load_checkpoint(path).round, load_checkpoint(previous_path(path)).round) == (2, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.safetensors", "checkpoint.safetensors"]
