"""Deployed sites sign their advertised keys with their mTLS certificate and check each other's.

Real kits from `fedrad.pki.provision` (EC P-256, the project's own CA); the server is played by a
relay that forwards what the sites advertise, or tampers with it as an active server would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrad.pki.kits import load_site_kit
from fedrad.pki.provision import ProjectSpec, provision
from fedrad.secagg import secagg_pb2 as pb
from fedrad.secagg.crypto import SecAggError
from fedrad.secagg.identity import Identity
from fedrad.secagg.participant import Participant, SecAggSettings

SITES = ["a", "b", "c"]
SETTINGS = SecAggSettings()


def _identities(root: Path, project: str, sites=SITES) -> dict[str, Identity]:
    kits = provision(ProjectSpec(name=project, sites=tuple(sites)), root / project)
    out = {}
    for site in sites:
        kit = load_site_kit(kits.sites[site])
        out[site] = Identity.from_pem(site, kit.cert_pem, kit.key_pem, kit.ca_pem)
    return out


@pytest.fixture(scope="module")
def identities(tmp_path_factory) -> dict[str, Identity]:
    return _identities(tmp_path_factory.mktemp("kits"), "secagg-test")


def _request(phase: str, **fields) -> pb.Request:
    return pb.Request(phase=phase, round=2, threshold=2, fraction_bits=SETTINGS.fraction_bits,
                      clip_norm=SETTINGS.clip_norm, **fields)  # fmt: skip


def _advertise(participants: dict[str, Participant]) -> dict[str, pb.PublicKeys]:
    blob = _request("advertise", roster=SITES).SerializeToString()
    return {s: pb.Response.FromString(p.respond(2, blob, 10)).keys for s, p in participants.items()}


def _share(keys: dict[str, pb.PublicKeys]) -> bytes:
    request = _request("share", roster=SITES)
    for site, k in keys.items():
        request.keys[site].CopyFrom(k)
    return request.SerializeToString()


def test_signed_keys_pass_and_each_site_seals_shares_for_the_others(identities):
    participants = {s: Participant(s, SETTINGS, identities[s]) for s in SITES}
    keys = _advertise(participants)
    assert all(k.certificate and k.signature for k in keys.values())
    for site, participant in participants.items():
        sealed = pb.Response.FromString(participant.respond(2, _share(keys), 10))
        assert set(sealed.ciphertexts) == set(SITES) - {site}


def test_a_server_that_substitutes_a_sites_key_is_refused_by_the_others(identities):
    participants = {s: Participant(s, SETTINGS, identities[s]) for s in SITES}
    keys = _advertise(participants)
    rogue = Participant("b", SETTINGS)  # the server's own key pair, advertised under b's name
    keys["b"].mask = _advertise({"b": rogue} | {s: Participant(s, SETTINGS) for s in ("a", "c")})["b"].mask
    with pytest.raises(SecAggError, match="site a: b's advertised keys: the signature does not verify"):
        participants["a"].respond(2, _share(keys), 10)


def test_a_certificate_of_another_project_or_another_site_is_refused(identities, tmp_path: Path):
    other = _identities(tmp_path, "rogue-project")
    participants = {s: Participant(s, SETTINGS, identities[s]) for s in SITES}
    participants["c"] = Participant("c", SETTINGS, other["c"])  # signed, but by another CA's certificate
    keys = _advertise(participants)
    with pytest.raises(SecAggError, match="c's advertised keys: the certificate was not issued by this project's CA"):
        participants["a"].respond(2, _share(keys), 10)
    participants["c"] = Participant("c", SETTINGS, Identity("c", identities["b"].cert_pem, identities["b"].key,
                                                           identities["b"].ca))  # b's certificate for c's keys
    keys = _advertise(participants)
    with pytest.raises(SecAggError, match=r"c's advertised keys: the certificate names \['b'\], not 'c'"):
        participants["a"].respond(2, _share(keys), 10)


def test_an_unsigned_advertisement_is_refused_by_a_deployed_site(identities):
    participants = {s: Participant(s, SETTINGS, identities[s]) for s in ("a", "b")} | {"c": Participant("c", SETTINGS)}
    keys = _advertise(participants)
    with pytest.raises(SecAggError, match="c's advertised keys carry no certificate and signature"):
        participants["a"].respond(2, _share(keys), 10)
