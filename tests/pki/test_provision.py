from __future__ import annotations

import hashlib
import ipaddress
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from fedrad.pki import certs as pki
from fedrad.pki.kits import load_server_kit, load_site_kit
from fedrad.pki.provision import (
    Kits,
    ProjectSpec,
    ProvisionError,
    add_site,
    load_project,
    provision,
    revoke_site,
    revoked_sites,
)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.*")}


def test_every_private_key_is_owner_only(kits: Kits) -> None:
    keys = sorted(kits.ca.parent.rglob("*.key"))
    assert {k.name for k in keys} == {"ca.key", "server.key", "site.key", "admin.key"}
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_the_ca_key_stays_in_the_ca_folder(kits: Kits) -> None:
    ca_key = (kits.ca / "ca.key").read_bytes()
    outside = [p for p in kits.ca.parent.rglob("*") if p.is_file() and p.parent != kits.ca]
    assert outside and all(p.read_bytes() != ca_key for p in outside)
    assert not any(p.name == "ca.key" for p in outside)


def test_site_certificate_names_the_site_and_verifies_against_the_ca(kits: Kits) -> None:
    ca = _cert(kits.ca / "ca.crt")
    site = _cert(kits.sites["hospital-b"] / "site.crt")
    assert site.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hospital-b"
    sans = site.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["hospital-b"]
    site.verify_directly_issued_by(ca)
    chain = PolicyBuilder().store(Store([ca])).build_client_verifier().verify(site, [])
    assert chain.chain[-1] == ca
    assert (kits.sites["hospital-b"] / "ca.crt").read_bytes() == (kits.ca / "ca.crt").read_bytes()


def test_server_certificate_covers_its_host_names_and_addresses(kits: Kits) -> None:
    ca, server = _cert(kits.ca / "ca.crt"), _cert(kits.server / "server.crt")
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        chain = PolicyBuilder().store(Store([ca])).build_server_verifier(name).verify(server, [])
        assert chain[-1] == ca


def test_kits_name_the_site_and_the_server(kits: Kits) -> None:
    site = load_site_kit(kits.sites["hospital-a"])
    assert (site.project, site.site_id, site.server_address) == ("fedrad-test", "hospital-a", "localhost:8443")
    server = load_server_kit(kits.server)
    assert server.sites == {"hospital-a", "hospital-b", "hospital-c"} and server.port == 8443
    assert pki.identity(server.cert_pem).role == "server"
    assert pki.identity(load_site_kit(kits.sites["hospital-c"]).cert_pem).role == "site"


def test_add_site_issues_one_kit_and_leaves_the_others_alone(fresh_kits: tuple[Path, Kits]) -> None:
    out, kits = fresh_kits
    before = _digests(out / "sites") | {"ca.crt": _digests(kits.ca)["ca.crt"]}
    kit = add_site(out, "hospital-new")
    after = _digests(out / "sites")
    assert {k: v for k, v in after.items() if not k.startswith("hospital-new/")} == {
        k: v for k, v in before.items() if k != "ca.crt"
    }
    assert _digests(kits.ca)["ca.crt"] == before["ca.crt"]
    assert load_site_kit(kit).site_id == "hospital-new"
    _cert(kit / "site.crt").verify_directly_issued_by(_cert(kits.ca / "ca.crt"))
    assert "hospital-new" in load_server_kit(kits.server).sites
    assert "hospital-new" in json.loads((out / "project.json").read_text())["sites"]
    with pytest.raises(ProvisionError, match="hospital-new"):
        add_site(out, "hospital-new")


def test_revoked_site_is_listed_in_the_signed_crl(fresh_kits: tuple[Path, Kits]) -> None:
    out, kits = fresh_kits
    assert revoked_sites(out) == []
    revoke_site(out, "hospital-b")
    assert revoked_sites(out) == ["hospital-b"]
    serial = _cert(kits.sites["hospital-b"] / "site.crt").serial_number
    server = load_server_kit(kits.server)
    assert serial in pki.revoked_serials(server.crl_path.read_bytes(), server.ca_pem, "crl")
    with pytest.raises(ProvisionError, match="hospital-z"):
        revoke_site(out, "hospital-z")


def test_a_crl_from_another_ca_is_refused(kits: Kits, rogue_kits: Kits) -> None:
    rogue_crl = (rogue_kits.ca / "crl.pem").read_bytes()
    with pytest.raises(ValueError, match="not signed by this project's CA"):
        pki.revoked_serials(rogue_crl, (kits.ca / "ca.crt").read_bytes(), "rogue.pem")


def test_provision_refuses_to_overwrite(fresh_kits: tuple[Path, Kits]) -> None:
    out, _ = fresh_kits
    with pytest.raises(ProvisionError, match="already provisioned"):
        provision(ProjectSpec(name="again"), out)


def test_load_project_reads_a_yaml(tmp_path: Path) -> None:
    path = tmp_path / "project.yaml"
    path.write_text("name: lung\nserver: {hosts: [fl.example.org, 10.0.0.5], port: 9000}\nsites: [a, b]\n")
    project = load_project(path)
    assert project.server.hosts == ("fl.example.org", "10.0.0.5")
    assert project.server.address == "fl.example.org:9000" and project.sites == ("a", "b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: p\nsites: [a]\nsitez: [b]\n", "key 'sitez': unknown key"),
        ("name: p\nserver: {port: 70000}\n", "key 'server.port'"),
        ("name: p\nsites: [a, a]\n", "key 'sites'"),
        ("name: p\nsites: ['bad name']\n", "key 'sites'"),
        ("sites: [a]\n", "key 'name'"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_project_errors_name_the_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "project.yaml"
    path.write_text(text)
    with pytest.raises(ProvisionError) as error:
        load_project(path)
    message = str(error.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message
