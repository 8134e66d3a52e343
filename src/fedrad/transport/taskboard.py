"""The server's board of open tasks: what each site is to pull, and which replies still count.

No networking here (the gRPC server in grpc_transport.py drives it), so the rules are testable
alone: one task per instruction, queued per site; the first valid reply answers it; at the
deadline the unanswered ones become failed Replies and close. A submission for a closed,
unknown, other site's or other round's task is rejected; a repeat of an answered one is a
DUPLICATE, so a client that retries after a lost acknowledgement does no harm. Thread-safe.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

from fedrad.transport import fedrad_pb2 as pb
from fedrad.transport import wire
from fedrad.types import Instruction, Reply

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


class TaskBoard:
    def __init__(self, sites: Collection[str], chunk_size: int = wire.CHUNK_SIZE):
        self.sites, self.chunk_size = frozenset(sites), chunk_size
        self.cond = threading.Condition()
        self.stopped = False
        self._tasks: dict[str, Task] = {}  # open tasks by id
        self._queues: dict[str, list[Task]] = defaultdict(list)  # open tasks per site, in dispatch order
        self._closed: OrderedDict[str, str] = OrderedDict()  # finished task id -> how it finished
        self._traffic: dict[str, Traffic] = defaultdict(Traffic)
        self._last_seen: dict[str, float] = {}
        self._refused: dict[str, str] = {}  # certificate CN -> why its last call was refused
        self._late: dict[str, int] = defaultdict(int)  # replies that arrived after their task's deadline

    def collect(
        self, instructions: Sequence[Instruction], timeout_s: float, min_replies: int = 0, grace_s: float = 0.0
    ) -> list[Reply]:
        """Open one task per instruction, wait for the replies until the deadline, close them all.

        If fewer than `min_replies` replies are in at the deadline, wait up to `grace_s` longer for
        that many (a quorum); the round then closes with whatever has arrived.
        """
        replies: dict[int, Reply] = {}
        tasks: list[tuple[int, Task]] = []
        with self.cond:
            for number, instruction in enumerate(instructions):
                task_or_error = self._open(instruction)
                if isinstance(task_or_error, str):
                    replies[number] = failed(instruction, task_or_error)
                else:
                    tasks.append((number, task_or_error))
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.stopped or all(t.reply for _, t in tasks), timeout=timeout_s)
            quorum = min(min_replies, len(tasks))
            if grace_s > 0 and sum(t.reply is not None for _, t in tasks) < quorum:
                enough = lambda: self.stopped or sum(t.reply is not None for _, t in tasks) >= quorum  # noqa: E731
                self.cond.wait_for(enough, timeout=grace_s)
            for number, task in tasks:
                replies[number] = task.reply or failed(task.instruction, self._why_missing(task, timeout_s))
                self._close(task)
        return [replies[number] for number in range(len(instructions))]

    def next_task(self, site: str, poll_s: float, is_active: Callable[[], bool]) -> Task | None:
        """The site's first unanswered task, waiting up to `poll_s` for one; None if none came."""
        deadline = time.monotonic() + poll_s
        with self.cond:
            self._last_seen[site] = time.monotonic()
            self.cond.notify_all()
            while True:
                # An unanswered task is offered again: a client asks for work only when it is idle,
                # so it lost the previous delivery (crash, dropped connection).
                task = next((t for t in self._queues.get(site, ()) if t.reply is None), None)
                remaining = deadline - time.monotonic()
                if task is not None or self.stopped or remaining <= 0 or not is_active():
                    break
                self.cond.wait(remaining)
            if task is not None:
                task.deliveries += 1
            return task

    def verdict(self, site: str, task_id: str, claimed: str, round: int, kind: str) -> Verdict:
        """None if `site` may answer this task now, else (status, reason); judged before the upload."""
        with self.cond:
            return self._verdict(site, task_id, claimed, round, kind)

    def record(self, site: str, task_id: str, reply: Reply) -> Verdict:
        """Record a reply unless the deadline passed or a twin arrived meanwhile; the verdict either way."""
        with self.cond:
            verdict = self._verdict(site, task_id, reply.site_id, reply.round, reply.kind.value)
            if verdict is None:
                self._tasks[task_id].reply = reply
                self.cond.notify_all()
            return verdict

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
                         "delivered": t.deliveries, "answered": t.reply is not None}
                        for t in self._queues.get(site, ())
                    ],
                    "last_seen_s": round(now - self._last_seen[site], 1) if site in self._last_seen else None,
                    "late": self._late.get(site, 0),
                    "refused": self._refused.get(site),
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

    # with self.cond held ------------------------------------------------------------------------

    def _open(self, instruction: Instruction) -> Task | str:
        if self.stopped:
            return "the server is stopping"
        if instruction.site_id not in self.sites:
            return f"site {instruction.site_id!r} is not in this server's list of allowed sites"
        task_id = uuid.uuid4().hex
        try:
            header = wire.instruction_header(instruction, task_id, self.chunk_size)
        except wire.WireError as exc:
            return str(exc)
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
        if task.reply is not None:
            return Ack.DUPLICATE, f"task {task_id} was already answered; the first reply stands"
        return None

    def _close(self, task: Task) -> None:
        self._tasks.pop(task.task_id, None)
        self._queues[task.instruction.site_id].remove(task)
        self._closed[task.task_id] = "answered" if task.reply else "expired: its deadline had passed"
        while len(self._closed) > CLOSED_MEMORY:
            self._closed.popitem(last=False)

    def _why_missing(self, task: Task, timeout_s: float) -> str:
        site = task.instruction.site_id
        if self.stopped:
            return f"site {site}: the server stopped before the site replied"
        waited = f"site {site}: no reply within {timeout_s:g} s"
        if task.deliveries:
            return f"{waited} (the instruction was delivered {task.deliveries} time(s))"
        if site in self._refused:
            return f"{waited}; its connections were refused: {self._refused[site]}"
        if site not in self._last_seen:
            return f"{waited}; it never connected to this server"
        ago = time.monotonic() - self._last_seen[site]
        return f"{waited}; it has not asked for work in the last {ago:.0f} s"


def failed(instruction: Instruction, reason: str) -> Reply:
    return Reply(round=instruction.round, site_id=instruction.site_id, kind=instruction.kind, error=reason)
