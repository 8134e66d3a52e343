"""The hospital side of the network transport: pull instructions, run the Site, submit replies.

The client only ever dials out (to the server address in its kit), over mutual TLS with its
site certificate. It loops: ask for work (a long poll), run `site.handle`, submit the reply, and
when the server cannot be reached it waits with exponential backoff and jitter, dialing afresh.
Every request for work declares the site's count of training examples (`num_train`), which the
server holds the site's fit replies to.

The loop ends, because retrying cannot help, when:
1) the server refuses the site (revoked, not allowed, a mismatched claim): ClientRefused;
2) the TLS handshake fails `handshake_refusals` times in a row (3): ClientRefused. Over TLS 1.3 a
   server that rejects the site's certificate (another CA, expired) just closes the connection, so
   gRPC reports only "failed to connect ...: Socket closed"; a server the site does not trust shows
   "Tls handshake failed ... CERTIFICATE_VERIFY_FAILED". One such failure may be a fault on the
   way; several in a row, with nothing else between, are a refusal. A server that is down
   ("Connection refused", a DNS error) and a peer that hangs up before the handshake is done
   ("Handshake read failed") are network faults: retried forever (or `max_failures` times);
3) the server says the job is over (`finished`, and `failed` when it ended short), or that it
   ended another job than this site's (`other_job`): nothing will come for this site.

    client = GrpcClient.from_kit_dir(site, "kits/hospital-a")
    client.run()            # until one of the above, or client.stop() from another thread
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

from fedrad.pki import certs as pki
from fedrad.pki.kits import SiteKit, load_site_kit
from fedrad.transport import fedrad_pb2 as pb
from fedrad.transport import wire
from fedrad.types import FailureKind, Instruction, Reply, failure_kind

log = logging.getLogger(__name__)
T = TypeVar("T")
CLIENT_OPTIONS = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]
FATAL = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
SERVER_CLOSED = "Socket closed"  # gRPC's last connect error when the server hangs up after the handshake
TLS_FAILED = ("Tls handshake failed", "Ssl handshake failed", "CERTIFICATE_VERIFY_FAILED", "Hostname Verification")


class SiteLike(Protocol):
    def handle(self, instruction: Instruction) -> Reply: ...


class ClientError(RuntimeError):
    """The client gave up: the server stayed unreachable for `max_failures` attempts in a row."""


class ClientRefused(ClientError):
    """The server refused this site (certificate revoked or not allowed, or a mismatched claim), or the
    TLS handshake failed several times in a row (a certificate of another CA, expired, not trusted)."""


def handshake_failure(exc: grpc.RpcError) -> str | None:
    """Which side's certificate a failed call's TLS handshake stumbled on: "site" (the server hung up,
    refusing it), "server" (this site does not trust the server's); None for any other failure."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    detail = exc.details() or ""
    # "...: Socket closed" after the handshake, not "Handshake read failed (Socket closed)" during it
    # (a peer that is no TLS server, or a proxy, hanging up: retried as a network fault)
    if "failed to connect" in detail and detail.rsplit(": ", 1)[-1].strip() == SERVER_CLOSED:
        return "site"
    return "server" if any(sign in detail for sign in TLS_FAILED) else None


def declared_train(site: object) -> int:
    """The training examples a site declares to the server: its data's count (fedrad.site.handler.Site
    holds it as `site.data.num_train`), or 0 ("not declared") for a site without data."""
    return int(getattr(getattr(site, "data", None), "num_train", 0) or 0)


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
        handshake_refusals: int = 3,  # TLS handshake failures in a row that are a refusal, not a fault
        num_train: int | None = None,  # declared to the server; None: declared_train(site)
        chunk_size: int = wire.CHUNK_SIZE,
        max_payload_bytes: int = wire.MAX_PAYLOAD_BYTES,
    ):
        self.site, self.kit = site, kit
        self.address = server_address or kit.server_address
        if handshake_refusals < 1:
            raise ValueError(f"GrpcClient: handshake_refusals must be at least 1, got {handshake_refusals}")
        self.backoff, self.max_failures, self.handshake_refusals = backoff, max_failures, handshake_refusals
        self.num_train = declared_train(site) if num_train is None else num_train
        self.chunk_size, self.max_payload_bytes = chunk_size, max_payload_bytes
        self.handled = 0  # instructions run and submitted
        self.finished: str | None = None  # the server's reason, once it said this site's job is over
        self.failed = False  # ... and that the job failed (ended short: a missed quorum, a crash)
        self.other_job: str | None = None  # the hash of another job the server said is over
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
        """Pull, handle and submit until `stop()` or the server says a job is over (`finished`, `failed`,
        `other_job`). Raises ClientRefused, or ClientError on giving up."""
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
        request = pb.WorkRequest(site_id=self.kit.site_id, num_train=self.num_train)
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
        """The server says a job is over: `run` returns. Another job than this site's ends the client
        too: a server that has served another job to its end has nothing for this site."""
        mine = getattr(self.site, "job_hash", "") or done.job_hash
        if done.job_hash != mine:
            log.warning("site %s: the server ended job %s, not this site's job %s", self.kit.site_id,
                        done.job_hash, mine)
            self.other_job = done.job_hash
        else:
            (log.error if done.failed else log.info)("site %s: %s", self.kit.site_id, done.reason)
            self.finished, self.failed = done.reason, done.failed
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
        failures = handshakes = 0  # failed attempts in a row; of them, TLS handshake failures in a row
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
                side = handshake_failure(exc) if isinstance(exc, grpc.RpcError) else None
                handshakes = handshakes + 1 if side else 0
                if side and handshakes >= self.handshake_refusals:
                    raise ClientRefused(self._refused_at_handshake(side, handshakes, detail)) from exc
                where = f"site {self.kit.site_id}: {self.address}"
                if self.max_failures is not None and failures >= self.max_failures:
                    raise ClientError(f"{where}: gave up after {failures} failed attempts: {detail}") from exc
                delay = self.backoff.delay(failures - 1, self._rng)
                log.warning("%s: attempt %d failed (%s); retrying in %.1f s", where, failures, detail, delay)
                self.close()  # dial afresh next time, on our schedule rather than the channel's
                self._stop.wait(delay)
        return None

    def _refused_at_handshake(self, side: str, attempts: int, detail: str) -> str:
        """One line: whose certificate the handshake refused, gRPC's words, and what to check."""
        where = f"site {self.kit.site_id}: {self.address}"
        if side == "server":
            return (f"{where}: the TLS handshake failed {attempts} times in a row ({detail}); check that the "
                    "kit's ca.crt is this project's CA and that the server address is a name in the server's "
                    "certificate")
        try:  # the client's own view of its certificate, when it has one: expired while running, ...
            pki.check_site_cert(self.kit.cert_pem, self.kit.ca_pem, self.kit.site_id, "site.crt")
            known = ""
        except ValueError as exc:
            known = f"; {exc}"
        return (f"{where}: the server refused this site's certificate at the TLS handshake ({attempts} attempts "
                f"in a row: {detail}){known}; check that the kit comes from this project's CA and has not expired")

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
