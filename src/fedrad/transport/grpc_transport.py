"""The server side of the network transport: the Transport protocol over gRPC with mutual TLS.

Hospitals allow outbound connections only, so sites pull: a site's client asks for work (`Work`,
a long poll), receives one instruction as a header and payload chunks, runs it, and submits its
reply (`Submit`: the header, then the chunks once the server answers PROCEED, since uploads are
read one at a time in instruction order; then the verdict). After the job, `Work` answers
JobDone. `dispatch` / `stream` put one task per instruction on the TaskBoard and wait for the
replies until the deadline; a site that has not answered by then becomes a Reply with `error`
set. Every call is checked against the client certificate: signed by the project CA (the TLS
handshake), then not revoked, an allowed site, and the site the client claims to be
(gatekeeper.py). The client side is grpc_client.py.

No site can take more of the server than its share (taskboard.py says the rules): one poll and
one upload at a time, each upload within the bytes its instruction implies and `upload_timeout_s`
from its turn. gRPC's own concurrency is bounded too: `max_workers` threads (by default two per
site, a poll and an upload, and a margin) and at most as many RPCs at once, so calls beyond that
are refused (RESOURCE_EXHAUSTED, which clients retry) instead of queueing without bound.

    with GrpcServerTransport.from_kit_dir("project/server", reply_timeout_s=600) as transport:
        replies = transport.dispatch(instructions)   # or hand it to the Orchestrator
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import logging
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from fedrad.pki.kits import ServerKit, load_server_kit
from fedrad.transport import fedrad_pb2 as pb
from fedrad.transport import wire
from fedrad.transport.gatekeeper import Gatekeeper, Refused
from fedrad.transport.grpc_client import Backoff, ClientError, ClientRefused, GrpcClient
from fedrad.transport.taskboard import Ack, SiteLimits, TaskBoard, Traffic, failed
from fedrad.types import FailureKind, Instruction, Reply

log = logging.getLogger(__name__)
SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),  # clients ping every 30 s
]

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
GONE_FLOOR_S = 60.0  # the client's default Backoff cap: a site between two retries is not gone


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's per-thread malloc arenas for this process; False where that is not possible.

    Each gRPC handler thread otherwise gets its own arena, and each arena keeps the freed 1 MiB
    chunk buffers of the streams it served: server memory then grows by about 10 MB per connected
    site (bench/transport.py: 50 MB model, 8 vs 4 clients, +46 MB; capped at 2 arenas, +4 MB, at
    the same throughput). Same effect as MALLOC_ARENA_MAX=2 in the environment.
    """
    name = ctypes.util.find_library("c")
    try:
        return bool(ctypes.CDLL(name).mallopt(M_ARENA_MAX, arenas)) if name else False
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to cap
        return False


# The client lives in grpc_client.py; it is re-exported so both ends import from one place.
__all__ = ["Backoff", "ClientError", "ClientRefused", "GrpcClient", "GrpcServerTransport", "Traffic"]


class GrpcServerTransport:
    """Transport over gRPC + mTLS; sites connect with `GrpcClient` and pull their instructions."""

    def __init__(
        self,
        kit: ServerKit,
        *,
        bind: str | None = None,  # default "[::]:<kit port>"; tests use "127.0.0.1:0" (a free port)
        reply_timeout_s: float = 600.0,  # per dispatch: a site silent this long is a failed Reply
        poll_s: float = 15.0,  # how long a site's request for work is held open when there is none
        chunk_size: int = wire.CHUNK_SIZE,
        max_payload_bytes: int = wire.MAX_PAYLOAD_BYTES,
        max_workers: int | None = None,  # None: 2 per site (a poll, an upload) + 8; also the bound on concurrent RPCs
        quorum: int = 0,  # at the deadline, fewer ok replies than this: wait up to quorum_wait_s longer
        quorum_wait_s: float = 0.0,
        max_uploads: int = 1,  # replies read at once; the server holds about (2 + max_uploads) models
        upload_timeout_s: float | None = None,  # each upload's window from its turn; None: reply_timeout_s
        gone_after_s: float | None = None,  # no contact this long: not waited for; None: max(3 poll_s, 60 s)
    ):
        upload_timeout_s = reply_timeout_s if upload_timeout_s is None else upload_timeout_s
        gone_after_s = max(3 * poll_s, GONE_FLOOR_S) if gone_after_s is None else gone_after_s
        max_workers = 2 * len(kit.sites) + 8 if max_workers is None else max_workers
        limits = {"reply_timeout_s": reply_timeout_s, "poll_s": poll_s, "chunk_size": chunk_size,
                  "upload_timeout_s": upload_timeout_s, "max_workers": max_workers}
        for name, value in limits.items():
            if value <= 0:
                raise ValueError(f"GrpcServerTransport: {name} must be positive, got {value}")
        if gone_after_s <= poll_s:  # an idle site polls again every poll_s: it would look gone between polls
            raise ValueError(f"GrpcServerTransport: gone_after_s ({gone_after_s}) must exceed poll_s ({poll_s})")
        self.kit, self.bind = kit, bind or f"[::]:{kit.port}"
        self.reply_timeout_s, self.poll_s = reply_timeout_s, poll_s
        self.chunk_size, self.max_payload_bytes, self.max_workers = chunk_size, max_payload_bytes, max_workers
        self.quorum, self.quorum_wait_s = quorum, quorum_wait_s
        self.port: int | None = None
        site_limits = SiteLimits(upload_timeout_s, gone_after_s, max_payload_bytes)
        self.board = TaskBoard(kit.sites, chunk_size, max_uploads, limits=site_limits)
        self._gate = Gatekeeper(kit)
        self._server: grpc.Server | None = None

    @classmethod
    def from_kit_dir(cls, folder: str | Path, **options) -> GrpcServerTransport:
        return cls(load_server_kit(folder), **options)

    # 1) lifecycle ---------------------------------------------------------------------------------

    def start(self) -> int:
        """Bind and serve; returns the port (the one chosen when `bind` ends in ":0")."""
        limit_malloc_arenas()  # before the handler threads exist
        server = grpc.server(ThreadPoolExecutor(max_workers=self.max_workers), options=SERVER_OPTIONS,
                             maximum_concurrent_rpcs=self.max_workers)  # beyond: refused, not queued
        server.add_generic_rpc_handlers([self._handlers()])
        pair = (self.kit.key_pem, self.kit.cert_pem)
        credentials = grpc.ssl_server_credentials([pair], self.kit.ca_pem, require_client_auth=True)
        try:
            port = server.add_secure_port(self.bind, credentials)
        except RuntimeError as exc:  # recent grpcio raises where older ones returned 0
            port, reason = 0, f": {exc}"
        else:
            reason = ""
        if port == 0:
            raise OSError(f"server of project {self.kit.project}: cannot bind {self.bind}{reason}")
        server.start()
        self._server, self.port = server, port
        log.info("fedrad server of project %s listening on %s (port %d)", self.kit.project, self.bind, port)
        return port

    def stop(self, grace_s: float = 1.0) -> None:
        self.board.stop()
        if self._server is not None:
            self._server.stop(grace_s).wait()

    def __enter__(self) -> GrpcServerTransport:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # 2) the Transport protocol, and what an operator asks -----------------------------------------

    def dispatch(self, instructions: Sequence[Instruction]) -> list[Reply]:
        """Offer each instruction to its site; one Reply each by the deadline, failures included."""
        return [reply for _, reply in self.stream(instructions)]

    def stream(self, instructions: Sequence[Instruction]) -> Iterator[tuple[int, Reply]]:
        """The replies in instruction order, each read from the network only when the caller asks."""
        if self._server is None:
            why = "the gRPC server is not running (call start() first)"
            for number, instruction in enumerate(instructions):
                yield number, failed(instruction, why, FailureKind.ERROR)
            return
        for site, reason in self._gate.revoked_sites().items():  # revoked since it last called: not waited for
            self.board.refused(site, reason)
        yield from self.board.stream(instructions, self.reply_timeout_s, self.quorum, self.quorum_wait_s)

    def finish(self, job_hash: str, reason: str, linger_s: float, failed: bool = False) -> set[str]:
        """Tell each site that asks for work that the job is over (`failed`: it ended short, so clients exit
        non-zero), for up to `linger_s` (or until every site that connected has been told); returns the
        sites not told (they keep polling until stopped)."""
        self.board.finish(job_hash, reason, failed)
        return self.board.wait_told(linger_s)

    def declared_examples(self, site: str) -> int | None:
        """The training examples `site` declared (its data card's count) in its first request for work."""
        return self.board.declared(site)

    def wait_for_sites(self, sites: Collection[str], timeout_s: float) -> set[str]:
        """Wait until each site has asked for work once (a quorum before round 0); the missing ones."""
        return self.board.wait_for_sites(sites, timeout_s)

    def traffic(self) -> dict[str, Traffic]:
        """Bytes exchanged with each site so far (a copy)."""
        return self.board.traffic()

    # 3) the two RPCs --------------------------------------------------------------------------------

    def _handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            wire.SERVICE,
            {
                "Work": grpc.unary_stream_rpc_method_handler(
                    self._work, pb.WorkRequest.FromString, pb.ServerMessage.SerializeToString
                ),
                "Submit": grpc.stream_stream_rpc_method_handler(
                    self._submit, pb.ClientMessage.FromString, Ack.SerializeToString
                ),
            },
        )

    def _work(self, request: pb.WorkRequest, context: grpc.ServicerContext) -> Iterator[pb.ServerMessage]:
        site = self._authorize(context, claimed=request.site_id)
        self.board.count(site, from_site=request.ByteSize())
        self.board.declare(site, request.num_train)
        context.add_callback(self.board.wake)  # a client that hangs up ends its wait at once
        task = self.board.next_task(site, self.poll_s, context.is_active)  # ends this site's previous poll
        if task is None:
            done = self.board.tell_done(site)
            if done is not None:  # the job is over: the client may exit
                yield pb.ServerMessage(done=pb.JobDone(job_hash=done[0], reason=done[1], failed=done[2]))
            return  # otherwise an empty stream: no work in this poll window, ask again
        payload = task.instruction.payload
        for message in wire.stream(pb.ServerMessage, "instruction", task.header, payload, self.chunk_size):
            self.board.count(site, to_site=message.ByteSize())
            yield message

    def _submit(self, requests: Iterator[pb.ClientMessage], context: grpc.ServicerContext) -> Iterator[Ack]:
        """One submission per site at a time: a second is refused before a byte of it is read."""
        site = self._authorize(context, claimed=None)  # the claim is checked on the reply header
        verdict = self.board.begin_submission(site)
        if verdict is not None:
            yield self._ack(site, verdict)
            return
        try:
            yield from self._submission(site, self._counted(site, requests), context)
        except grpc.RpcError:  # cancelled: its task closed (deadline, its upload window, the server stopping)
            log.info("submission from site %s: cancelled, its task closed", site)
        finally:
            self.board.end_submission(site)

    def _submission(
        self, site: str, messages: Iterator[pb.ClientMessage], context: grpc.ServicerContext
    ) -> Iterator[Ack]:
        """Header, then PROCEED when it is this upload's turn, then the chunks, then the verdict."""
        first = next(messages, None)
        if first is None or first.WhichOneof("body") != "reply":
            yield self._ack(site, (Ack.REJECTED, "a submission must start with a reply header"))
            return
        header = first.reply
        # Judge the header, then wait for this upload's turn, before any payload is sent.
        context.add_callback(self.board.wake)  # a client that hangs up while waiting frees its turn
        announced = [(p.kind, p.size) for p in header.payloads]  # judged against the task's limits, unread
        verdict = self.board.admit(site, header.task_id, header.site_id, header.round, header.kind, context.is_active,
                                   announced, context.cancel)
        if verdict is not None:
            yield self._ack(site, verdict)
            return
        limits = self.board.reply_limits(header.task_id)
        verdict, setback = (Ack.REJECTED, "the upload broke off"), FailureKind.DROPPED
        try:
            yield self._ack(site, (Ack.PROCEED, ""))
            stream = itertools.chain([first], messages)
            task_id, reply = wire.read_reply(stream, self.max_payload_bytes, limits)
            verdict = self.board.record(site, task_id, reply)
            del reply
        except wire.StreamEnded as exc:  # the site hung up (killed, its link dropped): not a malformed reply
            verdict = (Ack.REJECTED, f"the upload broke off: {exc}")
        except wire.WireError as exc:
            verdict, setback = (Ack.REJECTED, f"malformed reply: {exc}"), FailureKind.REJECTED
        finally:
            if verdict is not None:  # not recorded (malformed, refused, the stream broke): the task waits for another
                self.board.withdraw(header.task_id, setback, verdict[1])
        yield self._ack(site, verdict)

    def _authorize(self, context: grpc.ServicerContext, claimed: str | None) -> str:
        pems = context.auth_context().get("x509_pem_cert") or [None]
        try:
            return self._gate.admit(pems[0], claimed)
        except Refused as refused:
            log.warning("refused a call from %r: %s", refused.name, refused.reason)
            self.board.refused(refused.name, refused.reason, refused.transient)
            code = grpc.StatusCode.UNAVAILABLE if refused.transient else grpc.StatusCode.PERMISSION_DENIED
            context.abort(code, refused.reason)
            raise  # not reached: context.abort raises

    def _counted(self, site: str, messages: Iterator[pb.ClientMessage]) -> Iterator[pb.ClientMessage]:
        for message in messages:
            self.board.count(site, from_site=message.ByteSize())
            yield message

    def _ack(self, site: str, verdict: tuple[int, str] | None) -> Ack:
        status, reason = verdict or (Ack.ACCEPTED, "")
        if status not in (Ack.ACCEPTED, Ack.PROCEED):
            log.info("submission from site %s: %s: %s", site, Ack.Status.Name(status), reason)
        ack = Ack(status=status, reason=reason)
        self.board.count(site, to_site=ack.ByteSize())
        return ack
