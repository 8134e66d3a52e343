from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest

from fedrad.transport.taskboard import Ack, Task, TaskBoard
from fedrad.types import DataKind, Instruction, InstructionKind, Reply

FIT = InstructionKind.FIT


def _instruction(site: str, round: int = 4) -> Instruction:
    return Instruction(round=round, site_id=site, kind=FIT, payload={DataKind.WEIGHTS: b"w" * 10})


def _reply(task: Task, **changes: object) -> Reply:
    reply = Reply(round=task.instruction.round, site_id=task.instruction.site_id, kind=FIT, num_examples=5)
    return replace(reply, **changes)


@contextmanager
def _collecting(board: TaskBoard, instructions: list[Instruction], timeout_s: float) -> Iterator[list]:
    """Runs board.collect in a thread (as dispatch does); the list holds its replies once it returns."""
    result: list = []
    thread = threading.Thread(target=lambda: result.extend(board.collect(instructions, timeout_s)))
    thread.start()
    try:
        yield result
    finally:
        thread.join(timeout=10)


def _pull(board: TaskBoard, site: str) -> Task:
    task = board.next_task(site, poll_s=5.0, is_active=lambda: True)
    assert task is not None
    return task


def test_replies_come_back_in_instruction_order() -> None:
    board = TaskBoard({"a", "b"})
    with _collecting(board, [_instruction("a"), _instruction("b")], timeout_s=5) as replies:
        task_b, task_a = _pull(board, "b"), _pull(board, "a")
        assert board.record("b", task_b.task_id, _reply(task_b, num_examples=2)) is None
        assert board.record("a", task_a.task_id, _reply(task_a, num_examples=1)) is None
    assert [(r.site_id, r.num_examples, r.ok) for r in replies] == [("a", 1, True), ("b", 2, True)]


def test_a_silent_site_becomes_a_failed_reply_and_its_late_reply_is_rejected() -> None:
    board = TaskBoard({"a"})
    with _collecting(board, [_instruction("a")], timeout_s=0.2) as replies:
        task = _pull(board, "a")
    assert not replies[0].ok and "no reply within 0.2 s" in replies[0].error and "delivered 1 time" in replies[0].error
    status, reason = board.record("a", task.task_id, _reply(task))
    assert status == Ack.REJECTED and reason.startswith("late")


def test_a_site_that_never_connected_is_named_so() -> None:
    replies = TaskBoard({"a"}).collect([_instruction("a")], timeout_s=0.05)
    assert replies[0].error == "site a: no reply within 0.05 s; it never connected to this server"


def test_a_site_outside_the_federation_fails_at_once() -> None:
    replies = TaskBoard({"a"}).collect([_instruction("mallory")], timeout_s=60)
    assert "not in this server's list of allowed sites" in replies[0].error


def test_duplicates_are_idempotent_and_the_first_reply_stands() -> None:
    board = TaskBoard({"a"})
    with _collecting(board, [_instruction("a")], timeout_s=5) as replies:
        task = _pull(board, "a")
        assert board.record("a", task.task_id, _reply(task, num_examples=1)) is None
    assert board.record("a", task.task_id, _reply(task, num_examples=99))[0] == Ack.DUPLICATE
    assert replies[0].num_examples == 1


def test_wrong_site_stale_round_and_unknown_task_are_rejected() -> None:
    board = TaskBoard({"a", "b"})
    with _collecting(board, [_instruction("a", round=4)], timeout_s=5) as replies:
        task = _pull(board, "a")
        status, reason = board.admit("b", task.task_id, "b", 4, "fit", lambda: True)
        assert status == Ack.REJECTED and "belongs to site 'a'" in reason
        status, reason = board.admit("a", task.task_id, "a", 3, "fit", lambda: True)
        assert status == Ack.REJECTED and reason.startswith("stale")
        status, reason = board.admit("a", "no-such-task", "a", 4, "fit", lambda: True)
        assert status == Ack.REJECTED and "unknown task" in reason
        assert board.record("a", task.task_id, _reply(task)) is None
    assert replies[0].ok


def test_an_unanswered_task_is_offered_again_to_a_reconnecting_site() -> None:
    board = TaskBoard({"a"})
    with _collecting(board, [_instruction("a")], timeout_s=5):
        first, again = _pull(board, "a"), _pull(board, "a")
        assert first is again and again.deliveries == 2
        board.record("a", first.task_id, _reply(first))
        assert board.next_task("a", poll_s=0.05, is_active=lambda: True) is None


@pytest.mark.parametrize("stop_first", [True, False])
def test_stop_ends_the_wait(stop_first: bool) -> None:
    board = TaskBoard({"a"})
    if stop_first:
        board.stop()
        assert "stopping" in board.collect([_instruction("a")], timeout_s=60)[0].error
    else:
        with _collecting(board, [_instruction("a")], timeout_s=60) as replies:
            threading.Timer(0.05, board.stop).start()
        assert "stopped before the site replied" in replies[0].error


def _admit(board: TaskBoard, task: Task, is_active=lambda: True):
    return board.admit(task.instruction.site_id, task.task_id, task.instruction.site_id, task.instruction.round,
                       "fit", is_active)


def test_uploads_take_turns_in_instruction_order() -> None:
    # Prepare: b finishes first and announces its reply; a is still training.
    board = TaskBoard({"a", "b"})
    events: list[str] = []
    with _collecting(board, [_instruction("a"), _instruction("b")], timeout_s=10) as replies:
        task_a, task_b = _pull(board, "a"), _pull(board, "b")

        def site_b() -> None:
            assert _admit(board, task_b) is None  # blocks until a's reply is in
            events.append("b admitted")
            assert board.record("b", task_b.task_id, _reply(task_b, num_examples=2)) is None

        thread = threading.Thread(target=site_b)
        thread.start()
        thread.join(timeout=0.3)
        # Assert: b waits (its bytes stay at the site) while the board waits for a
        assert thread.is_alive() and events == []
        assert _admit(board, task_a) is None  # a's turn at once
        events.append("a admitted")
        assert board.record("a", task_a.task_id, _reply(task_a, num_examples=1)) is None
        thread.join(timeout=5)
    assert events == ["a admitted", "b admitted"]
    assert [(r.site_id, r.num_examples, r.ok) for r in replies] == [("a", 1, True), ("b", 2, True)]


def test_a_site_that_announced_before_the_deadline_is_on_time_when_its_turn_comes_later() -> None:
    # a never answers; b announces at once, but its turn comes only when a's task expires (0.3 s).
    board = TaskBoard({"a", "b"})
    with _collecting(board, [_instruction("a"), _instruction("b")], timeout_s=0.3) as replies:
        task_b = _pull(board, "b")
        assert _admit(board, task_b) is None  # returns after the deadline, once a's task closed
        assert board.record("b", task_b.task_id, _reply(task_b)) is None
    assert not replies[0].ok and "no reply within 0.3 s" in replies[0].error
    assert replies[1].ok


def test_a_site_that_hangs_up_while_waiting_gives_up_its_announcement() -> None:
    board = TaskBoard({"a", "b"})
    with _collecting(board, [_instruction("a"), _instruction("b")], timeout_s=0.5) as replies:
        task_b = _pull(board, "b")
        status, reason = _admit(board, task_b, is_active=lambda: False)
        assert status == Ack.REJECTED and "hung up" in reason
    # b was not announced any more at the deadline: its task expired like a's
    assert [r.ok for r in replies] == [False, False] and "no reply within" in replies[1].error


def test_the_board_keeps_no_payload_once_a_reply_is_handed_on() -> None:
    board = TaskBoard({"a"})
    instruction = _instruction("a")
    stream = board.stream([instruction], timeout_s=5)
    thread = threading.Thread(target=lambda: board.record("a", _pull(board, "a").task_id,
                                                          Reply(4, "a", FIT, {DataKind.WEIGHTS: b"x"}, 3)))
    thread.start()
    number, reply = next(stream)
    thread.join()
    assert number == 0 and reply.payload[DataKind.WEIGHTS] == b"x"
    assert board.snapshot()["a"]["tasks"] == []  # closed: the board holds neither the task nor its reply
    assert next(stream, None) is None


def test_a_wider_upload_window_reads_the_next_sites_while_waiting_for_the_first() -> None:
    board = TaskBoard({"a", "b", "c"}, uploads=2)
    with _collecting(board, [_instruction("a"), _instruction("b"), _instruction("c")], timeout_s=10) as replies:
        task_a, task_b, task_c = _pull(board, "a"), _pull(board, "b"), _pull(board, "c")
        assert _admit(board, task_b) is None  # within the window of 2: read at once, though a is not in
        assert board.record("b", task_b.task_id, _reply(task_b, num_examples=2)) is None
        admitted_c = threading.Event()

        def site_c() -> None:
            assert _admit(board, task_c) is None
            admitted_c.set()
            board.record("c", task_c.task_id, _reply(task_c, num_examples=3))

        thread = threading.Thread(target=site_c)
        thread.start()
        assert not admitted_c.wait(0.3)  # c is outside the window until a is handed on
        assert _admit(board, task_a) is None
        assert board.record("a", task_a.task_id, _reply(task_a, num_examples=1)) is None
        thread.join(timeout=5)
        assert admitted_c.is_set()
    assert [(r.site_id, r.num_examples) for r in replies] == [("a", 1), ("b", 2), ("c", 3)]  # handed on in order
