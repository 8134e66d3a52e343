"""Read a YAML file whose top level must be a mapping, with one-line errors naming the file.

Shared by the job config, the site data YAML and the project YAML; imports nothing of fedrad, so
every layer may use it.
"""

from __future__ import annotations

from pathlib import Path

import yaml


def read_yaml_mapping(
    path: Path, error: type[Exception], empty_ok: bool = False, mapping_hint: str | None = None
) -> dict:
    """The file's top-level mapping; `error` with one line naming the file (and line) otherwise.

    `empty_ok` reads an empty file as {}; `mapping_hint` replaces the default "must be a mapping" text.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise error(f"{path}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if raw is None and empty_ok:
        return {}
    if not isinstance(raw, dict):
        hint = mapping_hint or f"must be a mapping of keys, got {type(raw).__name__}"
        raise error(f"{path}: the top level {hint}")
    return raw
