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
from fedrad.transport.taskboard import Ack, TaskBoard, Traffic, failed
from fedrad.types import FailureKind, Instruction, Reply

log = logging.getLogger(__name__)
SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),  # clients ping every 30 s
]

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


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
        max_workers: int = 64,  # each waiting site holds one worker thread during its poll
        quorum: int = 0,  # at the deadline, fewer replies than this: wait up to quorum_wait_s longer
        quorum_wait_s: float = 0.0,
        max_uploads: int = 1,  # replies read at once; the server holds about (2 + max_uploads) models
    ):
        limits = {"reply_timeout_s": reply_timeout_s, "poll_s": poll_s, "chunk_size": chunk_size}
        for name, value in limits.items():
            if value <= 0:
                raise ValueError(f"GrpcServerTransport: {name} must be positive, got {value}")
        self.kit, self.bind = kit, bind or f"[::]:{kit.port}"
        self.reply_timeout_s, self.poll_s = reply_timeout_s, poll_s
        self.chunk_size, self.max_payload_bytes, self.max_workers = chunk_size, max_payload_bytes, max_workers
        self.quorum, self.quorum_wait_s = quorum, quorum_wait_s
        self.port: int | None = None
        self.board = TaskBoard(kit.sites, chunk_size, max_uploads)
        self._gate = Gatekeeper(kit)
        self._server: grpc.Server | None = None

    @classmethod
    def from_kit_dir(cls, folder: str | Path, **options) -> GrpcServerTransport:
        return cls(load_server_kit(folder), **options)

    # 1) lifecycle ---------------------------------------------------------------------------------

    def start(self) -> int:
        """Bind and serve; returns the port (the one chosen when `bind` ends in ":0")."""
        limit_malloc_arenas()  # before the handler threads exist
        server = grpc.server(ThreadPoolExecutor(max_workers=self.max_workers), options=SERVER_OPTIONS)
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
        yield from self.board.stream(instructions, self.reply_timeout_s, self.quorum, self.quorum_wait_s)

    def finish(self, job_hash: str, reason: str, linger_s: float) -> set[str]:
        """Tell each site that asks for work that the job is over, for up to `linger_s` (or until every
        site that connected has been told); returns the sites not told (they keep polling until stopped)."""
        self.board.finish(job_hash, reason)
        return self.board.wait_told(linger_s)

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
        context.add_callback(self.board.wake)  # a client that hangs up ends its wait at once
        task = self.board.next_task(site, self.poll_s, context.is_active)
        if task is None:
            done = self.board.tell_done(site)
            if done is not None:  # the job is over: the client may exit
                yield pb.ServerMessage(done=pb.JobDone(job_hash=done[0], reason=done[1]))
            return  # otherwise an empty stream: no work in this poll window, ask again
        payload = task.instruction.payload
        for message in wire.stream(pb.ServerMessage, "instruction", task.header, payload, self.chunk_size):
            self.board.count(site, to_site=message.ByteSize())
            yield message

    def _submit(self, requests: Iterator[pb.ClientMessage], context: grpc.ServicerContext) -> Iterator[Ack]:
        """Header, then PROCEED when it is this upload's turn, then the chunks, then the verdict."""
        site = self._authorize(context, claimed=None)  # the claim is checked on the reply header
        messages = self._counted(site, requests)
        first = next(messages, None)
        if first is None or first.WhichOneof("body") != "reply":
            yield self._ack(site, (Ack.REJECTED, "a submission must start with a reply header"))
            return
        header = first.reply
        # Judge the header, then wait for this upload's turn, before any payload is sent.
        context.add_callback(self.board.wake)  # a client that hangs up while waiting frees its turn
        verdict = self.board.admit(site, header.task_id, header.site_id, header.round, header.kind, context.is_active)
        if verdict is not None:
            yield self._ack(site, verdict)
            return
        verdict, setback = (Ack.REJECTED, "the upload broke off"), FailureKind.DROPPED
        try:
            yield self._ack(site, (Ack.PROCEED, ""))
            task_id, reply = wire.read_reply(itertools.chain([first], messages), self.max_payload_bytes)
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
            self.board.refused(refused.name, refused.reason)
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
