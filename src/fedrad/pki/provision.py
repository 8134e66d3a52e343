"""`fedrad provision`: a project CA, a server kit and one kit per site, from a project.yaml.

Example project.yaml:
    name: lung-nodules
    server: {hosts: [fl.example.org, 10.0.0.5], port: 8443}
    sites: [hospital-a, hospital-b]
    admin: alice@example.org   # optional: a client certificate for the project's admin

Layout written under `out`:
    project.json        the resolved spec (add_site and revoke_site read it)
    ca/                 ca.crt, ca.key (0600), crl.pem, issued.json: stays with the project admin
    server/             server.crt, server.key (0600), ca.crt, crl.pem, kit.json
    sites/<name>/       site.crt, site.key (0600), ca.crt, kit.json: one folder to give each hospital
    admin/              admin.crt, admin.key (0600), ca.crt, kit.json (only with `admin`)
The CA's private key never leaves `ca/`.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedrad.pki import certs as pki
from fedrad.pki.kits import CA_CERT, CRL_FILE, KIT_FILE, read_kit_meta
from fedrad.yamlfile import read_yaml_mapping

Key = ec.EllipticCurvePrivateKey
Cert = x509.Certificate
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # fits a certificate CN (64 characters at most)


class ProvisionError(ValueError):
    """A project that cannot be provisioned; one line naming the file, the key or the site."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSpec(_Strict):
    hosts: tuple[str, ...] = Field(("localhost", "127.0.0.1"), min_length=1)  # DNS names or IPs: the SANs
    port: int = Field(8443, ge=1, le=65535)

    @property
    def address(self) -> str:
        """What a site dials: the first host (bracketed if it is an IPv6 address) and the port."""
        host = self.hosts[0]
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


class ProjectSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    server: ServerSpec = ServerSpec()
    sites: tuple[str, ...] = ()
    admin: str | None = Field(None, min_length=1, max_length=64)  # CN of the admin's client certificate
    ca_days: int = Field(3650, ge=1)
    cert_days: int = Field(825, ge=1)  # leaves; never beyond the CA's own expiry

    @field_validator("sites")
    @classmethod
    def _unique_names(cls, sites: tuple[str, ...]) -> tuple[str, ...]:
        for site in sites:
            _check_site_name(site)
        duplicates = sorted({site for site in sites if sites.count(site) > 1})
        if duplicates:
            raise ValueError(f"site names must be unique, repeated: {duplicates}")
        return sites


@dataclass(frozen=True)
class Kits:
    """Where `provision` put everything."""

    ca: Path
    server: Path
    sites: dict[str, Path]
    admin: Path | None


def ca_dir(out: Path) -> Path:
    return Path(out) / "ca"


def server_kit_dir(out: Path) -> Path:
    return Path(out) / "server"


def site_kit_dir(out: Path, site_name: str) -> Path:
    return Path(out) / "sites" / site_name


def load_project(path: str | Path) -> ProjectSpec:
    """Read and validate a project.yaml; raise ProvisionError naming the file and the key."""
    path = Path(path)
    raw = read_yaml_mapping(path, ProvisionError)
    try:
        return ProjectSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more)" if more else ""
        raise ProvisionError(f"{path}: key '{key}': {message}{suffix}") from exc


def provision(project: ProjectSpec, out: str | Path) -> Kits:
    """Create the CA, the server kit, one kit per site (and the admin's); refuse to overwrite."""
    out = Path(out)
    if (out / "project.json").exists() or ca_dir(out).exists():
        raise ProvisionError(f"{out}: already provisioned; use add_site to issue one more kit")
    # 1) the CA, its (empty) revocation list and the registry of issued serials
    ca = _mkdir(ca_dir(out))
    ca_key, ca_cert = pki.make_ca(project.name, project.ca_days)
    pki.write_private(ca / "ca.key", pki.key_pem(ca_key))
    (ca / CA_CERT).write_bytes(pki.cert_pem(ca_cert))
    (ca / CRL_FILE).write_bytes(pki.cert_pem(pki.make_crl(ca_key, ca_cert, [], project.ca_days)))
    registry: dict[str, dict] = {"server": {}, "sites": {}, "admin": {}}
    # 2) the server, with a SAN for each of its host names and addresses
    key, cert = pki.issue(ca_key, ca_cert, "server", "server", project.cert_days, project.server.hosts)
    meta = {"hosts": list(project.server.hosts), "port": project.server.port, "sites": list(project.sites)}
    server = _write_kit(server_kit_dir(out), "server", project.name, key, cert, ca_cert, meta)
    shutil.copyfile(ca / CRL_FILE, server / CRL_FILE)
    registry["server"]["server"] = _entry(cert)
    # 3) one kit per site, and the admin's
    sites = {}
    for site in project.sites:
        key, cert = pki.issue(ca_key, ca_cert, site, "site", project.cert_days)
        sites[site] = _write_site_kit(out, project, key, cert, ca_cert)
        registry["sites"][site] = _entry(cert)
    admin = None
    if project.admin is not None:
        key, cert = pki.issue(ca_key, ca_cert, project.admin, "admin", project.cert_days)
        meta = {"admin": project.admin, "server": project.server.address}
        admin = _write_kit(out / "admin", "admin", project.name, key, cert, ca_cert, meta)
        registry["admin"][project.admin] = _entry(cert)
    _write_json(ca / "issued.json", registry)
    _write_json(out / "project.json", project.model_dump(mode="json"))
    return Kits(ca=ca, server=server_kit_dir(out), sites=sites, admin=admin)


def add_site(out: str | Path, site_name: str) -> Path:
    """Issue a kit for one more site; the other kits and the CA stay byte for byte as they were."""
    out = Path(out)
    project = _read_project(out)
    try:
        project = ProjectSpec.model_validate(project.model_dump() | {"sites": (*project.sites, site_name)})
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        where = out / "project.json"
        raise ProvisionError(f"{where}: key 'sites': cannot add {site_name!r}: {reason}") from exc
    if site_kit_dir(out, site_name).exists():
        raise ProvisionError(f"site {site_name!r}: {site_kit_dir(out, site_name)} already exists")
    ca_key, ca_cert = _read_ca(out)
    key, cert = pki.issue(ca_key, ca_cert, site_name, "site", project.cert_days)
    kit = _write_site_kit(out, project, key, cert, ca_cert)
    registry = _read_registry(out)
    registry["sites"][site_name] = _entry(cert)
    _write_json(ca_dir(out) / "issued.json", registry)
    _write_json(out / "project.json", project.model_dump(mode="json"))
    server = server_kit_dir(out)
    if (server / KIT_FILE).exists():  # the server must learn the new name (copy its kit.json over)
        meta = read_kit_meta(server, "server")
        _write_json(server / KIT_FILE, meta | {"sites": [*meta["sites"], site_name]})
    return kit


def revoke_site(out: str | Path, site_name: str) -> Path:
    """Add a site's certificate to the CA-signed CRL; returns the CRL path (copy it to the server)."""
    out = Path(out)
    project = _read_project(out)
    registry = _read_registry(out)
    if site_name not in registry["sites"]:
        raise ProvisionError(f"site {site_name!r}: no certificate was issued to it in {out}")
    registry["sites"][site_name]["revoked"] = True
    serials = [int(entry["serial"]) for entry in registry["sites"].values() if entry["revoked"]]
    ca_key, ca_cert = _read_ca(out)
    crl = pki.cert_pem(pki.make_crl(ca_key, ca_cert, serials, project.ca_days))
    (ca_dir(out) / CRL_FILE).write_bytes(crl)
    if server_kit_dir(out).exists():
        (server_kit_dir(out) / CRL_FILE).write_bytes(crl)
    _write_json(ca_dir(out) / "issued.json", registry)
    return ca_dir(out) / CRL_FILE


def revoked_sites(out: str | Path) -> list[str]:
    """The sites whose certificates the project's CRL lists (checked against the CRL itself)."""
    crl, ca_cert = ca_dir(Path(out)) / CRL_FILE, ca_dir(Path(out)) / CA_CERT
    serials = pki.revoked_serials(crl.read_bytes(), ca_cert.read_bytes(), str(crl))
    sites = _read_registry(Path(out))["sites"]
    return sorted(name for name, entry in sites.items() if int(entry["serial"]) in serials)


def _check_site_name(site: str) -> None:
    if not re.fullmatch(NAME_PATTERN, site):
        raise ValueError(f"site name {site!r} must match {NAME_PATTERN}")


def _write_site_kit(out: Path, project: ProjectSpec, key: Key, cert: Cert, ca_cert: Cert) -> Path:
    name = pki.identity(pki.cert_pem(cert)).name
    meta = {"site_id": name, "server": project.server.address}
    return _write_kit(site_kit_dir(out, name), "site", project.name, key, cert, ca_cert, meta)


def _write_kit(
    folder: Path, role: str, project: str, key: Key, cert: Cert, ca_cert: Cert, meta: dict
) -> Path:
    folder = _mkdir(folder)
    pki.write_private(folder / f"{role}.key", pki.key_pem(key))
    (folder / f"{role}.crt").write_bytes(pki.cert_pem(cert))
    (folder / CA_CERT).write_bytes(pki.cert_pem(ca_cert))
    _write_json(folder / KIT_FILE, {"project": project, "role": role, **meta})
    return folder


def _mkdir(folder: Path) -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=False)
    return folder


def _entry(cert: Cert) -> dict:
    return {"serial": str(cert.serial_number), "revoked": False}  # a string: serials exceed 2**53


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        hint = "is this a provisioned project folder?"
        raise ProvisionError(f"{path}: cannot read ({hint}): {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ProvisionError(f"{path}: not valid JSON: {exc}") from exc


def _read_project(out: Path) -> ProjectSpec:
    try:
        return ProjectSpec.model_validate(_read_json(out / "project.json"))
    except ValidationError as exc:
        raise ProvisionError(f"{out / 'project.json'}: {exc.errors()[0]['msg']}") from exc


def _read_registry(out: Path) -> dict:
    return _read_json(ca_dir(out) / "issued.json")


def _read_ca(out: Path) -> tuple[Key, Cert]:
    ca = ca_dir(out)
    try:
        return pki.load_key(ca / "ca.key"), x509.load_pem_x509_certificate((ca / CA_CERT).read_bytes())
    except OSError as exc:
        hint = "run this where the project's ca/ folder lives"
        raise ProvisionError(f"{ca}: cannot read the CA ({exc.strerror}); {hint}") from exc
