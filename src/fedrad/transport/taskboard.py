"""The server's board of open tasks: what each site is to pull, and which replies still count.

No networking here (the gRPC server in grpc_transport.py drives it), so the rules are testable
alone: one task per instruction, queued per site; the first valid reply answers it; at the
deadline the unanswered ones become failed Replies and close. A submission for a closed,
unknown, other site's or other round's task is rejected; a repeat of an answered one is a
DUPLICATE, so a client that retries after a lost acknowledgement does no harm. Thread-safe.

Uploads take turns. A site's reply header is judged and *announced* as soon as it arrives, but
its payload is read only when the consumer of `stream` reaches that task: in instruction order,
`uploads` at a time (1 by default). The server therefore holds at most `uploads` incoming updates,
however many sites finish together (the others wait, their bytes still at the site), and hands
them on in a fixed order, so a round's result does not depend on who finished first. A site that
announced before the deadline is on time even if its turn comes later. More than one upload at a
time suits slow links (hospitals uploading in parallel) at the cost of memory.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace

from fedrad.transport import fedrad_pb2 as pb
from fedrad.transport import wire
from fedrad.types import FailureKind, Instruction, Reply

Ack = pb.SubmitAck
Verdict = tuple[int, str] | None  # (SubmitAck status, reason); None: the reply may be recorded
CLOSED_MEMORY = 10_000  # finished task ids kept, to answer late and duplicate submissions


@dataclass
class Traffic:
    """Bytes of serialized protobuf messages exchanged with one site (TLS and HTTP/2 framing excluded)."""

    to_site: int = 0
    from_site: int = 0


@dataclass(eq=False)
class Task:
    task_id: str
    instruction: Instruction
    header: pb.InstructionHeader  # built once, so the payload digests are computed once
    reply: Reply | None = None
    deliveries: int = 0
    announced: bool = False  # its reply header arrived; the upload waits for its turn or is under way
    answered: bool = False  # a reply was recorded (kept after the reply itself is handed on)
    setback: tuple[FailureKind, str] | None = None  # the last upload that was not recorded, and why


class TaskBoard:
    def __init__(
        self, sites: Collection[str], chunk_size: int = wire.CHUNK_SIZE, uploads: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`clock` measures the rounds' deadlines (seconds; a test passes one it moves by hand)."""
        if uploads < 1:
            raise ValueError(f"uploads must be at least 1, got {uploads}")
        self.sites, self.chunk_size = frozenset(sites), chunk_size
        self.uploads = uploads  # uploads read at once: memory is about (2 + uploads) model sizes
        self.clock = clock  # round deadlines; polls and last contact are on time.monotonic
        self.cond = threading.Condition()
        self.stopped = False
        self._tasks: dict[str, Task] = {}  # open tasks by id
        self._queues: dict[str, list[Task]] = defaultdict(list)  # open tasks per site, in dispatch order
        self._closed: OrderedDict[str, str] = OrderedDict()  # finished task id -> how it finished
        self._traffic: dict[str, Traffic] = defaultdict(Traffic)
        self._last_seen: dict[str, float] = {}
        self._refused: dict[str, str] = {}  # certificate CN -> why its last call was refused
        self._late: dict[str, int] = defaultdict(int)  # replies that arrived after their task's deadline
        self._turns: set[str] = set()  # ids of the tasks whose uploads may be read now (the window)
        self.done: tuple[str, str] | None = None  # (job hash, reason) once the job has finished
        self._told: set[str] = set()  # sites that were told so
        self.payloads_hashed = 0  # distinct payload blobs hashed for headers (a round's model: once)

    def collect(
        self, instructions: Sequence[Instruction], timeout_s: float, min_replies: int = 0, grace_s: float = 0.0
    ) -> list[Reply]:
        """Every reply of `stream`, in instruction order."""
        return [reply for _, reply in self.stream(instructions, timeout_s, min_replies, grace_s)]

    def stream(
        self, instructions: Sequence[Instruction], timeout_s: float, min_replies: int = 0, grace_s: float = 0.0
    ) -> Iterator[tuple[int, Reply]]:
        """Open one task per instruction; yield (number, reply) in instruction order, each as it is in.

        A task whose site has not announced a reply by the deadline closes as a failed Reply. If
        fewer than `min_replies` sites have replied or announced at the deadline, the round waits up
        to `grace_s` longer (a quorum). An announced upload gets another `timeout_s` to complete.
        Tasks left when the caller stops iterating are closed.
        """
        entries: list[Task | Reply] = []
        digests = wire.Digests()  # the model every site of the round gets is one blob: hashed once
        with self.cond:
            for instruction in instructions:
                entries.append(self._open(instruction, digests))
            self.payloads_hashed += digests.computed
            self.cond.notify_all()
        tasks = [entry for entry in entries if isinstance(entry, Task)]
        deadline = self.clock() + timeout_s
        quorum = min(min_replies, len(tasks))
        try:
            for number in range(len(entries)):
                if isinstance(entries[number], Reply):
                    yield number, entries[number]  # type: ignore[misc]
                    continue
                # no local name holds the reply while the caller folds it: its bytes go when the caller drops them
                task: Task = entries[number]  # type: ignore[assignment]
                yield number, self._take(task, tasks, deadline, timeout_s, quorum, grace_s)
        finally:
            with self.cond:
                self._turns = set()
                for task in tasks:
                    if task.task_id in self._tasks:
                        self._close(task)
                self.cond.notify_all()

    def admit(
        self, site: str, task_id: str, claimed: str, round: int, kind: str, is_active: Callable[[], bool]
    ) -> Verdict:
        """Announce a reply header and wait for its upload's turn; None when the payload may be read now."""
        with self.cond:
            verdict = self._verdict(site, task_id, claimed, round, kind)
            if verdict is not None:
                return verdict
            task = self._tasks[task_id]
            if task.announced:
                return Ack.REJECTED, f"task {task_id}: another upload of this reply is under way"
            task.announced, task.setback = True, None
            self.cond.notify_all()
            while task.task_id not in self._turns and task.task_id in self._tasks and not self.stopped:
                if not is_active():
                    task.announced = False
                    task.setback = (FailureKind.DROPPED, "it hung up while waiting for its turn to upload")
                    self.cond.notify_all()
                    return Ack.REJECTED, f"task {task_id}: the site hung up while waiting for its turn"
                self.cond.wait(1.0)
            return self._verdict(site, task_id, claimed, round, kind) or (
                None if not self.stopped else (Ack.REJECTED, "the server is stopping")
            )

    def withdraw(self, task_id: str, kind: FailureKind = FailureKind.DROPPED, reason: str = "") -> None:
        """An admitted upload failed (malformed: REJECTED; the site hung up: DROPPED): the task waits
        for a new one, and if none comes by the deadline it fails with this kind and reason."""
        with self.cond:
            task = self._tasks.get(task_id)
            if task is not None:
                task.announced = False
                task.setback = (kind, reason or "its upload broke off")
                self.cond.notify_all()

    def next_task(self, site: str, poll_s: float, is_active: Callable[[], bool]) -> Task | None:
        """The site's first unanswered task, waiting up to `poll_s` for one; None if none came."""
        deadline = time.monotonic() + poll_s
        with self.cond:
            self._last_seen[site] = time.monotonic()
            self.cond.notify_all()
            while True:
                # An unanswered task is offered again: a client asks for work only when it is idle,
                # so it lost the previous delivery (crash, dropped connection).
                task = next((t for t in self._queues.get(site, ()) if not t.answered), None)
                remaining = deadline - time.monotonic()
                if task is not None or self.stopped or self.done or remaining <= 0 or not is_active():
                    break
                self.cond.wait(remaining)
            if task is not None:
                task.deliveries += 1
            return task

    def record(self, site: str, task_id: str, reply: Reply) -> Verdict:
        """Record a reply unless its task closed or a twin arrived meanwhile; the verdict either way."""
        with self.cond:
            verdict = self._verdict(site, task_id, reply.site_id, reply.round, reply.kind.value)
            if verdict is None:
                task = self._tasks[task_id]
                task.reply, task.answered, task.announced = reply, True, False
                self.cond.notify_all()
            return verdict

    def finish(self, job_hash: str, reason: str) -> None:
        """The job is over: every later request for work is answered with (job_hash, reason)."""
        with self.cond:
            self.done = (job_hash, reason)
            self.cond.notify_all()

    def tell_done(self, site: str) -> tuple[str, str] | None:
        """(job hash, reason) if the job is over, noting that `site` has been told; else None."""
        with self.cond:
            if self.done is not None:
                self._told.add(site)
                self.cond.notify_all()
            return self.done

    def wait_told(self, timeout_s: float) -> set[str]:
        """Wait until every site that ever connected has been told the job is over; the ones not told."""
        with self.cond:
            self.cond.wait_for(lambda: set(self._last_seen) <= self._told, timeout=timeout_s)
            return set(self._last_seen) - self._told

    def refused(self, name: str, reason: str) -> None:
        with self.cond:
            self._refused[name] = reason

    def count(self, site: str, to_site: int = 0, from_site: int = 0) -> None:
        with self.cond:
            traffic = self._traffic[site]
            traffic.to_site += to_site
            traffic.from_site += from_site

    def traffic(self) -> dict[str, Traffic]:
        with self.cond:
            return {site: replace(traffic) for site, traffic in self._traffic.items()}

    def wait_for_sites(self, sites: Collection[str], timeout_s: float) -> set[str]:
        """Wait until each site has asked for work at least once; returns the ones still missing."""
        with self.cond:
            self.cond.wait_for(lambda: set(sites) <= set(self._last_seen), timeout=timeout_s)
            return set(sites) - set(self._last_seen)

    def snapshot(self) -> dict[str, dict]:
        """Each allowed site's open tasks and contact, for a status page (a copy; no payloads)."""
        with self.cond:
            now = time.monotonic()
            return {
                site: {
                    "tasks": [
                        {"round": t.instruction.round, "kind": t.instruction.kind.value,
                         "delivered": t.deliveries, "answered": t.answered, "uploading": t.announced}
                        for t in self._queues.get(site, ())
                    ],
                    "last_seen_s": round(now - self._last_seen[site], 1) if site in self._last_seen else None,
                    "late": self._late.get(site, 0),
                    "refused": self._refused.get(site),
                    "bytes_to_site": self._traffic.get(site, Traffic()).to_site,
                    "bytes_from_site": self._traffic.get(site, Traffic()).from_site,
                }
                for site in sorted(self.sites)
            }

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _take(
        self, task: Task, tasks: Sequence[Task], deadline: float, timeout_s: float, quorum: int, grace_s: float
    ) -> Reply:
        """Open the upload window at `task` and wait for its reply; close it; the reply, or why it is missing.

        The window is `task` and the next `uploads - 1` open tasks: their uploads may be read while
        the caller waits for `task`, and they are handed on in order after it.
        """
        with self.cond:
            following = [t for t in tasks[tasks.index(task) :] if t.task_id in self._tasks]
            self._turns = {t.task_id for t in following[: self.uploads]}
            self.cond.notify_all()
            while not (self.stopped or task.answered):
                now = self.clock()
                if now < deadline:
                    self.cond.wait(deadline - now)
                    continue
                heard = sum(t.answered or t.announced for t in tasks)
                closes_at = deadline + grace_s if heard < quorum else deadline
                if task.announced:
                    closes_at = max(closes_at, deadline + timeout_s)  # its upload is under way: let it finish
                if now >= closes_at:
                    break
                self.cond.wait(closes_at - now)
            reply = task.reply or self._missing(task, timeout_s)
            task.reply = None  # handed on: the board keeps no payload
            self._turns.discard(task.task_id)
            self._close(task)
            self.cond.notify_all()
            return reply

    # with self.cond held ------------------------------------------------------------------------

    def _open(self, instruction: Instruction, digests: wire.Digests | None = None) -> Task | Reply:
        """A task on the site's queue, or the failed Reply that stands for one that cannot be opened."""
        if self.stopped:
            return failed(instruction, "the server is stopping", FailureKind.DROPPED)
        if instruction.site_id not in self.sites:  # it can never connect to this server
            reason = f"site {instruction.site_id!r} is not in this server's list of allowed sites"
            return failed(instruction, reason, FailureKind.DROPPED)
        task_id = uuid.uuid4().hex
        try:
            header = wire.instruction_header(instruction, task_id, self.chunk_size, digests)
        except wire.WireError as exc:  # the server's own instruction cannot travel
            return failed(instruction, str(exc), FailureKind.ERROR)
        task = Task(task_id, instruction, header)
        self._tasks[task_id] = task
        self._queues[instruction.site_id].append(task)
        return task

    def _verdict(self, site: str, task_id: str, claimed: str, round: int, kind: str) -> Verdict:
        task = self._tasks.get(task_id)
        if task is None:
            finished = self._closed.get(task_id)
            if finished == "answered":
                return Ack.DUPLICATE, f"task {task_id} was already answered; the first reply stands"
            if finished is not None:
                self._late[site] += 1
                return Ack.REJECTED, f"late: task {task_id} {finished}"
            return Ack.REJECTED, f"unknown task {task_id!r} (stale, or from an earlier server run)"
        expected = task.instruction
        if site != expected.site_id or claimed != site:
            return Ack.REJECTED, f"task {task_id} belongs to site {expected.site_id!r}, not {claimed!r}"
        if round != expected.round or kind != expected.kind.value:
            return Ack.REJECTED, f"stale: a reply for round {round} ({kind}) to a round {expected.round} task"
        if task.answered:
            return Ack.DUPLICATE, f"task {task_id} was already answered; the first reply stands"
        return None

    def _close(self, task: Task) -> None:
        self._tasks.pop(task.task_id, None)
        self._queues[task.instruction.site_id].remove(task)
        self._closed[task.task_id] = "answered" if task.answered else "expired: its deadline had passed"
        while len(self._closed) > CLOSED_MEMORY:
            self._closed.popitem(last=False)

    def _missing(self, task: Task, timeout_s: float) -> Reply:
        kind, reason = self._why_missing(task, timeout_s)
        return failed(task.instruction, reason, kind)

    def _why_missing(self, task: Task, timeout_s: float) -> tuple[FailureKind, str]:
        """Why a task closed unanswered, as (kind, reason): the kind is what the board knows, not a guess.

        TIMEOUT: the site had the instruction and sent nothing usable in time (it may be slow, or
        dead: a site that trains holds no connection, so silence is all the server sees). DROPPED:
        it never connected, was refused, stopped asking for work, or hung up mid-upload. REJECTED:
        its upload arrived malformed and no good one followed.
        """
        site = task.instruction.site_id
        if self.stopped:
            return FailureKind.DROPPED, f"site {site}: the server stopped before the site replied"
        waited = f"site {site}: no reply within {timeout_s:g} s"
        if task.setback is not None:
            kind, why = task.setback
            return kind, f"{waited}: {why}"
        if task.deliveries:
            return FailureKind.TIMEOUT, f"{waited} (the instruction was delivered {task.deliveries} time(s))"
        if site in self._refused:
            return FailureKind.DROPPED, f"{waited}; its connections were refused: {self._refused[site]}"
        if site not in self._last_seen:
            return FailureKind.DROPPED, f"{waited}; it never connected to this server"
        ago = time.monotonic() - self._last_seen[site]
        return FailureKind.DROPPED, f"{waited}; it has not asked for work in the last {ago:.0f} s"


def failed(instruction: Instruction, reason: str, kind: FailureKind = FailureKind.ERROR) -> Reply:
    """The failed Reply that stands for a task no site answered (or that could not be opened)."""
    return Reply(round=instruction.round, site_id=instruction.site_id, kind=instruction.kind, error=reason,
                 error_kind=kind)
