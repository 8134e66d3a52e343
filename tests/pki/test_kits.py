from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedrad.pki.kits import KitError, load_server_kit, load_site_kit
from fedrad.pki.provision import Kits


def _copy(kit: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(kit, tmp_path / kit.name))


def test_a_site_kit_is_not_a_server_kit(kits: Kits) -> None:
    with pytest.raises(KitError, match="key 'role': expected 'server', got 'site'"):
        load_server_kit(kits.sites["hospital-a"])


def test_a_bad_kit_json_names_the_file_and_key(kits: Kits, tmp_path: Path) -> None:
    kit = _copy(kits.sites["hospital-a"], tmp_path)
    meta = json.loads((kit / "kit.json").read_text())
    (kit / "kit.json").write_text(json.dumps(meta | {"server": 8443}))
    with pytest.raises(KitError) as error:
        load_site_kit(kit)
    assert str(error.value) == f"{kit / 'kit.json'}: key 'server': expected str, got 8443"


def test_a_missing_key_file_is_named(kits: Kits, tmp_path: Path) -> None:
    kit = _copy(kits.server, tmp_path)
    (kit / "server.key").unlink()
    with pytest.raises(KitError, match="server.key: cannot read"):
        load_server_kit(kit)
