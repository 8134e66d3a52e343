"""The TaskBoard's rules, with no network: order, deadlines, duplicates, turns. Deadlines pass when a
test moves the board's ManualClock, and every site action in a thread hands back its outcome."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from fedrad.transport.taskboard import Ack, Task, TaskBoard
from fedrad.types import DataKind, Instruction, InstructionKind, Reply

from .helpers import Background, ManualClock, collecting, wait_until

FIT = InstructionKind.FIT


def _instruction(site: str, round: int = 4) -> Instruction:
    return Instruction(round=round, site_id=site, kind=FIT, payload={DataKind.WEIGHTS: b"w" * 10})


def _reply(task: Task, **changes: object) -> Reply:
    reply = Reply(round=task.instruction.round, site_id=task.instruction.site_id, kind=FIT, num_examples=5)
    return replace(reply, **changes)


def _board(sites: set[str], **options: int) -> tuple[TaskBoard, ManualClock]:
    clock = ManualClock()
    return TaskBoard(sites, clock=clock, **options), clock


def _pull(board: TaskBoard, site: str) -> Task:
    task = board.next_task(site, poll_s=5.0, is_active=lambda: True)
    assert task is not None
    return task


def _admit(board: TaskBoard, task: Task, is_active=lambda: True):
    return board.admit(task.instruction.site_id, task.task_id, task.instruction.site_id, task.instruction.round,
                       "fit", is_active)


def _announced(board: TaskBoard, site: str) -> bool:
    return any(t["uploading"] for t in board.snapshot()[site]["tasks"])


def test_replies_come_back_in_instruction_order() -> None:
    board, _ = _board({"a", "b"})
    with collecting(board, [_instruction("a"), _instruction("b")], timeout_s=5) as replies:
        task_b, task_a = _pull(board, "b"), _pull(board, "a")
        assert board.record("b", task_b.task_id, _reply(task_b, num_examples=2)) is None
        assert board.record("a", task_a.task_id, _reply(task_a, num_examples=1)) is None
    assert [(r.site_id, r.num_examples, r.ok) for r in replies] == [("a", 1, True), ("b", 2, True)]


def test_a_silent_site_becomes_a_failed_reply_and_its_late_reply_is_rejected() -> None:
    board, clock = _board({"a"})
    with collecting(board, [_instruction("a")], timeout_s=0.2) as replies:
        task = _pull(board, "a")
        clock.advance(0.2, board)  # the deadline passes with the instruction delivered, unanswered
    assert not replies[0].ok and "no reply within 0.2 s" in replies[0].error and "delivered 1 time" in replies[0].error
    status, reason = board.record("a", task.task_id, _reply(task))
    assert status == Ack.REJECTED and reason.startswith("late")


def test_a_site_that_never_connected_is_named_so() -> None:
    board, clock = _board({"a"})
    with collecting(board, [_instruction("a")], timeout_s=0.05) as replies:
        wait_until(lambda: bool(board.snapshot()["a"]["tasks"]))  # the task is open
        clock.advance(0.05, board)
    assert replies[0].error == "site a: no reply within 0.05 s; it never connected to this server"


def test_a_site_outside_the_federation_fails_at_once() -> None:
    replies = TaskBoard({"a"}).collect([_instruction("mallory")], timeout_s=60)
    assert "not in this server's list of allowed sites" in replies[0].error


def test_duplicates_are_idempotent_and_the_first_reply_stands() -> None:
    board, _ = _board({"a"})
    with collecting(board, [_instruction("a")], timeout_s=5) as replies:
        task = _pull(board, "a")
        assert board.record("a", task.task_id, _reply(task, num_examples=1)) is None
    assert board.record("a", task.task_id, _reply(task, num_examples=99))[0] == Ack.DUPLICATE
    assert replies[0].num_examples == 1


def test_wrong_site_stale_round_and_unknown_task_are_rejected() -> None:
    board, _ = _board({"a", "b"})
    with collecting(board, [_instruction("a", round=4)], timeout_s=5) as replies:
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
    board, _ = _board({"a"})
    with collecting(board, [_instruction("a")], timeout_s=5):
        first, again = _pull(board, "a"), _pull(board, "a")
        assert first is again and again.deliveries == 2
        board.record("a", first.task_id, _reply(first))
        assert board.next_task("a", poll_s=0.05, is_active=lambda: True) is None  # a poll with no work ends empty


@pytest.mark.parametrize("stop_first", [True, False])
def test_stop_ends_the_wait(stop_first: bool) -> None:
    board, _ = _board({"a"})
    if stop_first:
        board.stop()
        assert "stopping" in board.collect([_instruction("a")], timeout_s=60)[0].error
    else:
        with collecting(board, [_instruction("a")], timeout_s=60) as replies:
            wait_until(lambda: bool(board.snapshot()["a"]["tasks"]))  # the round is waiting for a
            board.stop()
        assert "stopped before the site replied" in replies[0].error


def test_uploads_take_turns_in_instruction_order() -> None:
    # Prepare: b finishes first and announces its reply; a is still training.
    board, _ = _board({"a", "b"})
    with collecting(board, [_instruction("a"), _instruction("b")], timeout_s=10) as replies:
        task_a, task_b = _pull(board, "a"), _pull(board, "b")
        site_b = Background(lambda: _admit(board, task_b))  # blocks until a's reply is in
        assert wait_until(lambda: _announced(board, "b"))
        # Assert: b waits (its bytes stay at the site) while the board waits for a; the clock stands
        # still, so nothing but a's reply can give b its turn
        assert not site_b.done.is_set()
        assert _admit(board, task_a) is None  # a's turn at once
        assert board.record("a", task_a.task_id, _reply(task_a, num_examples=1)) is None
        assert site_b.result() is None  # now b's turn
        assert board.record("b", task_b.task_id, _reply(task_b, num_examples=2)) is None
    assert [(r.site_id, r.num_examples, r.ok) for r in replies] == [("a", 1, True), ("b", 2, True)]


def test_a_site_that_announced_before_the_deadline_is_on_time_when_its_turn_comes_later() -> None:
    # a never answers; b announces at once, but its turn comes only when a's task expires.
    board, clock = _board({"a", "b"})
    with collecting(board, [_instruction("a"), _instruction("b")], timeout_s=0.3) as replies:
        task_b = _pull(board, "b")
        site_b = Background(lambda: _admit(board, task_b))
        assert wait_until(lambda: _announced(board, "b"))  # announced before the deadline
        clock.advance(0.3, board)  # a's task expires; b's turn comes after its deadline
        assert site_b.result() is None
        assert board.record("b", task_b.task_id, _reply(task_b)) is None
    assert not replies[0].ok and "no reply within 0.3 s" in replies[0].error
    assert replies[1].ok


def test_a_site_that_hangs_up_while_waiting_gives_up_its_announcement() -> None:
    board, clock = _board({"a", "b"})
    with collecting(board, [_instruction("a"), _instruction("b")], timeout_s=0.5) as replies:
        task_b = _pull(board, "b")
        status, reason = _admit(board, task_b, is_active=lambda: False)
        assert status == Ack.REJECTED and "hung up" in reason
        clock.advance(0.5, board)
    # b was not announced any more at the deadline: its task expired like a's
    assert [r.ok for r in replies] == [False, False] and "no reply within" in replies[1].error


def test_the_board_keeps_no_payload_once_a_reply_is_handed_on() -> None:
    board, _ = _board({"a"})
    stream = board.stream([_instruction("a")], timeout_s=5)
    site_a = Background(lambda: board.record("a", _pull(board, "a").task_id,
                                             Reply(4, "a", FIT, {DataKind.WEIGHTS: b"x"}, 3)))
    number, reply = next(stream)
    assert site_a.result() is None
    assert number == 0 and reply.payload[DataKind.WEIGHTS] == b"x"
    assert board.snapshot()["a"]["tasks"] == []  # closed: the board holds neither the task nor its reply
    assert next(stream, None) is None


def test_a_wider_upload_window_reads_the_next_sites_while_waiting_for_the_first() -> None:
    board, _ = _board({"a", "b", "c"}, uploads=2)
    with collecting(board, [_instruction("a"), _instruction("b"), _instruction("c")], timeout_s=10) as replies:
        task_a, task_b, task_c = _pull(board, "a"), _pull(board, "b"), _pull(board, "c")
        assert _admit(board, task_b) is None  # within the window of 2: read at once, though a is not in
        assert board.record("b", task_b.task_id, _reply(task_b, num_examples=2)) is None
        site_c = Background(lambda: _admit(board, task_c))
        assert wait_until(lambda: _announced(board, "c"))
        assert not site_c.done.is_set()  # c is outside the window until a is handed on
        assert _admit(board, task_a) is None
        assert board.record("a", task_a.task_id, _reply(task_a, num_examples=1)) is None
        assert site_c.result() is None
        assert board.record("c", task_c.task_id, _reply(task_c, num_examples=3)) is None
    assert [(r.site_id, r.num_examples) for r in replies] == [("a", 1), ("b", 2), ("c", 3)]  # handed on in order


def test_the_model_sent_to_every_site_of_a_round_is_hashed_once() -> None:
    # Prepare: one encoded model for a, b and c (one bytes object, as the orchestrator sends it), another for d.
    model, other = b"m" * 1000, b"o" * 1000
    instructions = [Instruction(4, site, FIT, {DataKind.WEIGHTS: model}) for site in ("mallory", "a", "b", "c")]
    instructions.append(Instruction(4, "d", FIT, {DataKind.WEIGHTS: other}))
    board = TaskBoard(set("abcd"))

    # Execute: mallory is not a site, so its failed reply comes first, once every task is open
    stream = board.stream(instructions, timeout_s=60)
    number, reply = next(stream)

    # Assert: two distinct blobs, two hashes, whatever the number of sites
    assert number == 0 and "not in this server's list" in (reply.error or "")
    assert board.payloads_hashed == 2
    headers = {site: board.next_task(site, poll_s=5.0, is_active=lambda: True).header for site in "abcd"}
    assert {headers[site].payloads[0].sha256 for site in "abc"} == {hashlib.sha256(model).digest()}
    assert headers["d"].payloads[0].sha256 == hashlib.sha256(other).digest()
    stream.close()  # the round is abandoned: its tasks close
    assert all(entry["tasks"] == [] for entry in board.snapshot().values())
