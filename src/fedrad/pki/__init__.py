"""The project's own PKI: certificates (certs.py), provisioning of kits (provision.py), reading kits (kits.py)."""
