"""What kind of failure a task the board closes unanswered is: the board's knowledge, typed, never parsed."""

from __future__ import annotations

from fedrad.transport.taskboard import Ack, Task, TaskBoard
from fedrad.types import DataKind, FailureKind, Instruction, InstructionKind

from .helpers import ManualClock, collecting, wait_until


def _instruction(site: str) -> Instruction:
    return Instruction(round=2, site_id=site, kind=InstructionKind.FIT, payload={DataKind.WEIGHTS: b"w" * 10})


def _board(sites: set[str]) -> tuple[TaskBoard, ManualClock]:
    clock = ManualClock()
    return TaskBoard(sites, clock=clock), clock


def _pull(board: TaskBoard, site: str) -> Task:
    task = board.next_task(site, poll_s=5.0, is_active=lambda: True)
    assert task is not None
    return task


def test_a_site_that_never_connected_is_dropped():
    board, clock = _board({"a"})
    with collecting(board, [_instruction("a")], timeout_s=1) as replies:
        wait_until(lambda: bool(board.snapshot()["a"]["tasks"]))
        clock.advance(1, board)
    assert replies[0].error_kind == FailureKind.DROPPED and "never connected" in replies[0].error


def test_a_site_silent_after_its_instruction_was_delivered_timed_out():
    board, clock = _board({"a"})
    with collecting(board, [_instruction("a")], timeout_s=1) as replies:
        _pull(board, "a")
        clock.advance(1, board)
    assert replies[0].error_kind == FailureKind.TIMEOUT


def test_a_site_that_hung_up_while_waiting_for_its_turn_is_dropped():
    board, clock = _board({"a", "b"})
    with collecting(board, [_instruction("a"), _instruction("b")], timeout_s=1) as replies:
        task = _pull(board, "b")
        status, _ = board.admit("b", task.task_id, "b", 2, "fit", lambda: False)
        assert status == Ack.REJECTED
        clock.advance(1, board)
    assert replies[1].error_kind == FailureKind.DROPPED and "hung up while waiting" in replies[1].error


def test_a_malformed_upload_with_no_good_one_after_it_is_rejected_with_its_reason():
    board, clock = _board({"a"})
    with collecting(board, [_instruction("a")], timeout_s=1) as replies:
        task = _pull(board, "a")
        board.withdraw(task.task_id, FailureKind.REJECTED, "malformed reply: chunk 3 of 2")
        clock.advance(1, board)
    assert replies[0].error_kind == FailureKind.REJECTED
    assert replies[0].error == "site a: no reply within 1 s: malformed reply: chunk 3 of 2"


def test_a_site_outside_the_federation_and_a_stopping_server_are_dropped_at_once():
    board, _ = _board({"a"})
    assert board.collect([_instruction("mallory")], timeout_s=60)[0].error_kind == FailureKind.DROPPED
    board.stop()
    assert board.collect([_instruction("a")], timeout_s=60)[0].error_kind == FailureKind.DROPPED
