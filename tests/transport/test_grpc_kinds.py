"""Failure kinds over gRPC + mTLS: the server types what it saw, and a site's refusal travels as REFUSED."""

from __future__ import annotations

from fedrad.pki.kits import load_server_kit, load_site_kit
from fedrad.pki.provision import Kits
from fedrad.site.training import SiteError
from fedrad.transport.grpc_transport import Backoff, GrpcClient, GrpcServerTransport
from fedrad.types import DataKind, FailureKind, Instruction, InstructionKind

from .helpers import running


class _RefusingSite:
    """A site whose admin approved another job: it refuses every instruction."""

    def handle(self, instruction):
        raise SiteError(f"site {instruction.site_id}: instruction for job 'other' refused")


def _instruction(site_id: str) -> Instruction:
    return Instruction(round=0, site_id=site_id, kind=InstructionKind.FIT, payload={DataKind.WEIGHTS: b"weights"})


def test_a_site_without_a_client_is_dropped_by_the_deadline(kits: Kits) -> None:
    with GrpcServerTransport(load_server_kit(kits.server), bind="127.0.0.1:0", reply_timeout_s=0.3) as server:
        [reply] = server.dispatch([_instruction("hospital-c")])
    assert reply.error_kind == FailureKind.DROPPED and "never connected" in reply.error


def test_a_sites_refusal_reaches_the_server_as_refused(kits: Kits) -> None:
    with GrpcServerTransport(load_server_kit(kits.server), bind="127.0.0.1:0", reply_timeout_s=20, poll_s=0.5) as s:
        kit = load_site_kit(kits.sites["hospital-a"])
        client = GrpcClient(_RefusingSite(), kit, server_address=f"127.0.0.1:{s.port}",
                            backoff=Backoff(base_s=0.05, cap_s=0.2), max_failures=3)
        with running(client) as errors:
            [reply] = s.dispatch([_instruction("hospital-a")])
    assert errors == []
    assert reply.error_kind == FailureKind.REFUSED and "refused" in reply.error
