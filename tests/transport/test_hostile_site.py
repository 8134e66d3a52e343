"""A hostile site against a real GrpcServerTransport: raw gRPC calls built from the wire module.

The site holds a valid certificate and speaks the protocol badly on purpose: it announces more
than it sends, holds streams open, opens calls twice, or was revoked. Each test waits on the
board's state (never on a sleep), and deadlines pass only when a test moves the ManualClock.
"""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedrad.pki.kits import load_server_kit, load_site_kit
from fedrad.pki.provision import Kits, revoke_site
from fedrad.transport import fedrad_pb2 as pb
from fedrad.transport import wire
from fedrad.transport.grpc_transport import Backoff, ClientRefused, GrpcClient, GrpcServerTransport
from fedrad.types import DataKind, FailureKind, Instruction, InstructionKind, Reply

from .helpers import Background, EchoSite, ManualClock, held, raw_channel, running, submit_call, wait_until, work_call

MODEL_BYTES = 1 << 20  # the weights sent: a reply may announce at most this plus a header's slack


@pytest.fixture
def server(kits: Kits) -> Iterator[GrpcServerTransport]:
    kit = load_server_kit(kits.server)
    with GrpcServerTransport(kit, bind="127.0.0.1:0", reply_timeout_s=60, poll_s=30, upload_timeout_s=20) as s:
        s.board.clock = ManualClock()
        yield s


def _fit(site_id: str, blob: bytes = b"w" * MODEL_BYTES) -> Instruction:
    return Instruction(round=0, site_id=site_id, kind=InstructionKind.FIT, payload={DataKind.WEIGHTS: blob})


def _pull(channel: grpc.Channel, site_id: str) -> tuple[str, Instruction]:
    pulled = wire.read_instruction(iter(work_call(channel, site_id)))
    assert pulled is not None
    return pulled


def _announcement(task_id: str, size: int, num_chunks: int) -> pb.ClientMessage:
    """A reply header announcing `size` bytes of weights (the digest is of nothing: no chunk will come)."""
    header = wire.reply_header(Reply(0, "hospital-a", InstructionKind.FIT, num_examples=10), task_id)
    header.payloads.add(kind="weights", size=size, num_chunks=num_chunks, sha256=b"\0" * 32)
    return pb.ClientMessage(reply=header)


def _uploading(server: GrpcServerTransport, site: str) -> bool:
    return any(t["uploading"] for t in server.board.snapshot()[site]["tasks"])


def test_a_1_gib_announcement_held_open_costs_the_server_no_memory(kits: Kits, server: GrpcServerTransport) -> None:
    # Prepare: hospital-a pulls its task by hand
    kit = load_site_kit(kits.sites["hospital-a"])
    dispatch = Background(lambda: server.dispatch([_fit("hospital-a")]))
    release = threading.Event()
    with raw_channel(kit, server.port) as channel:
        task_id, _ = _pull(channel, "hospital-a")

        # Execute: announce 1 GiB, send no chunk, keep the stream open
        tracemalloc.start()
        try:
            call = submit_call(channel, held([_announcement(task_id, 1 << 30, 1024)], release))
            acks = Background(lambda: [pb.SubmitAck.Status.Name(a.status) + ": " + a.reason for a in call])
            verdicts = acks.result()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            release.set()
        server.board.clock.advance(60, server.board)  # the deadline passes: nothing usable came
        [reply] = dispatch.result()

    # Assert: refused on its header, before a byte was read or a buffer allocated
    assert len(verdicts) == 1 and verdicts[0].startswith("REJECTED: ")
    assert f"announces {1 << 30} bytes, above the {MODEL_BYTES + 65536}" in verdicts[0]
    assert peak < MODEL_BYTES, f"the server's Python allocations peaked at {peak} bytes"
    assert reply.error_kind == FailureKind.REJECTED and "announces" in (reply.error or "")


def test_an_upload_held_open_is_cancelled_when_its_window_ends(kits: Kits, server: GrpcServerTransport) -> None:
    # Prepare: hospital-a announces a reply it may send (within its limits), sends one chunk and holds
    kit = load_site_kit(kits.sites["hospital-a"])
    dispatch = Background(lambda: server.dispatch([_fit("hospital-a")]))
    release = threading.Event()
    reply = Reply(0, "hospital-a", InstructionKind.FIT, {DataKind.WEIGHTS: b"u" * 3000}, num_examples=10)
    with raw_channel(kit, server.port) as channel:
        task_id, _ = _pull(channel, "hospital-a")
        messages = list(wire.reply_messages(reply, task_id, chunk_size=1000))  # the header, then 3 chunks
        call = submit_call(channel, held(messages[:2], release))
        answers = Background(lambda: [pb.SubmitAck.Status.Name(a.status) for a in call])
        assert wait_until(lambda: _uploading(server, "hospital-a"))  # PROCEED given, its upload under way

        # Execute: its 20 s window from its turn ends (the round's deadline is still 40 s away)
        server.board.clock.advance(20, server.board)
        [failed] = dispatch.result()
        with pytest.raises(grpc.RpcError) as ended:
            answers.result()
        release.set()

    # Assert: the stream was cancelled by the server, and the task failed for it
    assert ended.value.code() == grpc.StatusCode.CANCELLED
    assert failed.error_kind == FailureKind.TIMEOUT
    assert failed.error == "site hospital-a: its upload did not complete within 20 s of its turn"
    assert wait_until(lambda: not server.board.snapshot()["hospital-a"]["submitting"])


def test_a_second_poll_from_a_site_ends_its_first(kits: Kits, server: GrpcServerTransport) -> None:
    kit = load_site_kit(kits.sites["hospital-a"])
    with raw_channel(kit, server.port) as channel, raw_channel(kit, server.port) as reconnected:
        first = work_call(channel, "hospital-a")
        ended = Background(lambda: list(first))
        assert wait_until(lambda: server.board.snapshot()["hospital-a"]["polling"])
        second = work_call(reconnected, "hospital-a")  # the same site again: a client after a half-open link
        assert ended.result() == []  # the first poll ended at once, empty, long before its 30 s
        assert server.board.snapshot()["hospital-a"]["polling"]  # the second is the one waiting now
        second.cancel()


def test_a_second_upload_from_a_site_is_rejected_while_one_is_under_way(
    kits: Kits, server: GrpcServerTransport
) -> None:
    kit = load_site_kit(kits.sites["hospital-a"])
    dispatch = Background(lambda: server.dispatch([_fit("hospital-a")]))
    release = threading.Event()
    reply = Reply(0, "hospital-a", InstructionKind.FIT, {DataKind.WEIGHTS: b"u" * 3000}, num_examples=10)
    with raw_channel(kit, server.port) as channel:
        task_id, _ = _pull(channel, "hospital-a")
        messages = list(wire.reply_messages(reply, task_id, chunk_size=1000))
        first = submit_call(channel, held(messages[:2], release))
        assert wait_until(lambda: _uploading(server, "hospital-a"))

        # Execute: a second upload of the same site, while the first holds its stream
        acks = list(submit_call(channel, iter(messages)))

        # Assert: refused at once; the first is untouched and, once complete, accepted
        assert [(pb.SubmitAck.Status.Name(a.status), a.reason) for a in acks] == [
            ("REJECTED", "another upload from site hospital-a is under way")
        ]
        first.cancel()
        release.set()
    server.board.clock.advance(60, server.board)
    [result] = dispatch.result()
    assert not result.ok  # the only upload was the held one: nothing was recorded from the second


def test_a_revoked_site_costs_no_deadline(fresh_kits: tuple[Path, Kits]) -> None:
    # Prepare: hospital-b is revoked; its client calls once and is refused
    out, kits = fresh_kits
    revoke_site(out, "hospital-b")
    kit = load_server_kit(kits.server)
    with GrpcServerTransport(kit, bind="127.0.0.1:0", reply_timeout_s=600, poll_s=0.5) as server:
        server.board.clock = ManualClock()  # never moved: the round's deadline never passes
        backoff = Backoff(base_s=0.05, cap_s=0.2)
        address = f"127.0.0.1:{server.port}"
        revoked = GrpcClient(EchoSite("hospital-b"), load_site_kit(kits.sites["hospital-b"]), server_address=address,
                             backoff=backoff, max_failures=3)
        with pytest.raises(ClientRefused, match="revoked"):
            revoked.run()
        healthy = GrpcClient(EchoSite("hospital-a"), load_site_kit(kits.sites["hospital-a"]), server_address=address,
                             backoff=backoff, max_failures=3)

        # Execute: a round for both, with a healthy client answering
        with running(healthy) as errors:
            replies = server.dispatch([_fit("hospital-a", b"w" * 100), _fit("hospital-b", b"w" * 100)])

    # Assert: the round ended without its deadline; b was not waited for, and says why
    assert errors == [] and replies[0].ok
    assert replies[1].error_kind == FailureKind.DROPPED
    assert "site hospital-b: not waited for: its last call was refused" in (replies[1].error or "")
    assert "revoked" in (replies[1].error or "")


def test_a_site_revoked_after_it_called_is_not_waited_for_before_it_calls_again(fresh_kits: tuple[Path, Kits]) -> None:
    out, kits = fresh_kits
    with GrpcServerTransport(load_server_kit(kits.server), bind="127.0.0.1:0", reply_timeout_s=600, poll_s=30) as s:
        s.board.clock = ManualClock()
        with raw_channel(load_site_kit(kits.sites["hospital-b"]), s.port) as channel:
            poll = work_call(channel, "hospital-b")
            assert wait_until(lambda: s.board.snapshot()["hospital-b"]["polling"])
            poll.cancel()
        revoke_site(out, "hospital-b")  # the CRL now lists the serial hospital-b was admitted with
        [reply] = s.dispatch([_fit("hospital-b", b"w")])
    assert reply.error_kind == FailureKind.DROPPED and "is revoked" in (reply.error or "")
