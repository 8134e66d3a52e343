"""The project's own small PKI: a CA, leaf certificates for the server and the sites, and a CRL.

Keys are EC P-256. A leaf names its role in the subject's OU ("server", "site" or "admin") and its
name in the CN and a DNS SAN, so the server can tell a site certificate from any other one the CA
signed. Only `cryptography` is used here; gRPC never sees this module, only the PEM files it writes.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("server", "site", "admin")


@dataclass(frozen=True)
class Identity:
    """Who a certificate speaks for: its CN, its role (subject OU) and its serial number."""

    name: str
    role: str
    serial: int


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_ca(project: str, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign leaves only (path length 0)."""
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, project),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{project} CA"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))  # tolerate small clock skew between machines
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    name: str,
    role: str,
    days: int,
    hosts: tuple[str, ...] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf certificate for `name` in `role`; a server's `hosts` become DNS or IP SANs."""
    if role not in ROLES:
        raise ValueError(f"unknown certificate role {role!r}; expected one of {ROLES}")
    key = new_key()
    org = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(org)),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    sans = [_san(host) for host in hosts] if role == "server" else [x509.DNSName(name)]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(min(_now() + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def make_crl(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, serials: list[int], days: int
) -> x509.CertificateRevocationList:
    """A CRL signed by the CA listing `serials` (an empty one is written at provisioning time)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(_now())
        .next_update(_now() + dt.timedelta(days=days))
    )
    for serial in serials:
        revoked = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(_now()).build()
        builder = builder.add_revoked_certificate(revoked)
    return builder.sign(ca_key, hashes.SHA256())


def revoked_serials(crl_pem: bytes, ca_pem: bytes, source: str) -> frozenset[int]:
    """The serials a CRL lists, after checking that the project's CA signed it."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError as exc:
        raise ValueError(f"{source}: not a PEM certificate revocation list: {exc}") from exc
    ca = x509.load_pem_x509_certificate(ca_pem)
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        raise ValueError(f"{source}: revocation list is not signed by this project's CA")
    return frozenset(entry.serial_number for entry in crl)


@lru_cache(maxsize=256)
def identity(cert_pem: bytes) -> Identity:
    """The name, role and serial of a PEM certificate (cached: the server asks on every call)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return Identity(str(cn[0].value) if cn else "", str(ou[0].value) if ou else "", cert.serial_number)


def check_site_cert(cert_pem: bytes, ca_pem: bytes, site_id: str, source: str, now: dt.datetime | None = None) -> None:
    """ValueError, naming `source`, if the server would refuse this site certificate at the handshake.

    What a client can check of its own kit before it dials: 1) the certificate is valid now (not
    expired, not yet valid); 2) the kit's CA signed it (a kit whose ca.crt is another project's is
    refused by this project's server); 3) its CN is the kit's site id (the name the server admits).
    The server sees none of this as anything but a TLS failure, so the client says it first.
    """
    try:
        cert, ca = x509.load_pem_x509_certificate(cert_pem), x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise ValueError(f"{source}: not a PEM certificate (or its ca.crt is not): {exc}") from exc
    now = now or _now()
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        raise ValueError(f"{source}: not valid before {start:%Y-%m-%d %H:%M} UTC (is this machine's clock right?)")
    if now > end:
        raise ValueError(f"{source}: expired on {end:%Y-%m-%d %H:%M} UTC")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        issuer, authority = cert.issuer.rfc4514_string(), ca.subject.rfc4514_string()
        raise ValueError(f"{source}: not signed by the kit's ca.crt ({authority}): issued by {issuer}") from None
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(cn[0].value) if cn else ""
    if name != site_id:
        raise ValueError(f"{source}: its CN is {name!r}, but the kit's kit.json names site {site_id!r}")


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted on purpose: a site's client starts unattended; the file's 0600 mode protects it.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: expected an EC private key")
    return key


def write_private(path: Path, data: bytes) -> None:
    """Write a secret so that only its owner can read it (mode 0600 from the first byte on)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
