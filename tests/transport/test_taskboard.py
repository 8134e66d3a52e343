"""The TaskBoard's rules, with no network: order, deadlines, duplicates, turns. Deadlines pass when a
test moves the board's ManualClock, and every site action in a thread hands back its outcome."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from fedrad.transport.taskboard import (
    HEADER_SLACK_BYTES,
    METRICS_BYTES,
    Ack,
    SiteLimits,
    Task,
    TaskBoard,
    reply_limits,
)
from fedrad.types import DataKind, FailureKind, Instruction, InstructionKind, Reply

from .helpers import Background, ManualClock, collecting, wait_until

FIT = InstructionKind.FIT


def _instruction(site: str, round: int = 4) -> Instruction:
    return Instruction(round=round, site_id=site, kind=FIT, payload={DataKind.WEIGHTS: b"w" * 10})


def _reply(task: Task, **changes: object) -> Reply:
    reply = Reply(round=task.instruction.round, site_id=task.instruction.site_id, kind=FIT, num_examples=5)
    return replace(reply, **changes)


def _board(sites: set[str], **options: object) -> tuple[TaskBoard, ManualClock]:
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


# Bounded resources per site: quorum, upload windows, one poll and one upload, gone sites --------


def test_an_error_reply_does_not_count_toward_the_quorum() -> None:
    # Prepare: a replies, b answers with an error, c is still training; the quorum is 2
    board, clock = _board({"a", "b", "c"})
    instructions = [_instruction("a"), _instruction("b"), _instruction("c")]
    with collecting(board, instructions, timeout_s=1, min_replies=2, grace_s=30) as replies:
        task_a, task_b, task_c = _pull(board, "a"), _pull(board, "b"), _pull(board, "c")
        assert board.record("a", task_a.task_id, _reply(task_a)) is None
        assert board.record("b", task_b.task_id, _reply(task_b, error="site b: out of memory")) is None

        # Execute: the deadline passes with one ok reply of the 2 the quorum needs
        clock.advance(1, board)
        clock.wait_looked()

        # Assert: c's task is still open, inside the grace: the error reply was not counted as heard
        assert board.snapshot()["c"]["tasks"], "c's task closed at the deadline: the error reply skipped the quorum"
        assert board.record("c", task_c.task_id, _reply(task_c)) is None
    assert [r.ok for r in replies] == [True, False, True]


def test_a_held_upload_does_not_make_the_sites_behind_it_late() -> None:
    # Prepare: a announces and holds its upload; b announces before the deadline and waits for its turn
    board, clock = _board({"a", "b"}, limits=SiteLimits(upload_timeout_s=5))
    with collecting(board, [_instruction("a"), _instruction("b")], timeout_s=10) as replies:
        task_a, task_b = _pull(board, "a"), _pull(board, "b")
        assert _admit(board, task_a) is None  # a's turn: PROCEED, and then a sends nothing
        site_b = Background(lambda: _admit(board, task_b))
        assert wait_until(lambda: _announced(board, "b"))

        # Execute: a's window (5 s from its turn) ends; b's turn comes, and b's upload takes far past
        # the round's deadline plus another deadline (what the old rule would have allowed it)
        clock.advance(5, board)
        assert site_b.result() is None
        clock.advance(30, board)
        assert board.record("b", task_b.task_id, _reply(task_b, num_examples=2)) is None

    # Assert: a failed for holding its upload; b, whose own window had not ended, is on time
    assert replies[0].error_kind == FailureKind.TIMEOUT
    assert replies[0].error == "site a: its upload did not complete within 5 s of its turn"
    assert replies[1].ok and replies[1].num_examples == 2


def test_a_task_that_closes_cancels_the_upload_streaming_for_it() -> None:
    board, clock = _board({"a"}, limits=SiteLimits(upload_timeout_s=5))
    cancelled = []
    with collecting(board, [_instruction("a")], timeout_s=10) as replies:
        task = _pull(board, "a")
        verdict = board.admit("a", task.task_id, "a", 4, "fit", lambda: True, [("weights", 10)],
                              cancel=lambda: cancelled.append(task.task_id))
        assert verdict is None
        clock.advance(5, board)
    assert cancelled == [task.task_id] and replies[0].error_kind == FailureKind.TIMEOUT


def test_a_reply_announcing_more_than_its_instruction_implies_is_refused_unread() -> None:
    board, clock = _board({"a"})
    with collecting(board, [_instruction("a")], timeout_s=1) as replies:
        task = _pull(board, "a")
        status, reason = board.admit("a", task.task_id, "a", 4, "fit", lambda: True, [("weights", 1 << 30)])
        assert status == Ack.REJECTED and f"above the {10 + HEADER_SLACK_BYTES} this reply may carry" in reason
        status, reason = board.admit("a", task.task_id, "a", 4, "fit", lambda: True, [("raw_data", 10)])
        assert status == Ack.REJECTED and "'raw_data' is not part of a fit reply" in reason
        clock.advance(1, board)
    assert replies[0].error_kind == FailureKind.REJECTED and "'raw_data' is not part" in replies[0].error


def test_each_reply_kind_has_its_limits_from_the_instruction_sent() -> None:
    fit = Instruction(0, "a", FIT, {DataKind.WEIGHTS: b"w" * 100, DataKind.CONTROL: b"c" * 50})
    assert reply_limits(fit) == {"weights": 100 + HEADER_SLACK_BYTES, "control_variates": 50 + HEADER_SLACK_BYTES}
    evaluate = Instruction(0, "a", InstructionKind.EVALUATE, {DataKind.WEIGHTS: b"w"})
    assert reply_limits(evaluate) == {"metrics": METRICS_BYTES}
    query = Instruction(0, "a", InstructionKind.PREDICT, {DataKind.RAW_DATA: b"q"})
    assert reply_limits(query, max_payload_bytes=7) == {"outputs": 7}
    assert reply_limits(replace(query, payload={}), max_payload_bytes=7) == {"outputs": 7, "raw_data": 7}


def test_a_newer_poll_from_a_site_ends_its_previous_one() -> None:
    board, _ = _board({"a"})
    first = Background(lambda: board.next_task("a", poll_s=60, is_active=lambda: True))
    assert wait_until(lambda: board.snapshot()["a"]["polling"])
    second = Background(lambda: board.next_task("a", poll_s=0.01, is_active=lambda: True))
    assert first.result() is None  # ended at once, long before its 60 s
    assert second.result() is None


def test_a_second_submission_from_a_site_is_refused_while_one_is_under_way() -> None:
    board, _ = _board({"a", "b"})
    assert board.begin_submission("a") is None
    assert board.begin_submission("a") == (Ack.REJECTED, "another upload from site a is under way")
    assert board.begin_submission("b") is None  # per site
    board.end_submission("a")
    assert board.begin_submission("a") is None


def test_known_gone_sites_cost_no_deadline() -> None:
    # Prepare: a was refused; b polled long ago; c never connected; d took a task and let it expire (its
    # client died mid-fit: it no longer counts as training); e polls now
    board, clock = _board(set("abcde"), limits=SiteLimits(gone_after_s=30))
    board.refused("a", "the certificate of 'a' (serial 1f) is revoked")
    board.next_task("b", poll_s=0.0, is_active=lambda: True)
    with collecting(board, [_instruction("d")], timeout_s=1):
        _pull(board, "d")
        clock.advance(1, board)
    poll_e = Background(lambda: board.next_task("e", poll_s=60, is_active=lambda: True))
    assert wait_until(lambda: board.snapshot()["e"]["polling"])
    clock.advance(40, board)

    # Execute: a round opens for all five; the clock will not move again
    stream = board.stream([_instruction(site) for site in "abcde"], timeout_s=600)
    failures = [next(stream)[1] for _ in range(4)]  # a, b, c, d: at once, with no deadline passed

    # Assert: each gone site is a DROPPED reply saying why; e (polling) is waited for
    assert [(r.site_id, r.error_kind) for r in failures] == [(s, FailureKind.DROPPED) for s in "abcd"]
    assert failures[0].error == "site a: not waited for: its last call was refused: the certificate of 'a' " \
                                "(serial 1f) is revoked"
    assert failures[1].error == "site b: not waited for: no contact for 41 s"
    assert failures[2].error == "site c: not waited for: it has not connected in the 41 s this server has run"
    assert failures[3].error == "site d: not waited for: no contact for 41 s"
    assert poll_e.result() is not None  # e is handed its task
    assert [len(board.snapshot()[site]["tasks"]) for site in "de"] == [0, 1]
    stream.close()


def test_a_sites_declared_examples_are_pinned_at_the_first_declaration() -> None:
    board, _ = _board({"a", "b"})
    board.declare("a", 0)  # "not declared"
    board.declare("a", 120)
    board.declare("a", 9000)  # a later, different count is noted, not believed
    assert board.declared("a") == 120 and board.declared("b") is None
    entry = board.snapshot()["a"]
    assert (entry["declared_examples"], entry["declared_changed"]) == (120, 9000)


def test_the_end_of_the_job_carries_whether_it_failed() -> None:
    board, _ = _board({"a"})
    board.finish("hash", "quorum not met", failed=True)
    assert board.tell_done("a") == ("hash", "quorum not met", True)
