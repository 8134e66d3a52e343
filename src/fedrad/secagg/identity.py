"""Advertised keys signed with the site's own certificate, so the relaying server cannot substitute them.

Bonawitz et al.'s protection against an active server: each site signs what it advertises (its two
public keys, the digest of its self-mask seed, its example count, the round and its id) with the
ECDSA key of its mTLS certificate, and sends the certificate along. Every other site checks, before
it seals a share for anyone, that each certificate was issued by the project's CA (the one in its
own kit), names that site, is within its validity period, and that its signature verifies. A server
that swaps in keys of its own fails the check at every honest site, which then refuses the round.

Deployed clients always sign and check (`fedrad client` builds an `Identity` from its kit); the
simulator has no PKI and neither signs nor checks (its server is this process).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID

from fedrad.secagg import secagg_pb2 as pb
from fedrad.secagg.crypto import SecAggError

MAX_CERTIFICATE_BYTES = 8192


def signed_bytes(round: int, site_id: str, keys: pb.PublicKeys) -> bytes:
    """What a site signs: the round, its id and every public field of its advertisement, length-prefixed."""
    parts = [b"fedrad secagg keys v1", str(round).encode(), site_id.encode(), keys.cipher, keys.mask,
             keys.seed_digest, keys.num_examples.to_bytes(8, "big")]  # fmt: skip
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


@dataclass(frozen=True)
class Identity:
    """A site's certificate, its private key and the project CA (from its kit)."""

    site_id: str
    cert_pem: bytes
    key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate

    @classmethod
    def from_pem(cls, site_id: str, cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> Identity:
        key = load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"site {site_id}: the kit's key is not an EC key")
        return cls(site_id, cert_pem, key, x509.load_pem_x509_certificate(ca_pem))

    def sign(self, round: int, keys: pb.PublicKeys) -> None:
        """Put this site's certificate and signature on its advertisement `keys`."""
        keys.certificate = self.cert_pem
        keys.signature = self.key.sign(signed_bytes(round, self.site_id, keys), ec.ECDSA(hashes.SHA256()))

    def check(self, round: int, site_id: str, keys: pb.PublicKeys) -> None:
        """SecAggError (one line) unless `keys` are signed by a certificate the project CA issued to `site_id`."""
        what = f"site {self.site_id}: {site_id}'s advertised keys"
        if not keys.certificate or not keys.signature or len(keys.certificate) > MAX_CERTIFICATE_BYTES:
            raise SecAggError(f"{what} carry no certificate and signature (an unsigned key is refused)")
        try:
            cert = x509.load_pem_x509_certificate(keys.certificate)
            cert.verify_directly_issued_by(self.ca)
        except Exception:  # ValueError, TypeError, InvalidSignature: not ours, whatever the cause
            raise SecAggError(f"{what}: the certificate was not issued by this project's CA") from None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [n.value for n in names] != [site_id]:
            raise SecAggError(f"{what}: the certificate names {[n.value for n in names]}, not {site_id!r}")
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise SecAggError(f"{what}: the certificate is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} "
                              f"to {cert.not_valid_after_utc:%Y-%m-%d})")
        public = cert.public_key()
        try:
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise TypeError("not an EC key")
            public.verify(keys.signature, signed_bytes(round, site_id, keys), ec.ECDSA(hashes.SHA256()))
        except Exception:
            raise SecAggError(f"{what}: the signature does not verify (keys substituted in transit?)") from None
