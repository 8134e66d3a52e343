"""Label tables: a CSV mapping a key (file name, SOPInstanceUID ...) to a class, maybe a split and a spacing.

A missing file or column stops the site (nothing can be labelled); a bad row is only skipped.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from fedrad.data.readers.common import Skipped, parse_split


@dataclass(frozen=True)
class LabelRow:
    label: int
    split: str | None  # canonical "train" / "val" / "test" where the table has a split column
    spacing: tuple[float, float] | None = None  # (row, column) mm, where the table has a spacing column


def parse_label(text: str) -> int:
    """'1', ' 2 ', '1.0' -> int; anything else (empty, 'abc', '0.5') raises ValueError."""
    value = float(text)  # raises on '' and words
    if not value.is_integer() or value < 0:
        raise ValueError(f"label {text!r} is not a non-negative integer")
    return int(value)


def parse_spacing(text: str) -> tuple[float, float] | None:
    """'0.5' -> (0.5, 0.5); '0.5\\0.6', '0.5 0.6' or '0.5x0.6' -> (row, column); '' -> None; else ValueError."""
    parts = [p for p in re.split(r"[\\\sx;]+", text.strip()) if p]
    if not parts:
        return None
    values = [float(p) for p in parts]  # raises on words
    if len(values) > 2 or not all(0 < v < float("inf") for v in values):
        raise ValueError(f"spacing {text!r} is not one or two positive numbers (mm)")
    return (values[0], values[-1])


def open_table(path: Path, required: list[str]) -> tuple[list[str], list[dict[str, str]], list[int]]:
    """Columns, rows and each row's line number of a CSV, after checking it has `required` columns."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: CSVs saved by Excel
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            missing = [c for c in required if c not in columns]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; columns are {columns}")
            rows, lines = [], []
            for row in reader:
                rows.append(row)
                lines.append(reader.line_num)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read CSV: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: not a readable CSV: {exc}") from exc
    return list(columns), rows, lines


def read_label_table(
    path: Path,
    key_column: str,
    label_column: str,
    split_column: str | None = None,
    spacing_column: str | None = None,
) -> tuple[dict[str, LabelRow], list[Skipped]]:
    """key -> LabelRow, and the rows skipped (unreadable label, split or spacing, empty or duplicate key)."""
    required = [key_column, label_column] + [c for c in (split_column, spacing_column) if c]
    _, rows, lines = open_table(path, required)
    table: dict[str, LabelRow] = {}
    skipped: list[Skipped] = []
    for row, line in zip(rows, lines, strict=True):
        where = f"{path} line {line}"
        key = (row.get(key_column) or "").strip()
        if not key:
            skipped.append(Skipped(where, f"empty {key_column!r}"))
            continue
        if key in table:
            skipped.append(Skipped(where, f"duplicate key {key!r} (the first row is used)"))
            continue
        try:
            label = parse_label(row.get(label_column) or "")
        except ValueError:
            skipped.append(Skipped(where, f"unreadable label {row.get(label_column)!r} for {key!r}"))
            continue
        split = None
        if split_column:
            split = parse_split(row.get(split_column) or "")
            if split is None:
                skipped.append(Skipped(where, f"unknown split {row.get(split_column)!r} for {key!r}"))
                continue
        try:
            spacing = parse_spacing(row.get(spacing_column) or "") if spacing_column else None
        except ValueError:
            skipped.append(Skipped(where, f"unreadable spacing {row.get(spacing_column)!r} for {key!r}"))
            continue
        table[key] = LabelRow(label, split, spacing)
    return table, skipped
