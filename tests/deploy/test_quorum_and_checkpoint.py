"""The deployed server's round rules (deadline, quorum) and its checkpoint, without a network."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from fedrad.cli import app
from fedrad.config import JobConfig
from fedrad.run.serve import DeployError, ServerRun
from fedrad.server.checkpoint import Checkpoint, CheckpointError, load_checkpoint, restore_ledger, save_checkpoint
from fedrad.server.ledger import Ledger
from fedrad.server.quorum import QuorumError, QuorumTransport
from fedrad.strategies.base import ServerState
from fedrad.transport.taskboard import Task, TaskBoard
from fedrad.types import DataKind, Instruction, InstructionKind, Reply
from tests.deploy.helpers import JOB, SITES, Federation, finish
from tests.transport.helpers import ManualClock, collecting

FIT = InstructionKind.FIT


def _instruction(site: str) -> Instruction:
    return Instruction(round=2, site_id=site, kind=FIT, payload={DataKind.WEIGHTS: b"w"})


def _pull(board: TaskBoard, site: str) -> Task:
    task = board.next_task(site, poll_s=5.0, is_active=lambda: True)
    assert task is not None
    return task


def test_a_round_short_of_quorum_waits_past_its_deadline_for_a_late_site() -> None:
    clock = ManualClock()
    board = TaskBoard(["a", "b"], clock=clock)
    with collecting(board, [_instruction("a"), _instruction("b")], 0.2, min_replies=2, grace_s=5.0) as result:
        task_a, task_b = _pull(board, "a"), _pull(board, "b")
        assert board.record("a", task_a.task_id, Reply(2, "a", FIT, num_examples=3)) is None
        clock.advance(1.0, board)  # past the 0.2 s deadline, inside the grace; one reply, the quorum is 2
        clock.wait_looked()  # the board has judged b's task at the new time: without the rule, it closed it
        assert board.record("b", task_b.task_id, Reply(2, "b", FIT, num_examples=3)) is None
    assert [r.ok for r in result] == [True, True]


def test_a_round_closes_at_its_deadline_once_the_quorum_replied() -> None:
    clock = ManualClock()
    board = TaskBoard(["a", "b"], clock=clock)
    with collecting(board, [_instruction("a"), _instruction("b")], 0.3, min_replies=1, grace_s=30.0) as result:
        task_a = _pull(board, "a")
        assert board.record("a", task_a.task_id, Reply(2, "a", FIT, num_examples=3)) is None
        clock.advance(0.3, board)  # the deadline, far inside the 30 s grace
        clock.wait_looked()
        assert board.snapshot()["b"]["tasks"] == []  # b's task closed at the deadline: no wait for the grace
    assert result[0].ok and "no reply within 0.3 s" in (result[1].error or "")


class _Fixed:
    def __init__(self, replies: list[Reply]):
        self.replies = replies

    def dispatch(self, instructions):
        return self.replies

    def stream(self, instructions):
        yield from enumerate(self.replies)


def test_too_few_replies_fail_the_round_with_a_clear_reason() -> None:
    replies = [Reply(2, "a", FIT, num_examples=3), Reply(2, "b", FIT, error="site b: no reply within 5 s")]
    quorum = QuorumTransport(_Fixed(replies), min_sites=2)
    with pytest.raises(QuorumError, match=r"round 2: 1 of 2 sites replied, the quorum is 2: b: site b: no reply"):
        quorum.dispatch([_instruction("a"), _instruction("b")])
    assert QuorumTransport(_Fixed(replies), min_sites=1).dispatch([_instruction("a"), _instruction("b")]) == replies


def test_a_checkpoint_round_trips_state_ledger_and_metrics(tmp_path: Path) -> None:
    state = ServerState({"global": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(7)}},
                        extra={"momentum": np.ones(3)})
    ledger = Ledger()
    ledger.record(0, "train", "a", "sent", {DataKind.WEIGHTS: 123})
    lines = [f'{{"round": {r}}}' for r in range(5)]  # rounds 0..4: a checkpoint's round is its last metrics line's
    save_checkpoint(tmp_path / "c.safetensors", Checkpoint(4, "fedavg", "abc", state, ledger.rows(), lines))

    loaded = load_checkpoint(tmp_path / "c.safetensors")
    restored = Ledger()
    restore_ledger(restored, loaded.ledger_rows)
    assert (loaded.round, loaded.strategy, loaded.job_hash) == (4, "fedavg", "abc")
    assert loaded.metrics_lines == lines
    np.testing.assert_array_equal(loaded.state.models["global"]["w"], state.models["global"]["w"])
    assert loaded.state.models["global"]["n"] == 7 and loaded.state.extra["momentum"].shape == (3,)
    assert restored.summary() == ledger.summary()
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary file left


def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00junk")
    with pytest.raises(CheckpointError, match="checkpoint.safetensors: not a fedrad checkpoint"):
        load_checkpoint(path)


# --- what --resume trusts (issue 14): a refused checkpoint falls back on the previous one ---------------------------


def _round_lines(last: int) -> list[str]:
    return [json.dumps({"round": r, "failures": []}) for r in range(last + 1)]


def _saved_rounds(out: Path, last: int) -> Path:
    """The checkpoints a server writes after rounds 0..last (the current one and prev); the current path."""
    path = out / "checkpoint.safetensors"
    for r in range(last + 1):
        state = ServerState({"global": {"w": np.full(4, float(r), dtype=np.float32)}})
        ledger = Ledger()
        for booked in range(r + 1):
            ledger.record(booked, "train", "a", "sent", {DataKind.WEIGHTS: 10})
        save_checkpoint(path, Checkpoint(r, "fedavg", "abc", state, ledger.rows(), _round_lines(r)))
    return path


def _flip_a_tensor_bit(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[8 + int.from_bytes(blob[:8], "little") + 2] ^= 0x10
    path.write_bytes(bytes(blob))


def _restore(out: Path) -> tuple[int, ServerState, list[str], Ledger]:
    ledger = Ledger()
    start, state, lines = ServerRun(JobConfig.model_validate(JOB), out / "kit", out)._restore(ledger, "fedavg", "abc")
    return start, state, lines, ledger


def test_a_corrupt_checkpoint_resumes_from_the_previous_one_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _saved_rounds(tmp_path, 2)
    _flip_a_tensor_bit(path)
    with caplog.at_level(logging.WARNING, logger="fedrad.run.serve"):
        start, state, lines, ledger = _restore(tmp_path)

    assert start == 2 and lines == _round_lines(1)  # prev holds round 1: round 2 runs again
    np.testing.assert_array_equal(state.models["global"]["w"], np.full(4, 1.0, dtype=np.float32))
    assert sorted({row["round"] for row in ledger.rows()}) == [0, 1]  # the ledger of prev, not of the refused file
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "checkpoint.safetensors: digest mismatch" in warnings[0], warnings
    assert "resuming from" in warnings[0] and "checkpoint.prev.safetensors" in warnings[0]
    assert "round 2 runs again" in warnings[0]
    # the refused file is kept aside, so the next write keeps prev (the good one) instead of the bad one
    assert (tmp_path / "checkpoint.refused.safetensors").exists() and not path.exists()
    save_checkpoint(path, Checkpoint(2, "fedavg", "abc", state, ledger.rows(), _round_lines(2)))
    assert load_checkpoint(tmp_path / "checkpoint.prev.safetensors").round == 1


def test_a_missing_current_checkpoint_resumes_from_prev(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _saved_rounds(tmp_path, 1)
    path.unlink()  # deleted by hand (a write never leaves it missing), a partial next one beside it
    (tmp_path / ".checkpoint.safetensors.tmp").write_bytes(b"the new one")
    with caplog.at_level(logging.WARNING, logger="fedrad.run.serve"):
        start, _, lines, _ = _restore(tmp_path)
    assert start == 1 and lines == _round_lines(0)
    assert "checkpoint.safetensors: missing; resuming from" in caplog.text


def test_without_a_good_previous_checkpoint_resume_fails_naming_the_files(tmp_path: Path) -> None:
    path = _saved_rounds(tmp_path, 0)
    _flip_a_tensor_bit(path)
    with pytest.raises(DeployError, match=r"checkpoint.safetensors: digest mismatch: .*; no checkpoint.prev.safe"):
        _restore(tmp_path)
    _saved_rounds(tmp_path, 1)
    _flip_a_tensor_bit(path)
    _flip_a_tensor_bit(tmp_path / "checkpoint.prev.safetensors")
    with pytest.raises(DeployError, match=r"checkpoint.safetensors: digest .*; checkpoint.prev.safetensors too: dig"):
        _restore(tmp_path)
    assert path.exists()  # nothing moved when nothing could be resumed


def test_fedrad_server_resume_from_a_corrupt_checkpoint_exits_1_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    federation = Federation(tmp_path)  # the kits and job.yaml; no process is started
    monkeypatch.chdir(tmp_path)
    config = JobConfig.model_validate(JOB)
    state = ServerState({"global": {"w": np.ones(3, dtype=np.float32)}})
    path = Path("run") / "checkpoint.safetensors"
    path.parent.mkdir()
    save_checkpoint(path, Checkpoint(0, "fedavg", config.job_hash(), state, [], _round_lines(0)))
    _flip_a_tensor_bit(path)

    args = ["server", "--job", "job.yaml", "--kit", str(federation.kits.server), "--out", "run", "--resume",
            "--bind", "127.0.0.1:0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: run/checkpoint.safetensors: digest mismatch: the file was changed or corrupted after it was written; "
        "no checkpoint.prev.safetensors beside it to fall back on"
    ], result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_a_resume_after_the_last_checkpoint_was_corrupted_repeats_one_round_to_the_same_model(tmp_path: Path) -> None:
    federation = Federation(tmp_path)
    out = federation.root / "run"
    try:
        server = federation.server(out)
        for site in SITES:
            federation.client(site)
        first = finish(federation, server, out)  # the uninterrupted run: rounds 0..2
        shutil.copy(out / "model.safetensors", tmp_path / "uninterrupted.safetensors")
        # the server crashed before its summary, and its last checkpoint (round 2) was damaged on disk
        (out / "summary.json").unlink()
        _flip_a_tensor_bit(out / "checkpoint.safetensors")

        resumed = federation.server(out, "--resume")
        for site in SITES:  # the clients of the first run were told the job was over; the hospitals restart them
            federation.client(site)
        summary = finish(federation, resumed, out)
    finally:
        federation.close()

    warned = [line for line in federation.log("server").splitlines() if "WARNING" in line]
    assert len(warned) == 1 and "checkpoint.safetensors: digest mismatch" in warned[0], warned
    assert summary["resumed_from"] == 2  # prev held round 1: round 2 ran again
    assert [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    expected, got = load_file(tmp_path / "uninterrupted.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == got.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)
    assert summary["pooled"] == first["pooled"] and summary["ledger"] == first["ledger"]
    assert load_checkpoint(out / "checkpoint.safetensors").round == 2
