"""Kits as the running server and clients read them: a folder of PEM files and a kit.json.

A site kit (`sites/<name>/`) holds `site.crt`, `site.key` (mode 0600), `ca.crt` and a kit.json
naming the site and the server address. The server kit (`server/`) holds `server.crt`,
`server.key`, `ca.crt`, `crl.pem` and a kit.json with its hosts, port and allowed sites.
`fedrad.pki.provision` writes them; nothing here needs the CA's private key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

KIT_FILE = "kit.json"
CA_CERT = "ca.crt"
CRL_FILE = "crl.pem"


class KitError(ValueError):
    """A kit folder that cannot be used; the message names the file and, where known, the key."""


@dataclass(frozen=True)
class SiteKit:
    """What a hospital's client needs: its identity, its key pair, the CA and where the server is."""

    project: str
    site_id: str
    server_address: str  # host:port the client dials; its host must be one of the server cert's SANs
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes


@dataclass(frozen=True)
class ServerKit:
    """What the server needs: its key pair, the CA, the revocation list and the allowed sites."""

    project: str
    hosts: tuple[str, ...]
    port: int
    sites: frozenset[str]  # the only certificate CNs allowed to ask for work
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    crl_path: Path  # re-read by the server when it changes, so a revocation needs no restart


def read_kit_meta(folder: Path, role: str) -> dict:
    """The kit.json of `folder`, checked to be a mapping for `role`."""
    path = Path(folder) / KIT_FILE
    try:
        meta = json.loads(path.read_text())
    except OSError as exc:
        raise KitError(f"{path}: cannot read: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise KitError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise KitError(f"{path}: the top level must be a mapping")
    if meta.get("role") != role:
        raise KitError(f"{path}: key 'role': expected {role!r}, got {meta.get('role')!r}")
    return meta


def load_site_kit(folder: str | Path) -> SiteKit:
    folder = Path(folder)
    meta = read_kit_meta(folder, "site")
    return SiteKit(
        project=_field(meta, "project", str, folder),
        site_id=_field(meta, "site_id", str, folder),
        server_address=_field(meta, "server", str, folder),
        cert_pem=_read(folder / "site.crt"),
        key_pem=_read(folder / "site.key"),
        ca_pem=_read(folder / CA_CERT),
    )


def load_server_kit(folder: str | Path) -> ServerKit:
    folder = Path(folder)
    meta = read_kit_meta(folder, "server")
    hosts, sites = _field(meta, "hosts", list, folder), _field(meta, "sites", list, folder)
    crl_path = folder / CRL_FILE
    _read(crl_path)  # fail now, not at the first connection
    return ServerKit(
        project=_field(meta, "project", str, folder),
        hosts=tuple(str(host) for host in hosts),
        port=_field(meta, "port", int, folder),
        sites=frozenset(str(site) for site in sites),
        cert_pem=_read(folder / "server.crt"),
        key_pem=_read(folder / "server.key"),
        ca_pem=_read(folder / CA_CERT),
        crl_path=crl_path,
    )


def _field(meta: dict, key: str, kind: type, folder: Path):
    value = meta.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise KitError(f"{folder / KIT_FILE}: key '{key}': expected {kind.__name__}, got {value!r}")
    return value


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KitError(f"{path}: cannot read: {exc.strerror}") from exc
