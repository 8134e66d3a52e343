"""The transport tests use the provisioned projects of tests/pki/conftest.py."""

from tests.pki.conftest import SITES, fresh_kits, kits, rogue_kits

__all__ = ["SITES", "fresh_kits", "kits", "rogue_kits"]
