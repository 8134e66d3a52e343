"""The hospital side of the network transport: pull instructions, run the Site, submit replies.

The client only ever dials out (to the server address in its kit), over mutual TLS with its
site certificate. It loops: ask for work (a long poll), run `site.handle`, submit the reply, and
when the server cannot be reached it waits with exponential backoff and jitter, dialing afresh.
A refusal (revoked, unknown or mismatched certificate) ends the loop: retrying cannot help.

    client = GrpcClient.from_kit_dir(site, "kits/hospital-a")
    client.run()            # until client.stop() from another thread, or a refusal
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import grpc

from fedrad.pki.kits import SiteKit, load_site_kit
from fedrad.transport import fedrad_pb2 as pb
from fedrad.transport import wire
from fedrad.types import FailureKind, Instruction, Reply, failure_kind

log = logging.getLogger(__name__)
T = TypeVar("T")
CLIENT_OPTIONS = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]
FATAL = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


class SiteLike(Protocol):
    def handle(self, instruction: Instruction) -> Reply: ...


class ClientError(RuntimeError):
    """The client gave up: the server stayed unreachable for `max_failures` attempts in a row."""


class ClientRefused(ClientError):
    """The server refused this site (certificate revoked or not allowed, or a mismatched claim)."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits between half and all of min(cap, base * 2**n)."""

    base_s: float = 0.5
    cap_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError(f"Backoff: need 0 < base_s <= cap_s, got base_s={self.base_s}, cap_s={self.cap_s}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(attempt, 62))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)  # jitter keeps many sites from retrying in step


class GrpcClient:
    """Runs `site.handle` for every instruction the server hands this site."""

    def __init__(
        self,
        site: SiteLike,
        kit: SiteKit,
        *,
        server_address: str | None = None,  # default: the address in the kit
        backoff: Backoff = Backoff(),
        seed: int = 0,  # seeds the backoff jitter
        max_failures: int | None = None,  # consecutive failed attempts before ClientError; None: forever
        chunk_size: int = wire.CHUNK_SIZE,
        max_payload_bytes: int = wire.MAX_PAYLOAD_BYTES,
    ):
        self.site, self.kit = site, kit
        self.address = server_address or kit.server_address
        self.backoff, self.max_failures = backoff, max_failures
        self.chunk_size, self.max_payload_bytes = chunk_size, max_payload_bytes
        self.handled = 0  # instructions run and submitted
        self.finished: str | None = None  # the server's reason, once it said the job is over
        self.acks: list[tuple[str, str, str]] = []  # (task id, ACCEPTED | DUPLICATE | REJECTED, reason)
        self.bytes_sent = self.bytes_received = 0  # serialized protobuf messages
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._channel: grpc.Channel | None = None
        self._call: grpc.RpcContext | None = None

    @classmethod
    def from_kit_dir(cls, site: SiteLike, folder: str | Path, **options) -> GrpcClient:
        return cls(site, load_site_kit(folder), **options)

    def run(self) -> None:
        """Pull, handle and submit until `stop()` or the server says the job is over (`finished`).

        Raises ClientRefused, or ClientError on giving up."""
        try:
            while not self._stop.is_set():
                work = self._retrying(self._fetch)
                if work is None:
                    continue  # no work in this poll window (or stopping)
                task_id, instruction = work
                reply = self._handle(instruction)
                if self._retrying(functools.partial(self.submit, task_id, reply)) is not None:
                    self.handled += 1
        finally:
            self.close()

    def stop(self) -> None:
        """Ask `run` to return soon: ends the backoff wait and cancels a pending request for work."""
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def submit(self, task_id: str, reply: Reply) -> pb.SubmitAck:
        """Send one reply (one attempt; grpc.RpcError or WireError on failure) and return the verdict.

        The header goes first; the chunks follow only when the server answers PROCEED (its uploads
        take turns), so while this site waits its bytes stay here, not in the server's buffers.
        """
        try:
            messages = list(wire.reply_messages(reply, task_id, self.chunk_size))
        except wire.WireError as exc:  # e.g. a metric that is not a number: report that instead
            reply = Reply(reply.round, self.kit.site_id, reply.kind, error=f"unsendable reply: {exc}")
            messages = list(wire.reply_messages(reply, task_id, self.chunk_size))
        proceed, finished = threading.Event(), threading.Event()

        def requests() -> Iterator[pb.ClientMessage]:
            yield messages[0]
            self.bytes_sent += messages[0].ByteSize()
            while not proceed.wait(0.5):
                if finished.is_set():
                    return
            if finished.is_set():
                return
            for message in messages[1:]:
                yield message
                self.bytes_sent += message.ByteSize()

        submit = self._connect().stream_stream(
            wire.SUBMIT_METHOD, pb.ClientMessage.SerializeToString, pb.SubmitAck.FromString
        )
        call = submit(requests())
        self._call = call
        if self._stop.is_set():
            call.cancel()
        ack = None
        try:
            for answer in call:
                self.bytes_received += answer.ByteSize()
                if answer.status == pb.SubmitAck.PROCEED:
                    proceed.set()
                    continue
                ack = answer
                break
        finally:
            finished.set()
            self._call = None
        if ack is None:
            raise wire.WireError(f"task {task_id}: the server closed the submission without a verdict")
        status = pb.SubmitAck.Status.Name(ack.status)
        self.acks.append((task_id, status, ack.reason))
        if ack.status == pb.SubmitAck.REJECTED:
            log.warning("site %s: the server rejected the reply to task %s: %s", self.kit.site_id, task_id, ack.reason)
        return ack

    # the steps of the loop ------------------------------------------------------------------------

    def _fetch(self) -> tuple[str, Instruction] | None:
        request = pb.WorkRequest(site_id=self.kit.site_id)
        work = self._connect().unary_stream(
            wire.WORK_METHOD, pb.WorkRequest.SerializeToString, pb.ServerMessage.FromString
        )
        call = work(request)
        self._call = call
        if self._stop.is_set():  # stop() may have run before the call existed
            call.cancel()
        try:
            self.bytes_sent += request.ByteSize()
            messages = self._received(call)
            first = next(messages, None)
            if first is not None and first.WhichOneof("body") == "done":
                self._job_done(first.done)
                return None
            stream = messages if first is None else itertools.chain([first], messages)
            return wire.read_instruction(stream, self.max_payload_bytes)
        finally:
            self._call = None

    def _job_done(self, done: pb.JobDone) -> None:
        """The server says the job is over: `run` returns (only for this site's own job)."""
        mine = getattr(self.site, "job_hash", "") or done.job_hash
        if done.job_hash != mine:
            log.warning("site %s: the server finished job %s, not this site's %s; waiting for work",
                        self.kit.site_id, done.job_hash[:12], mine[:12])
            self._stop.wait(1.0)
            return
        log.info("site %s: %s", self.kit.site_id, done.reason)
        self.finished = done.reason
        self._stop.set()

    def _handle(self, instruction: Instruction) -> Reply:
        """The site's reply; a site that raises is a failed reply of the exception's kind (refused, error, ...)."""
        site_id = self.kit.site_id
        if instruction.site_id != site_id:
            error = f"instruction for site {instruction.site_id!r} reached site {site_id!r}"
            return Reply(instruction.round, site_id, instruction.kind, error=error, error_kind=FailureKind.REFUSED)
        try:
            return self.site.handle(instruction)
        except Exception as exc:  # a failed site is data: the server gets the reason and its kind
            log.exception("site %s: round %d failed", site_id, instruction.round)
            return Reply(instruction.round, site_id, instruction.kind, error=f"{type(exc).__name__}: {exc}",
                         error_kind=failure_kind(exc))

    def _retrying(self, attempt: Callable[[], T]) -> T | None:
        """attempt() until it succeeds; None if stopped. Backoff between tries, a fresh channel each."""
        failures = 0
        while not self._stop.is_set():
            try:
                return attempt()
            except (grpc.RpcError, wire.WireError) as exc:
                if self._stop.is_set():
                    return None
                code = exc.code() if isinstance(exc, grpc.RpcError) else None
                detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
                if code in FATAL:
                    raise ClientRefused(f"site {self.kit.site_id}: refused by {self.address}: {detail}") from exc
                failures += 1
                where = f"site {self.kit.site_id}: {self.address}"
                if self.max_failures is not None and failures >= self.max_failures:
                    raise ClientError(f"{where}: gave up after {failures} failed attempts: {detail}") from exc
                delay = self.backoff.delay(failures - 1, self._rng)
                log.warning("%s: attempt %d failed (%s); retrying in %.1f s", where, failures, detail, delay)
                self.close()  # dial afresh next time, on our schedule rather than the channel's
                self._stop.wait(delay)
        return None

    def _connect(self) -> grpc.Channel:
        if self._channel is None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self.kit.ca_pem, private_key=self.kit.key_pem, certificate_chain=self.kit.cert_pem
            )
            self._channel = grpc.secure_channel(self.address, credentials, options=CLIENT_OPTIONS)
        return self._channel

    def _received(self, messages: Iterator[pb.ServerMessage]) -> Iterator[pb.ServerMessage]:
        for message in messages:
            self.bytes_received += message.ByteSize()
            yield message
