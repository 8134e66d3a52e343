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


def batchnorm_names(weights: Weights) -> set[str]:
    """Every entry of a BatchNorm layer (weight, bias, running stats, counter), found by its buffers.

    A layer is BatchNorm when it has a `running_mean`; its other entries share the prefix.
    """
    prefixes = tuple(n[: -len("running_mean")] for n in weights if n.endswith("running_mean"))
    return {n for n in weights if prefixes and n.startswith(prefixes)}


def trainable_names(weights: Weights) -> list[str]:
    """Entries SGD updates: floating-point, and not a BatchNorm running statistic."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return [n for n, a in weights.items() if a.dtype.kind == "f" and not n.endswith(buffers)]


def pseudo_gradient(current: Weights, averaged: Weights, names: Sequence[str]) -> Weights:
    """Delta = x - mean(y_i) (Reddi et al. 2021): the direction a server optimiser descends."""
    return {n: current[n].astype(np.float64) - averaged[n].astype(np.float64) for n in names}


def momentum_step(
    current: Weights, delta: Weights, momentum: Weights, lr: float, beta: float
) -> tuple[Weights, Weights]:
    """FedAvgM (Hsu et al. 2019): m = beta * m + delta; x = x - lr * m. Returns (x, m)."""
    new_m = {n: beta * momentum[n] + d for n, d in delta.items()}
    return {n: (current[n] - lr * new_m[n]).astype(current[n].dtype) for n in delta}, new_m


def adam_step(
    current: Weights, delta: Weights, m: Weights, v: Weights, lr: float, beta1: float, beta2: float, tau: float
) -> tuple[Weights, Weights, Weights]:
    """FedAdam (Reddi et al. 2021, Alg. 2) on the pseudo-gradient: returns (x, m, v).

    m = b1 m + (1 - b1) delta; v = b2 v + (1 - b2) delta^2; x = x - lr * m / (sqrt(v) + tau).
    """
    new_m = {n: beta1 * m[n] + (1 - beta1) * d for n, d in delta.items()}
    new_v = {n: beta2 * v[n] + (1 - beta2) * d**2 for n, d in delta.items()}
    x = {n: (current[n] - lr * new_m[n] / (np.sqrt(new_v[n]) + tau)).astype(current[n].dtype) for n in delta}
    return x, new_m, new_v


def scaffold_control_update(
    control: Weights, deltas: Sequence[Weights], num_sites: int
) -> Weights:
    """SCAFFOLD's server variate (Karimireddy et al. 2020, Alg. 1 line 17): c + |S|/N * mean(delta c_i)."""
    if not deltas:
        return control
    share = len(deltas) / num_sites
    return {
        n: (c + share * np.mean([d[n].astype(np.float64) for d in deltas], axis=0)).astype(c.dtype)
        for n, c in control.items()
    }


def mean_probabilities(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """An ensemble's prediction: the mean of its members' class probabilities (N, C)."""
    return np.mean(np.stack(outputs), axis=0).astype(np.float32)


def majority_vote(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """An ensemble's prediction by vote: each class's share of the members' argmax votes (N, C).

    Ties go to the lower class index (argmax of the shares); the shares serve as scores for AUC.
    """
    stacked = np.stack(outputs)  # (members, N, C)
    votes = np.eye(stacked.shape[2], dtype=np.float32)[stacked.argmax(axis=2)]
    return votes.mean(axis=0)
