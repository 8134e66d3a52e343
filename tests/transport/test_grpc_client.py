"""When the hospital's client stops by itself: a real gRPC server with mutual TLS on 127.0.0.1.

The client stops when retrying cannot help (the job over, failed, or another job's; its certificate
refused at the TLS handshake) and keeps retrying when it can (a server down, a peer hanging up).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fedrad.pki import certs as pki
from fedrad.pki.kits import SiteKit, load_server_kit, load_site_kit
from fedrad.pki.provision import Kits
from fedrad.transport import fedrad_pb2 as pb
from fedrad.transport.grpc_transport import Backoff, ClientError, ClientRefused, GrpcClient, GrpcServerTransport

from .helpers import Background, EchoSite, wait_until

FAST = Backoff(base_s=0.01, cap_s=0.05)
JOB = "a1" * 32  # the job hash this site's admin approved


class RecordingServer(GrpcServerTransport):
    """The real server transport, keeping every request for work it was sent."""

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        self.requests: list[pb.WorkRequest] = []

    def _work(self, request: pb.WorkRequest, context: grpc.ServicerContext) -> Iterator[pb.ServerMessage]:
        self.requests.append(request)
        yield from super()._work(request, context)


@pytest.fixture
def server(kits: Kits) -> Iterator[RecordingServer]:
    with RecordingServer(load_server_kit(kits.server), bind="127.0.0.1:0", reply_timeout_s=20, poll_s=0.2) as s:
        yield s


def _client(kit: SiteKit, address: str, site: object | None = None, **options) -> GrpcClient:
    if site is None:
        site = EchoSite(kit.site_id)
        site.job_hash = JOB
    return GrpcClient(site, kit, server_address=address, backoff=FAST, **options)


def expired(kits: Kits, site: str) -> SiteKit:
    """The site's kit with its certificate re-issued by the project's CA as it was, but expired yesterday."""
    kit = load_site_kit(kits.sites[site])
    ca_key, issued = pki.load_key(kits.ca / "ca.key"), x509.load_pem_x509_certificate(kit.cert_pem)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(issued.subject)
        .issuer_name(issued.issuer)
        .public_key(issued.public_key())  # the kit's own key still matches
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
    )
    for extension in issued.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return dataclasses.replace(kit, cert_pem=pki.cert_pem(builder.sign(ca_key, hashes.SHA256())))


def test_every_request_for_work_declares_the_sites_training_examples(kits: Kits, server: RecordingServer) -> None:
    site = EchoSite("hospital-a")
    site.job_hash, site.data = JOB, SimpleNamespace(num_train=37)  # as fedrad.site.handler.Site holds its data
    client = _client(load_site_kit(kits.sites["hospital-a"]), f"127.0.0.1:{server.port}", site)
    work = Background(client.run)
    try:
        assert wait_until(lambda: len(server.requests) >= 2)  # two poll windows: two requests
    finally:
        client.stop()
    work.result()
    assert {(r.site_id, r.num_train) for r in server.requests} == {("hospital-a", 37)}


def test_a_site_without_data_declares_nothing_and_a_caller_may_declare_for_it(kits: Kits) -> None:
    kit = load_site_kit(kits.sites["hospital-a"])
    assert _client(kit, "127.0.0.1:1").num_train == 0
    assert _client(kit, "127.0.0.1:1", num_train=12).num_train == 12


def test_a_job_that_failed_ends_the_client_with_the_servers_reason(kits: Kits, server: RecordingServer) -> None:
    # Written against TaskBoard.finish(job_hash, reason, failed=...) (the server's side of JobDone.failed).
    client = _client(load_site_kit(kits.sites["hospital-a"]), f"127.0.0.1:{server.port}")
    server.board.finish(JOB, "job tiny failed: quorum not met in round 2", failed=True)
    Background(client.run).result()
    assert (client.finished, client.failed, client.other_job) == ("job tiny failed: quorum not met in round 2",
                                                                  True, None)


def test_a_job_that_finished_ends_the_client_not_failed(kits: Kits, server: RecordingServer) -> None:
    client = _client(load_site_kit(kits.sites["hospital-a"]), f"127.0.0.1:{server.port}")
    server.board.finish(JOB, "job tiny finished after 2 rounds")
    Background(client.run).result()
    assert (client.finished, client.failed, client.other_job) == ("job tiny finished after 2 rounds", False, None)


def test_a_client_on_another_job_stops_when_the_servers_job_ends(kits: Kits, server: RecordingServer) -> None:
    client = _client(load_site_kit(kits.sites["hospital-a"]), f"127.0.0.1:{server.port}")
    server.board.finish("b2" * 32, "job other finished after 2 rounds")
    Background(client.run).result()  # it used to keep polling: this waited in vain
    assert (client.other_job, client.finished, client.failed) == ("b2" * 32, None, False)
    assert client.handled == 0


def test_a_certificate_of_another_ca_is_refused_at_the_handshake_in_three_attempts(
    kits: Kits, rogue_kits: Kits, server: RecordingServer
) -> None:
    rogue = load_site_kit(rogue_kits.sites["hospital-a"])
    # It trusts the real CA, so the handshake gets as far as the server checking its certificate.
    kit = dataclasses.replace(rogue, ca_pem=load_site_kit(kits.sites["hospital-a"]).ca_pem)
    client = _client(kit, f"127.0.0.1:{server.port}", max_failures=10)  # bounds the test if never refused
    with pytest.raises(ClientRefused) as refused:
        client.run()
    message = str(refused.value)
    assert "the server refused this site's certificate at the TLS handshake (3 attempts in a row" in message
    assert "Socket closed" in message and "site.crt: not signed by the kit's ca.crt" in message
    assert "check that the kit comes from this project's CA and has not expired" in message
    assert "\n" not in message and server.requests == []


def test_an_expired_certificate_is_refused_at_the_handshake_and_the_client_says_it_expired(
    kits: Kits, server: RecordingServer
) -> None:
    client = _client(expired(kits, "hospital-a"), f"127.0.0.1:{server.port}", max_failures=10)
    with pytest.raises(ClientRefused, match=r"at the TLS handshake \(3 attempts in a row: .*Socket closed\); "
                                            r"site.crt: expired on "):
        client.run()
    assert server.requests == []


def test_a_server_certificate_this_site_does_not_trust_is_a_refusal(rogue_kits: Kits, server: RecordingServer) -> None:
    client = _client(load_site_kit(rogue_kits.sites["hospital-a"]), f"127.0.0.1:{server.port}", max_failures=10)
    with pytest.raises(ClientRefused, match="the TLS handshake failed 3 times in a row .*CERTIFICATE_VERIFY_FAILED"):
        client.run()


@contextmanager
def _refusing_port() -> Iterator[int]:
    """A bound port that does not listen: a connection to it is refused, as to a server that is down."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


@contextmanager
def _hanging_up_port() -> Iterator[int]:
    """A TCP peer that reads the client's hello and hangs up: no TLS server (a proxy, a restart)."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()

        def serve() -> None:
            while True:
                try:
                    connection, _ = listening.accept()
                except OSError:  # closed: the test is over
                    return
                with connection:
                    connection.recv(65536)

        threading.Thread(target=serve, daemon=True).start()
        yield listening.getsockname()[1]
        listening.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize("peer", [_refusing_port, _hanging_up_port], ids=["down", "hangs-up-in-handshake"])
def test_a_server_that_is_down_is_retried_not_taken_for_a_refusal(kits: Kits, peer) -> None:
    kit = load_site_kit(kits.sites["hospital-a"])
    with peer() as port, pytest.raises(ClientError) as error:
        _client(kit, f"127.0.0.1:{port}", max_failures=5).run()  # 5: more than the 3 handshake failures
    assert not isinstance(error.value, ClientRefused)
    assert "gave up after 5 failed attempts" in str(error.value)
