"""Tabular reader: a CSV of numeric features and a label column -> SiteData with (N, F) inputs.

One CSV may hold several institutions (as FLamby's Fed-Heart-Disease does): `institution_column`
and `institution` keep this site's rows. Features are standardised with the *train* split's mean
and standard deviation only, so nothing about val / test leaks into training.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from fedrad.data.base import Split
from fedrad.data.card import CardRecord
from fedrad.data.readers.common import (
    Sample,
    SiteRead,
    SkipItem,
    Skipped,
    assemble_site,
    parse_split,
)
from fedrad.data.readers.config import TabularSource
from fedrad.data.readers.labels import open_table, parse_label


def feature_names(cfg: TabularSource, columns: list[str]) -> list[str]:
    """The configured feature columns, or every column that is not the label / institution / split."""
    if cfg.feature_columns is not None:
        return list(cfg.feature_columns)
    reserved = {cfg.label_column, cfg.institution_column, cfg.split_column, *cfg.exclude_columns}
    return [c for c in columns if c not in reserved]


def _parse_row(row: dict[str, str], features: list[str], cfg: TabularSource) -> tuple[np.ndarray, int, str | None]:
    values = []
    for name in features:
        text = (row.get(name) or "").strip()
        try:
            value = float(text)
        except ValueError:
            raise SkipItem(f"feature {name!r} is not a number: {text!r}") from None
        if not math.isfinite(value):
            raise SkipItem(f"feature {name!r} is not finite: {text!r}")
        values.append(value)
    try:
        label = parse_label(row.get(cfg.label_column) or "")
    except ValueError:
        raise SkipItem(f"unreadable label {row.get(cfg.label_column)!r}") from None
    split = None
    if cfg.split_column:
        split = parse_split(row.get(cfg.split_column) or "")
        if split is None:
            raise SkipItem(f"unknown split {row.get(cfg.split_column)!r}")
    return np.asarray(values, dtype=np.float32), label, split


def standardise(train: Split, *others: Split) -> list[Split]:
    """(x - mean) / std per feature, with mean and std from `train` (std 0 -> 1: a constant feature)."""
    mean = train.inputs.mean(axis=0) if len(train) else np.zeros(train.inputs.shape[1], np.float32)
    std = train.inputs.std(axis=0) if len(train) else np.ones(train.inputs.shape[1], np.float32)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    return [Split(((s.inputs - mean) / std).astype(np.float32), s.targets) for s in (train, *others)]


def read_tabular(cfg: TabularSource, site_id: str) -> SiteRead:
    """Read this site's rows of a CSV; a row with a missing or non-numeric value is skipped."""
    required = [cfg.label_column] + [c for c in (cfg.institution_column, cfg.split_column) if c]
    columns, rows, lines = open_table(cfg.path, required + list(cfg.feature_columns or []))
    features = feature_names(cfg, columns)
    if not features:
        raise ValueError(f"{cfg.path}: no feature columns (columns are {columns})")
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for row, line in zip(rows, lines, strict=True):
        if cfg.institution_column and (row.get(cfg.institution_column) or "").strip() != cfg.institution:
            continue  # another site's row: not ours to read, not an error
        where = f"{cfg.path} line {line}"
        try:
            x, label, split = _parse_row(row, features, cfg)
        except SkipItem as exc:
            skipped.append(Skipped(where, str(exc)))
            continue
        samples.append(Sample(x, label, where, where, CardRecord(where, label=label), split))
    site_where = f"{cfg.path} (institution {cfg.institution!r})" if cfg.institution else cfg.path
    data, skipped = assemble_site(site_id, samples, skipped, cfg, patient_unit="sample", where=site_where)
    train, val, test = standardise(data.train, data.val, data.test)
    card = {**data.card, "num_features": len(features)}
    return SiteRead(replace(data, train=train, val=val, test=test, card=card), skipped)
