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

What one site may take of the server is bounded (`SiteLimits`), so no hospital can exhaust, stall
or skip a round for the others:
1) bytes: a reply may announce only the payload kinds its instruction's reply carries, each at
   most the size `reply_limits` derives from what was sent (a fit's weights: the weights sent
   plus a header's slack); anything else is refused on its header, before a byte is read;
2) threads: one poll per site (a new one ends the previous, so a client that reconnected after a
   half-open connection is not locked out) and one submission per site (a second is refused);
3) time: each upload has `upload_timeout_s` from its turn, then it is cancelled and its task
   fails, so a site that announces and holds its upload delays the sites behind it by at most
   that; when a task closes for any reason, an upload still streaming for it is cancelled;
4) the quorum counts only ok replies (and announced uploads), so an error reply does not skip it;
5) a site known to be gone (its last call refused, or no contact for `gone_after_s` while not
   training) costs no deadline: its task fails at once as DROPPED.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace

from fedrad.transport import fedrad_pb2 as pb
from fedrad.transport import wire
from fedrad.types import DataKind, FailureKind, Instruction, InstructionKind, Reply

log = logging.getLogger(__name__)
Ack = pb.SubmitAck
Verdict = tuple[int, str] | None  # (SubmitAck status, reason); None: the reply may be recorded
CLOSED_MEMORY = 10_000  # finished task ids kept, to answer late and duplicate submissions
HEADER_SLACK_BYTES = 64 << 10  # a safetensors header's variation: a reply holds no more tensors than were sent
METRICS_BYTES = 16 << 20  # evaluation statistics (confusion counts, score histograms) are kilobytes in practice
SECAGG_BYTES, SECAGG_FACTOR = 64 << 10, 4  # a secure-aggregation phase reply: this plus 4 x its request


@dataclass(frozen=True)
class SiteLimits:
    """What one site may take of the server: its time per upload, and how long its silence is tolerated."""

    upload_timeout_s: float = 600.0  # each upload's window from its turn (PROCEED); then cancelled, the task fails
    gone_after_s: float = 60.0  # no contact this long, and not training: its tasks fail at once (DROPPED)
    max_payload_bytes: int = wire.MAX_PAYLOAD_BYTES  # the bound of a PREDICT reply, whose size the server cannot know

    def __post_init__(self) -> None:
        for name in ("upload_timeout_s", "gone_after_s", "max_payload_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SiteLimits: {name} must be positive, got {getattr(self, name)}")


def reply_limits(instruction: Instruction, max_payload_bytes: int = wire.MAX_PAYLOAD_BYTES) -> dict[str, int]:
    """The most bytes each payload kind of the reply to `instruction` may announce; a kind not listed is refused.

    What each reply carries is site/handler.py's: FIT sends back weights that are a subset of those
    sent (the entries a site keeps stay home) in their dtypes, so at most the sent blob plus a
    header's slack, and SCAFFOLD's control delta likewise against the control variates sent.
    EVALUATE sends statistics only (METRICS_BYTES). A SECAGG phase reply holds at most a sealed share
    pair (about 150 bytes) per site its request names, and the request holds at least a name and a
    public key (or a share) per site: SECAGG_BYTES plus SECAGG_FACTOR x the request bounds it.
    PREDICT sends probabilities, and the querying site its test images: their size depends on a test
    set the server cannot know, so the payload bound applies.
    """
    sent = instruction.payload
    if instruction.kind == InstructionKind.FIT:
        kinds = (DataKind.WEIGHTS, DataKind.CONTROL)
        return {kind.value: len(sent[kind]) + HEADER_SLACK_BYTES for kind in kinds if kind in sent}
    if instruction.kind == InstructionKind.EVALUATE:
        return {DataKind.METRICS.value: min(METRICS_BYTES, max_payload_bytes)}
    if instruction.kind == InstructionKind.SECAGG:  # keys, or one sealed share pair per site the request names
        size = SECAGG_BYTES + SECAGG_FACTOR * len(sent.get(DataKind.SECAGG, b""))
        return {DataKind.SECAGG.value: min(size, max_payload_bytes)}
    outputs = {DataKind.OUTPUTS.value: max_payload_bytes}
    return outputs if DataKind.RAW_DATA in sent else outputs | {DataKind.RAW_DATA.value: max_payload_bytes}


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
    ok: bool = False  # the recorded reply was a successful one (only those count toward the quorum)
    setback: tuple[FailureKind, str] | None = None  # the last upload that was not recorded, and why
    limits: dict[str, int] = field(default_factory=dict)  # payload kind -> the most bytes its reply may announce
    proceed_at: float | None = None  # when the upload under way got its turn: its window runs from here
    cancel: Callable[[], None] | None = None  # ends the upload being read (its gRPC context's cancel)


class TaskBoard:
    def __init__(
        self, sites: Collection[str], chunk_size: int = wire.CHUNK_SIZE, uploads: int = 1,
        clock: Callable[[], float] = time.monotonic, limits: SiteLimits | None = None,
    ):
        """`clock` measures deadlines, upload windows and contact (seconds; a test passes one it moves by hand)."""
        if uploads < 1:
            raise ValueError(f"uploads must be at least 1, got {uploads}")
        self.sites, self.chunk_size = frozenset(sites), chunk_size
        self.uploads = uploads  # uploads read at once: memory is about (2 + uploads) model sizes
        self.limits = limits or SiteLimits()
        self.cond = threading.Condition()
        self.clock = clock  # polls' own windows are on time.monotonic
        self.stopped = False
        self._tasks: dict[str, Task] = {}  # open tasks by id
        self._queues: dict[str, list[Task]] = defaultdict(list)  # open tasks per site, in dispatch order
        self._closed: OrderedDict[str, str] = OrderedDict()  # finished task id -> how it finished
        self._traffic: dict[str, Traffic] = defaultdict(Traffic)
        self._last_seen: dict[str, float] = {}  # site -> its last contact (a poll or a submission), on `clock`
        self._refused: dict[str, tuple[str, bool]] = {}  # CN -> (why its last call was refused, transient)
        self._late: dict[str, int] = defaultdict(int)  # replies that arrived after their task's deadline
        self._turns: set[str] = set()  # ids of the tasks whose uploads may be read now (the window)
        self._polls: dict[str, int] = defaultdict(int)  # site -> number of its newest poll (it ends older ones)
        self._polling: set[str] = set()  # sites with a poll outstanding
        self._submitting: set[str] = set()  # sites with a submission under way (one at a time)
        self._busy: set[str] = set()  # sites delivered an instruction that have not submitted since: training
        self._declared: dict[str, int] = {}  # site -> the training examples its first WorkRequest declared
        self._declared_changed: dict[str, int] = {}  # site -> a later, different declaration (not believed)
        self.done: tuple[str, str, bool] | None = None  # (job hash, reason, failed) once the job has finished
        self._told: set[str] = set()  # sites that were told so
        self.payloads_hashed = 0  # distinct payload blobs hashed for headers (a round's model: once)

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        """A new clock restarts the board's age, by which a site that never connected is judged gone."""
        with self.cond:
            self._clock = clock
            self._born = clock()

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
        fewer than `min_replies` sites have replied successfully or announced at the deadline, the
        round waits up to `grace_s` longer (a quorum). An upload under way has its own window,
        `upload_timeout_s` from its turn. Tasks left when the caller stops iterating are closed.
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
                cancels = [self._close(task) for task in tasks if task.task_id in self._tasks]
                self.cond.notify_all()
            _cancel(cancels)

    def admit(
        self, site: str, task_id: str, claimed: str, round: int, kind: str, is_active: Callable[[], bool],
        payloads: Sequence[tuple[str, int]] = (), cancel: Callable[[], None] | None = None,
    ) -> Verdict:
        """Announce a reply header and wait for its upload's turn; None when the payload may be read now.

        `payloads` are the header's (kind, size) announcements, judged against the task's limits
        before anything is read; `cancel` ends the upload's stream if its task closes while it reads.
        """
        with self.cond:
            verdict = self._verdict(site, task_id, claimed, round, kind)
            if verdict is not None:
                return verdict
            task = self._tasks[task_id]
            if task.announced:
                return Ack.REJECTED, f"task {task_id}: another upload of this reply is under way"
            oversize = _oversize(task, payloads, self.limits.max_payload_bytes)
            if oversize is not None:
                task.setback = (FailureKind.REJECTED, oversize)
                return Ack.REJECTED, f"task {task_id}: {oversize}"
            task.announced, task.setback = True, None
            self.cond.notify_all()
            while task.task_id not in self._turns and task.task_id in self._tasks and not self.stopped:
                if not is_active():
                    task.announced = False
                    task.setback = (FailureKind.DROPPED, "it hung up while waiting for its turn to upload")
                    self.cond.notify_all()
                    return Ack.REJECTED, f"task {task_id}: the site hung up while waiting for its turn"
                self.cond.wait(1.0)
            verdict = self._verdict(site, task_id, claimed, round, kind) or (
                None if not self.stopped else (Ack.REJECTED, "the server is stopping")
            )
            if verdict is None:
                task.cancel = cancel
                if task.proceed_at is None:  # its window opened before it announced: its turn starts now
                    task.proceed_at = self.clock()
            return verdict

    def reply_limits(self, task_id: str) -> dict[str, int]:
        """The most bytes each payload kind of an open task's reply may carry (empty once it closed)."""
        with self.cond:
            task = self._tasks.get(task_id)
            return dict(task.limits) if task is not None else {}

    def withdraw(self, task_id: str, kind: FailureKind = FailureKind.DROPPED, reason: str = "") -> None:
        """An admitted upload failed (malformed: REJECTED; the site hung up: DROPPED): the task waits
        for a new one, and if none comes by the deadline it fails with this kind and reason."""
        with self.cond:
            task = self._tasks.get(task_id)
            if task is not None:
                task.announced, task.proceed_at, task.cancel = False, None, None
                task.setback = (kind, reason or "its upload broke off")
                self.cond.notify_all()

    def next_task(self, site: str, poll_s: float, is_active: Callable[[], bool]) -> Task | None:
        """The site's first unanswered task, waiting up to `poll_s` for one; None if none came.

        A newer poll from the same site ends this one at once (None): one waiting thread per site.
        """
        deadline = time.monotonic() + poll_s
        with self.cond:
            self._polls[site] += 1
            ticket = self._polls[site]
            self._contact(site)
            self._busy.discard(site)  # it asks for work: it is not training
            self._polling.add(site)
            self.cond.notify_all()
            try:
                while True:
                    if self._polls[site] != ticket:
                        return None  # a newer poll from this site took over
                    # An unanswered task is offered again: a client asks for work only when it is idle,
                    # so it lost the previous delivery (crash, dropped connection).
                    task = next((t for t in self._queues.get(site, ()) if not t.answered), None)
                    remaining = deadline - time.monotonic()
                    if task is not None or self.stopped or self.done or remaining <= 0 or not is_active():
                        break
                    self.cond.wait(remaining)
                if task is not None:
                    task.deliveries += 1
                    self._busy.add(site)
                return task
            finally:
                if self._polls[site] == ticket:
                    self._polling.discard(site)
                    self._contact(site)

    def begin_submission(self, site: str) -> Verdict:
        """A submission from `site` starts: None, or REJECTED while another from it is under way."""
        with self.cond:
            self._contact(site)
            self._busy.discard(site)
            if site in self._submitting:
                return Ack.REJECTED, f"another upload from site {site} is under way"
            self._submitting.add(site)
            return None

    def end_submission(self, site: str) -> None:
        with self.cond:
            self._submitting.discard(site)
            self._contact(site)

    def record(self, site: str, task_id: str, reply: Reply) -> Verdict:
        """Record a reply unless its task closed or a twin arrived meanwhile; the verdict either way."""
        with self.cond:
            verdict = self._verdict(site, task_id, reply.site_id, reply.round, reply.kind.value)
            if verdict is None:
                task = self._tasks[task_id]
                task.reply, task.answered, task.ok, task.announced = reply, True, reply.ok, False
                task.cancel = None
                self.cond.notify_all()
            return verdict

    def declare(self, site: str, num_train: int) -> None:
        """A site's declared training examples (its data card): the first nonzero value is pinned."""
        if num_train <= 0:
            return
        with self.cond:
            pinned = self._declared.setdefault(site, num_train)
            if pinned != num_train and self._declared_changed.get(site) != num_train:
                log.warning("site %s now declares %d training examples; %d, declared first, stands",
                            site, num_train, pinned)
                self._declared_changed[site] = num_train

    def declared(self, site: str) -> int | None:
        """The training examples `site` declared first, or None if it has declared none."""
        with self.cond:
            return self._declared.get(site)

    def finish(self, job_hash: str, reason: str, failed: bool = False) -> None:
        """The job is over: every later request for work is answered with (job_hash, reason, failed)."""
        with self.cond:
            self.done = (job_hash, reason, failed)
            self.cond.notify_all()

    def tell_done(self, site: str) -> tuple[str, str, bool] | None:
        """(job hash, reason, failed) if the job is over, noting that `site` has been told; else None."""
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

    def refused(self, name: str, reason: str, transient: bool = False) -> None:
        """A call from `name` was refused; unless `transient` (the server's own fault), its tasks are not waited for."""
        with self.cond:
            self._refused[name] = (reason, transient)

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
            now = self.clock()
            return {
                site: {
                    "tasks": [
                        {"round": t.instruction.round, "kind": t.instruction.kind.value,
                         "delivered": t.deliveries, "answered": t.answered, "uploading": t.announced}
                        for t in self._queues.get(site, ())
                    ],
                    "last_seen_s": round(now - self._last_seen[site], 1) if site in self._last_seen else None,
                    "polling": site in self._polling,
                    "submitting": site in self._submitting,
                    "late": self._late.get(site, 0),
                    "refused": self._refused[site][0] if site in self._refused else None,
                    "declared_examples": self._declared.get(site),
                    "declared_changed": self._declared_changed.get(site),
                    "bytes_to_site": self._traffic.get(site, Traffic()).to_site,
                    "bytes_from_site": self._traffic.get(site, Traffic()).from_site,
                }
                for site in sorted(self.sites)
            }

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            cancels = [task.cancel for task in self._tasks.values()]
            self.cond.notify_all()
        _cancel(cancels)

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _take(
        self, task: Task, tasks: Sequence[Task], deadline: float, timeout_s: float, quorum: int, grace_s: float
    ) -> Reply:
        """Open the upload window at `task` and wait for its reply; close it; the reply, or why it is missing.

        The window is `task` and the next `uploads - 1` open tasks: their uploads may be read while
        the caller waits for `task`, and they are handed on in order after it. An announced upload's
        turn starts when it enters the window.
        """
        with self.cond:
            following = [t for t in tasks[tasks.index(task) :] if t.task_id in self._tasks]
            window = following[: self.uploads]
            self._turns = {t.task_id for t in window}
            for waiting in (t for t in window if t.announced and t.proceed_at is None):
                waiting.proceed_at = self.clock()
            self.cond.notify_all()
            while not (self.stopped or task.answered):
                now = self.clock()
                if task.proceed_at is not None:  # its upload is under way: its own window, whatever the deadline
                    closes_at = task.proceed_at + self.limits.upload_timeout_s
                else:
                    heard = sum((t.answered and t.ok) or t.announced for t in tasks)
                    closes_at = deadline + grace_s if heard < quorum else deadline
                if now >= closes_at:
                    break
                self.cond.wait(closes_at - now)
            reply = task.reply or self._missing(task, timeout_s)
            task.reply = None  # handed on: the board keeps no payload
            self._turns.discard(task.task_id)
            cancel = self._close(task)
            self.cond.notify_all()
        _cancel([cancel])
        return reply

    # with self.cond held ------------------------------------------------------------------------

    def _open(self, instruction: Instruction, digests: wire.Digests | None = None) -> Task | Reply:
        """A task on the site's queue, or the failed Reply that stands for one that cannot be opened."""
        site = instruction.site_id
        if self.stopped:
            return failed(instruction, "the server is stopping", FailureKind.DROPPED)
        if site not in self.sites:  # it can never connect to this server
            reason = f"site {site!r} is not in this server's list of allowed sites"
            return failed(instruction, reason, FailureKind.DROPPED)
        gone = self._gone(site)
        if gone is not None:  # waiting for it would only cost the round its deadline
            return failed(instruction, f"site {site}: not waited for: {gone}", FailureKind.DROPPED)
        task_id = uuid.uuid4().hex
        try:
            header = wire.instruction_header(instruction, task_id, self.chunk_size, digests)
        except wire.WireError as exc:  # the server's own instruction cannot travel
            return failed(instruction, str(exc), FailureKind.ERROR)
        task = Task(task_id, instruction, header, limits=reply_limits(instruction, self.limits.max_payload_bytes))
        self._tasks[task_id] = task
        self._queues[site].append(task)
        return task

    def _gone(self, site: str) -> str | None:
        """Why `site` is known to be gone, or None: its last call was refused (no successful one since), or
        it has been silent longer than `gone_after_s` while neither polling nor training (a site that
        trains holds no connection, so it is not gone however long it is silent)."""
        refusal = self._refused.get(site)
        if refusal is not None and not refusal[1]:
            return f"its last call was refused: {refusal[0]}"
        if site in self._busy or site in self._polling or site in self._submitting:
            return None
        silent = self.clock() - self._last_seen.get(site, self._born)
        if silent <= self.limits.gone_after_s:
            return None
        if site not in self._last_seen:
            return f"it has not connected in the {silent:.0f} s this server has run"
        return f"no contact for {silent:.0f} s"

    def _contact(self, site: str) -> None:
        """A successful call from `site`: it is in contact, and any earlier refusal no longer holds."""
        self._last_seen[site] = self.clock()
        self._refused.pop(site, None)

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

    def _close(self, task: Task) -> Callable[[], None] | None:
        """Close `task`; the cancel of an upload still streaming for it, for the caller to call unlocked."""
        site = task.instruction.site_id
        self._tasks.pop(task.task_id, None)
        self._queues[site].remove(task)
        if not task.answered and not any(t.deliveries and not t.answered for t in self._queues[site]):
            # It had its chance: no longer counted as training, so once silent for gone_after_s (a
            # client killed mid-fit) its next tasks fail at once instead of each waiting a deadline.
            self._busy.discard(site)
        self._closed[task.task_id] = "answered" if task.answered else "expired: its deadline had passed"
        while len(self._closed) > CLOSED_MEMORY:
            self._closed.popitem(last=False)
        cancel, task.cancel = task.cancel, None
        return cancel

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
        if task.announced and task.proceed_at is not None:
            window = self.limits.upload_timeout_s
            return FailureKind.TIMEOUT, f"site {site}: its upload did not complete within {window:g} s of its turn"
        waited = f"site {site}: no reply within {timeout_s:g} s"
        if task.setback is not None:
            kind, why = task.setback
            return kind, f"{waited}: {why}"
        if task.deliveries:
            return FailureKind.TIMEOUT, f"{waited} (the instruction was delivered {task.deliveries} time(s))"
        if site in self._refused:
            return FailureKind.DROPPED, f"{waited}; its connections were refused: {self._refused[site][0]}"
        if site not in self._last_seen:
            return FailureKind.DROPPED, f"{waited}; it never connected to this server"
        ago = self.clock() - self._last_seen[site]
        return FailureKind.DROPPED, f"{waited}; it has not asked for work in the last {ago:.0f} s"


def failed(instruction: Instruction, reason: str, kind: FailureKind = FailureKind.ERROR) -> Reply:
    """The failed Reply that stands for a task no site answered (or that could not be opened)."""
    return Reply(round=instruction.round, site_id=instruction.site_id, kind=instruction.kind, error=reason,
                 error_kind=kind)


def _oversize(task: Task, payloads: Sequence[tuple[str, int]], max_bytes: int) -> str | None:
    """Why a reply header's announcements exceed what its task's reply may carry, or None."""
    for kind, size in payloads:
        if kind not in task.limits:
            return f"payload {kind!r} is not part of a {task.instruction.kind.value} reply"
        if size > task.limits[kind]:
            return f"payload {kind!r} announces {size} bytes, above the {task.limits[kind]} this reply may carry"
    total = sum(size for _, size in payloads)
    return None if total <= max_bytes else f"payloads announce {total} bytes, above the limit of {max_bytes}"


def _cancel(cancels: Sequence[Callable[[], None] | None]) -> None:
    """End the uploads still streaming for closed tasks (outside the board's lock: cancelling runs callbacks)."""
    for cancel in cancels:
        if cancel is not None:
            cancel()
