"""Shared fixtures: provisioned projects (EC keys make this take milliseconds) for the transport tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrad.pki.provision import Kits, ProjectSpec, provision

SITES = ("hospital-a", "hospital-b", "hospital-c")


@pytest.fixture(scope="session")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Kits:
    """A project with three sites and an admin; tests must not revoke in it (see `fresh_kits`)."""
    spec = ProjectSpec(name="fedrad-test", sites=SITES, admin="alice@example.org")
    return provision(spec, tmp_path_factory.mktemp("project") / "out")


@pytest.fixture(scope="session")
def rogue_kits(tmp_path_factory: pytest.TempPathFactory) -> Kits:
    """Another project, with its own CA, that names a site like the real one."""
    spec = ProjectSpec(name="rogue", sites=("hospital-a",))
    return provision(spec, tmp_path_factory.mktemp("rogue") / "out")


@pytest.fixture
def fresh_kits(tmp_path: Path) -> tuple[Path, Kits]:
    out = tmp_path / "out"
    return out, provision(ProjectSpec(name="fresh", sites=SITES[:2]), out)
