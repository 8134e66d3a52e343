"""Aggregation as pure functions over named arrays, each beside its hand-worked test."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrad.types import Weights


def weighted_mean(updates: Sequence[tuple[Weights, float]]) -> Weights:
    """Compute the weighted average of several models, name by name (McMahan et al. 2017, eq. 1).

    Floating-point entries are averaged in float64 and cast back. Integer entries (BatchNorm's
    num_batches_tracked) get the weighted mean rounded to the nearest integer, so every entry
    keeps its dtype and a model can be loaded back unchanged.
    """
    if not updates:
        raise ValueError("weighted_mean needs at least one update")
    total = float(sum(weight for _, weight in updates))
    if total <= 0:
        raise ValueError(f"weights of the average must sum to a positive number, got {total}")
    first = updates[0][0]
    out: Weights = {}
    for name, reference in first.items():
        acc = np.zeros(reference.shape, dtype=np.float64)
        for weights, weight in updates:
            acc += weights[name].astype(np.float64) * (weight / total)
        out[name] = np.rint(acc).astype(reference.dtype) if reference.dtype.kind in "iu" else acc.astype(
            reference.dtype
        )
    return out


def pooled_batchnorm_variance(updates: Sequence[tuple[Weights, float]], averaged: Weights) -> Weights:
    """Replace averaged BatchNorm variances by the variance of the pooled data.

    The mean of the sites' variances misses the spread of their means (scanners shift them), so
    each `X.running_var` whose `X.running_mean` exists becomes, by the law of total variance,
    sum_k w_k * (var_k + mean_k**2) - mean**2, with mean the weighted mean of the means.
    """
    total = float(sum(weight for _, weight in updates))
    out = dict(averaged)
    for name in averaged:
        if not name.endswith("running_var"):
            continue
        mean_name = name[: -len("running_var")] + "running_mean"
        if mean_name not in averaged:
            continue
        second = sum(
            (w[name].astype(np.float64) + w[mean_name].astype(np.float64) ** 2) * (weight / total)
            for w, weight in updates
        )
        pooled = second - averaged[mean_name].astype(np.float64) ** 2
        out[name] = np.maximum(pooled, 0.0).astype(averaged[name].dtype)
    return out
