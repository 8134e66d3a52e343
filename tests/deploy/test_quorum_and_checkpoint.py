"""The deployed server's round rules (deadline, quorum) and its checkpoint, without a network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrad.server.checkpoint import Checkpoint, CheckpointError, load_checkpoint, restore_ledger, save_checkpoint
from fedrad.server.ledger import Ledger
from fedrad.server.quorum import QuorumError, QuorumTransport
from fedrad.strategies.base import ServerState
from fedrad.transport.taskboard import Task, TaskBoard
from fedrad.types import DataKind, Instruction, InstructionKind, Reply
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
    save_checkpoint(tmp_path / "c.safetensors", Checkpoint(4, "fedavg", "abc", state, ledger.rows(), ['{"round": 0}']))

    loaded = load_checkpoint(tmp_path / "c.safetensors")
    restored = Ledger()
    restore_ledger(restored, loaded.ledger_rows)
    assert (loaded.round, loaded.strategy, loaded.job_hash) == (4, "fedavg", "abc")
    assert loaded.metrics_lines == ['{"round": 0}']
    np.testing.assert_array_equal(loaded.state.models["global"]["w"], state.models["global"]["w"])
    assert loaded.state.models["global"]["n"] == 7 and loaded.state.extra["momentum"].shape == (3,)
    assert restored.summary() == ledger.summary()
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary file left


def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00junk")
    with pytest.raises(CheckpointError, match="checkpoint.safetensors: not a fedrad checkpoint"):
        load_checkpoint(path)
