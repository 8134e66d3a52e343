from __future__ import annotations

from pathlib import Path

import pytest

from fedrad.pki.kits import load_server_kit
from fedrad.pki.provision import Kits, revoke_site
from fedrad.transport.gatekeeper import Gatekeeper, Refused


def _pem(kits: Kits, who: str) -> bytes:
    path = kits.server / "server.crt" if who == "server" else kits.sites[who] / "site.crt"
    return path.read_bytes()


def test_a_site_is_admitted_under_its_own_name(kits: Kits) -> None:
    gate = Gatekeeper(load_server_kit(kits.server))
    assert gate.admit(_pem(kits, "hospital-a"), claimed="hospital-a") == "hospital-a"
    assert gate.admit(_pem(kits, "hospital-a"), claimed=None) == "hospital-a"


@pytest.mark.parametrize(
    ("cert", "claimed", "reason"),
    [
        (None, None, "no client certificate"),
        ("server", None, "certificate CN 'server' is not a site"),
        ("hospital-a", "hospital-b", "cannot speak for site 'hospital-b'"),
    ],
)
def test_refusals_say_why(kits: Kits, cert: str | None, claimed: str | None, reason: str) -> None:
    with pytest.raises(Refused, match=reason) as refused:
        Gatekeeper(load_server_kit(kits.server)).admit(None if cert is None else _pem(kits, cert), claimed)
    assert not refused.value.transient


def test_revocation_is_seen_without_a_restart(fresh_kits: tuple[Path, Kits]) -> None:
    out, kits = fresh_kits
    gate = Gatekeeper(load_server_kit(kits.server))
    assert gate.admit(_pem(kits, "hospital-b"), "hospital-b") == "hospital-b"
    revoke_site(out, "hospital-b")
    with pytest.raises(Refused, match="is revoked"):
        gate.admit(_pem(kits, "hospital-b"), "hospital-b")
    assert gate.admit(_pem(kits, "hospital-a"), "hospital-a") == "hospital-a"


def test_an_unreadable_crl_fails_closed(fresh_kits: tuple[Path, Kits]) -> None:
    _, kits = fresh_kits
    gate = Gatekeeper(load_server_kit(kits.server))
    (kits.server / "crl.pem").write_text("not a CRL")
    with pytest.raises(Refused, match="cannot read its revocation list") as refused:
        gate.admit(_pem(kits, "hospital-a"), "hospital-a")
    assert refused.value.transient
