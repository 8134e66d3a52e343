"""Who may talk to the server: the checks on a client certificate after the TLS handshake.

The handshake (gRPC with require_client_auth) already refuses a certificate the project's CA did
not sign. The Gatekeeper adds what TLS cannot know: the certificate is not revoked (the CA-signed
CRL, re-read when its file changes, so revoking needs no restart), it is a site certificate whose
CN is one of the allowed sites, and the site the client claims to be is that CN.

The CRL lists serials, and the server kit does not record which serial is whose; so the
Gatekeeper learns each site's serial from the certificate it was admitted with, and a site whose
serial the CRL lists later is known to be revoked before it calls again (`revoked_sites`). A site
revoked before it ever called is known only once it calls, and is refused then.
"""

from __future__ import annotations

from pathlib import Path

from fedrad.pki import certs as pki
from fedrad.pki.kits import ServerKit


class Refused(Exception):
    """A caller the server will not serve; `transient` when the fault is the server's own."""

    def __init__(self, name: str, reason: str, transient: bool = False):
        super().__init__(reason)
        self.name, self.reason, self.transient = name, reason, transient


class Gatekeeper:
    def __init__(self, kit: ServerKit):
        self.project, self.sites = kit.project, kit.sites
        self.revocations = Revocations(kit.crl_path, kit.ca_pem)
        self._serials: dict[str, int] = {}  # site -> the serial of the certificate it was last admitted with

    def admit(self, cert_pem: bytes | None, claimed: str | None) -> str:
        """The site a caller speaks for, or Refused; `claimed=None` when the call names no site."""
        if not cert_pem:
            raise Refused("", "no client certificate")
        who = pki.identity(cert_pem)
        try:
            revoked = self.revocations.serials()
        except (OSError, ValueError) as exc:  # fail closed, as a fault the client may retry
            raise Refused(who.name, f"the server cannot read its revocation list: {exc}", transient=True) from exc
        if who.serial in revoked:
            raise Refused(who.name, f"the certificate of {who.name!r} (serial {who.serial:x}) is revoked")
        if who.role != "site" or who.name not in self.sites:
            raise Refused(who.name, f"certificate CN {who.name!r} is not a site of project {self.project}")
        if claimed is not None and claimed != who.name:
            raise Refused(who.name, f"the certificate of site {who.name!r} cannot speak for site {claimed!r}")
        self._serials[who.name] = who.serial
        return who.name

    def revoked_sites(self) -> dict[str, str]:
        """Each site whose last admitted certificate the CRL now lists, with the refusal it would get."""
        try:
            revoked = self.revocations.serials()
        except (OSError, ValueError):  # unreadable now: admit() refuses every call, as a transient fault
            return {}
        return {
            site: f"the certificate of {site!r} (serial {serial:x}) is revoked"
            for site, serial in list(self._serials.items())
            if serial in revoked
        }


class Revocations:
    """The CRL's revoked serials, re-read whenever the file changes."""

    def __init__(self, path: Path, ca_pem: bytes):
        self.path, self.ca_pem = Path(path), ca_pem
        self._stamp: tuple[int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self.serials()  # a missing or forged CRL stops the server at start, not at the first call

    def serials(self) -> frozenset[int]:
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._serials = pki.revoked_serials(self.path.read_bytes(), self.ca_pem, str(self.path))
            self._stamp = stamp
        return self._serials
