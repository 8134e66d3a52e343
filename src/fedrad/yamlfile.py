"""Read a YAML file whose top level must be a mapping, with one-line errors naming the file.

Shared by the job config, the site data YAML and the project YAML; imports nothing of fedrad, so
every layer may use it.
"""

from __future__ import annotations

from pathlib import Path

import yaml


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently,
    so a second `train:` would replace the first without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(
    path: Path, error: type[Exception], mapping_hint: str | None = None
) -> dict:
    """The file's top-level mapping; `error` with one line naming the file (and line) otherwise.

    A key given twice in one mapping is refused (`UniqueKeyLoader`), and so is an empty file (it is no
    mapping); `mapping_hint` replaces the default "must be a mapping" text.
    """
    try:
        raw = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise error(f"{path}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(raw, dict):
        hint = mapping_hint or f"must be a mapping of keys, got {type(raw).__name__}"
        raise error(f"{path}: the top level {hint}")
    return raw
