"""Loopback tests: a real gRPC server with mutual TLS on 127.0.0.1 and clients in threads."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedrad.codec import decode, encode
from fedrad.pki.kits import SiteKit, load_server_kit, load_site_kit
from fedrad.pki.provision import Kits, revoke_site
from fedrad.transport import fedrad_pb2 as pb
from fedrad.transport import wire
from fedrad.transport.grpc_transport import Backoff, ClientError, ClientRefused, GrpcClient, GrpcServerTransport
from fedrad.types import DataKind, FailureKind, Instruction, InstructionKind, Reply

from .helpers import Background, EchoSite, ManualClock, raw_channel, running, wait_until, work_call

FAST = Backoff(base_s=0.05, cap_s=0.2)


@pytest.fixture
def server(kits: Kits) -> Iterator[GrpcServerTransport]:
    with GrpcServerTransport(load_server_kit(kits.server), bind="127.0.0.1:0", reply_timeout_s=20, poll_s=0.5) as s:
        yield s


def _client(kit: SiteKit, server: GrpcServerTransport, site: EchoSite | None = None, host: str = "127.0.0.1"):
    site = site or EchoSite(kit.site_id)
    address = f"{host}:{server.port}"
    return GrpcClient(site, kit, server_address=address, backoff=FAST, max_failures=3), site


def _instruction(site_id: str, blob: bytes, round: int = 0) -> Instruction:
    return Instruction(round=round, site_id=site_id, kind=InstructionKind.FIT, payload={DataKind.WEIGHTS: blob})


def test_one_round_with_two_sites_over_mutual_tls(kits: Kits, server: GrpcServerTransport) -> None:
    weights = {"w": np.linspace(0, 1, 1_200_000, dtype=np.float32)}  # 4.8 MB: above gRPC's 4 MB message limit
    blob = encode(weights)
    client_a, site_a = _client(load_site_kit(kits.sites["hospital-a"]), server)
    client_b, site_b = _client(load_site_kit(kits.sites["hospital-b"]), server, host="localhost")

    with running(client_a) as errors_a, running(client_b) as errors_b:
        replies = server.dispatch([_instruction("hospital-a", blob, 3), _instruction("hospital-b", blob, 3)])
        # A resubmission (a client whose acknowledgement was lost) changes nothing.
        assert wait_until(lambda: len(client_a.acks) == 1)  # the ack may trail the server's record
        task_id = client_a.acks[0][0]
        duplicate = client_a.submit(task_id, dataclasses.replace(replies[0], num_examples=999))

    assert [(r.site_id, r.ok, r.round, r.num_examples) for r in replies] == [
        ("hospital-a", True, 3, 10),
        ("hospital-b", True, 3, 10),
    ]
    np.testing.assert_array_equal(decode(replies[1].payload[DataKind.WEIGHTS])["w"], weights["w"])
    assert [i.round for i in site_a.seen] == [3] and len(site_b.seen) == 1
    assert client_a.acks[0][1:] == ("ACCEPTED", "")
    assert client_a.acks[1][1] == "DUPLICATE" and duplicate.reason.endswith("the first reply stands")
    assert errors_a == errors_b == []
    traffic = server.traffic()
    for site in ("hospital-a", "hospital-b"):
        assert len(blob) < traffic[site].to_site < len(blob) * 1.01
        assert traffic[site].from_site > len(blob)
    assert client_b.bytes_received == traffic["hospital-b"].to_site


def test_a_site_without_a_client_fails_at_the_deadline(kits: Kits) -> None:
    with GrpcServerTransport(load_server_kit(kits.server), bind="127.0.0.1:0", reply_timeout_s=0.3) as server:
        server.board.clock = clock = ManualClock()
        dispatch = Background(lambda: server.dispatch([_instruction("hospital-c", b"weights")]))
        assert wait_until(lambda: bool(server.board.snapshot()["hospital-c"]["tasks"]))
        assert not dispatch.done.is_set()  # the clock stands still: the round waits
        clock.advance(0.3, server.board)
        [reply] = dispatch.result()
    assert not reply.ok and "no reply within 0.3 s; it never connected" in reply.error


def test_a_late_reply_is_rejected(kits: Kits) -> None:
    with GrpcServerTransport(load_server_kit(kits.server), bind="127.0.0.1:0", reply_timeout_s=0.5, poll_s=0.5) as s:
        s.board.clock = clock = ManualClock()
        gate = threading.Event()  # the site replies only when the test opens it: after the deadline
        site = EchoSite("hospital-a", gate=gate)
        client, _ = _client(load_site_kit(kits.sites["hospital-a"]), s, site=site)
        with running(client) as errors:
            dispatch = Background(lambda: s.dispatch([_instruction("hospital-a", b"weights")]))
            assert site.received.wait(timeout=10)  # delivered, and the site is training
            clock.advance(0.5, s.board)  # the deadline passes
            [reply] = dispatch.result()
            gate.set()
            assert wait_until(lambda: len(client.acks) == 1)
    assert "delivered 1 time" in reply.error
    assert client.acks[0][1] == "REJECTED" and client.acks[0][2].startswith("late")
    assert errors == []


def test_a_client_certificate_from_another_ca_is_refused(
    kits: Kits, rogue_kits: Kits, server: GrpcServerTransport
) -> None:
    rogue = load_site_kit(rogue_kits.sites["hospital-a"])
    real = load_site_kit(kits.sites["hospital-a"])
    # The impostor trusts the real CA (it is public), so only the server's check can stop it.
    client, site = _client(dataclasses.replace(rogue, ca_pem=real.ca_pem), server)
    with pytest.raises(ClientError) as error:
        client.run()
    assert isinstance(error.value, ClientRefused) and "at the TLS handshake" in str(error.value)
    assert site.seen == [] and server.wait_for_sites(["hospital-a"], 0.1) == {"hospital-a"}


def test_a_certificate_whose_cn_is_not_an_allowed_site_is_refused(kits: Kits, tmp_path: Path) -> None:
    kit = dataclasses.replace(load_server_kit(kits.server), sites=frozenset({"hospital-a", "hospital-b"}))
    with GrpcServerTransport(kit, bind="127.0.0.1:0", reply_timeout_s=0.3) as server:
        client, site = _client(load_site_kit(kits.sites["hospital-c"]), server)
        with pytest.raises(ClientRefused, match="certificate CN 'hospital-c' is not a site of project fedrad-test"):
            client.run()
        admin = load_site_kit(kits.sites["hospital-a"])
        admin_pem = (kits.admin / "admin.crt").read_bytes(), (kits.admin / "admin.key").read_bytes()
        admin = dataclasses.replace(admin, site_id="alice@example.org", cert_pem=admin_pem[0], key_pem=admin_pem[1])
        with pytest.raises(ClientRefused, match="alice@example.org"):
            _client(admin, server)[0].run()
    assert site.seen == []


def test_a_site_cannot_present_itself_as_another(kits: Kits, server: GrpcServerTransport) -> None:
    kit = dataclasses.replace(load_site_kit(kits.sites["hospital-a"]), site_id="hospital-b")
    client, site = _client(kit, server)
    with pytest.raises(ClientRefused, match="certificate of site 'hospital-a' cannot speak for site 'hospital-b'"):
        client.run()
    assert site.seen == []


def test_revoking_a_site_takes_effect_without_a_restart(fresh_kits: tuple[Path, Kits]) -> None:
    out, kits = fresh_kits
    with GrpcServerTransport(load_server_kit(kits.server), bind="127.0.0.1:0", reply_timeout_s=10, poll_s=0.3) as s:
        client, _ = _client(load_site_kit(kits.sites["hospital-a"]), s)
        with running(client) as errors:
            assert s.dispatch([_instruction("hospital-a", b"w")])[0].ok
            revoke_site(out, "hospital-a")
            assert wait_until(lambda: bool(errors))
        s.reply_timeout_s = 0.2
        [reply] = s.dispatch([_instruction("hospital-a", b"w", round=1)])
    assert isinstance(errors[0], ClientRefused) and "revoked" in str(errors[0])
    assert "refused" in reply.error and "revoked" in reply.error


def test_clients_stop_by_themselves_when_the_server_says_the_job_is_done(
    kits: Kits, server: GrpcServerTransport
) -> None:
    client_a, _ = _client(load_site_kit(kits.sites["hospital-a"]), server)
    client_b, _ = _client(load_site_kit(kits.sites["hospital-b"]), server)
    client_b.site.job_hash = "another-job"  # a site that approved another job keeps waiting for its own
    with running(client_a) as errors_a, running(client_b) as errors_b:
        assert not server.wait_for_sites({"hospital-a", "hospital-b"}, 10)
        untold = server.finish("", "job tiny finished after 2 rounds", linger_s=5)
        assert wait_until(lambda: client_a.finished is not None)
        assert client_b.finished is None
    assert untold == set()  # both were told; only a's job was the one that finished
    assert client_a.finished == "job tiny finished after 2 rounds"
    assert errors_a == errors_b == []


def test_a_site_that_hangs_up_mid_upload_is_dropped_not_rejected(kits: Kits, server: GrpcServerTransport) -> None:
    # Prepare: hospital-a's own channel; it pulls its instruction by hand.
    server.board.clock = clock = ManualClock()
    kit = load_site_kit(kits.sites["hospital-a"])
    credentials = grpc.ssl_channel_credentials(kit.ca_pem, kit.key_pem, kit.cert_pem)
    dispatch = Background(lambda: server.dispatch([_instruction("hospital-a", b"w" * 3000)]))
    with grpc.secure_channel(f"127.0.0.1:{server.port}", credentials) as channel:
        work = channel.unary_stream(wire.WORK_METHOD, pb.WorkRequest.SerializeToString, pb.ServerMessage.FromString)
        work_call = work(pb.WorkRequest(site_id="hospital-a"))
        task_id, instruction = wire.read_instruction(iter(work_call))
        reply = Reply(0, "hospital-a", instruction.kind, {DataKind.WEIGHTS: b"u" * 3000}, num_examples=10)
        messages = list(wire.reply_messages(reply, task_id, chunk_size=1000))  # the header, then 3 chunks

        # Execute: the site's process dies after its first chunk, so its stream ends there
        submit = channel.stream_stream(wire.SUBMIT_METHOD, pb.ClientMessage.SerializeToString, pb.SubmitAck.FromString)
        acks = list(submit(iter(messages[:2])))
    clock.advance(20, server.board)  # the deadline passes with no complete upload
    [failed] = dispatch.result()

    # Assert: the server read the hang-up as a drop, not as a malformed reply
    assert [pb.SubmitAck.Status.Name(a.status) for a in acks] == ["PROCEED", "REJECTED"]
    assert "the upload broke off" in acks[1].reason
    assert failed.error_kind == FailureKind.DROPPED and "broke off" in (failed.error or ""), failed


def test_a_sites_declared_examples_are_pinned_and_the_job_end_says_whether_it_failed(
    kits: Kits, server: GrpcServerTransport
) -> None:
    kit = load_site_kit(kits.sites["hospital-a"])
    server.finish("hash", "quorum not met", linger_s=0, failed=True)
    with raw_channel(kit, server.port) as channel:
        [first] = list(work_call(channel, "hospital-a", num_train=120))
        list(work_call(channel, "hospital-a", num_train=9000))  # a later, different count is not believed
    assert server.declared_examples("hospital-a") == 120 and server.declared_examples("hospital-b") is None
    assert server.board.snapshot()["hospital-a"]["declared_changed"] == 9000
    assert (first.done.job_hash, first.done.reason, first.done.failed) == ("hash", "quorum not met", True)
