"""Aggregation as pure functions over named arrays, each beside its hand-worked test."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrad.types import Weights


class WeightedSum:
    """A running sample-weighted sum of models, folded one update at a time (McMahan et al. 2017, eq. 1).

    The server never holds more than the sum and the update being folded, however many sites
    reply. Floating-point entries are summed in their own precision (at least float32): float64
    would double the sum's memory, and the relative rounding, about n * 6e-8 for n updates, is far
    below the spread between sites. Integer entries (BatchNorm's num_batches_tracked) are summed in
    float64 and the mean is rounded to the nearest integer, so every entry keeps its dtype.

    With `pool_batchnorm`, each `X.running_var` whose `X.running_mean` exists becomes the variance
    of the pooled data (law of total variance: sum_k w_k (var_k + mean_k**2) - mean**2), because the
    mean of the sites' variances misses the spread of their means (scanners shift them).

    `add(..., owned=True)` says nobody else reads the update's arrays: writable ones are scaled in
    place and the first update's buffers become the sum, so folding allocates nothing.
    """

    def __init__(self, pool_batchnorm: bool = False):
        self.pool_batchnorm = pool_batchnorm
        self.total = 0.0
        self.count = 0
        self._sums: dict[str, np.ndarray] = {}
        self._second: dict[str, np.ndarray] = {}  # running_var name -> sum_k w_k (var_k + mean_k**2), float64
        self._dtypes: dict[str, np.dtype] = {}
        self._finished = False

    def add(self, weights: Weights, weight: float, owned: bool = False) -> None:
        if self._finished:
            raise ValueError("WeightedSum.add() after mean()")
        if not weight >= 0:
            raise ValueError(f"the weight of an update must be non-negative, got {weight}")
        if self._sums and set(weights) != set(self._sums):
            differ = sorted(set(weights) ^ set(self._sums))[:5]
            raise ValueError(f"update names differ from the first update's: {differ}")
        if self.pool_batchnorm:
            for var_name, mean_name in _batchnorm_pairs(weights):
                second = weight * (weights[var_name].astype(np.float64) + weights[mean_name].astype(np.float64) ** 2)
                self._second[var_name] = second + self._second.get(var_name, 0.0)
        for name, array in weights.items():
            self._dtypes.setdefault(name, array.dtype)
            self._fold(name, np.asarray(array), weight, owned)
        self.total += float(weight)
        self.count += 1

    def mean(self) -> Weights:
        """The weighted mean of everything added, each entry in its original dtype.

        Divides the sums in place (no second model-sized buffer): call it once, after the last `add`.
        """
        if self._finished:
            raise ValueError("WeightedSum.mean() was already called")
        if not self.count:
            raise ValueError("weighted mean of no updates")
        if self.total <= 0:
            raise ValueError(f"weights of the average must sum to a positive number, got {self.total}")
        out: Weights = {}
        for name, total in self._sums.items():
            dtype = self._dtypes[name]
            mean = np.divide(total, total.dtype.type(self.total), out=total if total.dtype == dtype else None)
            out[name] = np.asarray(np.rint(mean) if dtype.kind in "iub" else mean).astype(dtype, copy=False)
        for var_name, mean_name in _batchnorm_pairs(out) if self.pool_batchnorm else ():
            mean = out[mean_name].astype(np.float64)
            second = self._second[var_name] / self.total
            out[var_name] = np.maximum(second - mean**2, 0.0).astype(self._dtypes[var_name])
        self._finished = True
        return out

    def _fold(self, name: str, array: np.ndarray, weight: float, owned: bool) -> None:
        total = self._sums.get(name)
        if array.dtype.kind != "f":  # counters: exact in float64
            scaled = array.astype(np.float64) * weight
            self._sums[name] = scaled if total is None else total + scaled
            return
        dtype = np.promote_types(array.dtype, np.float32)
        factor = dtype.type(weight)
        in_place = owned and array.flags.writeable and array.dtype == dtype
        if total is None:
            self._sums[name] = np.multiply(array, factor, out=array if in_place else None, dtype=dtype)
        elif in_place:
            total += np.multiply(array, factor, out=array)
        else:
            total += array.astype(dtype, copy=False) * factor


def _batchnorm_pairs(weights: Weights) -> list[tuple[str, str]]:
    """(running_var, running_mean) names of each BatchNorm layer."""
    pairs = []
    for name in weights:
        if name.endswith("running_var"):
            mean_name = name[: -len("running_var")] + "running_mean"
            if mean_name in weights:
                pairs.append((name, mean_name))
    return pairs


def weighted_mean(updates: Sequence[tuple[Weights, float]], pool_batchnorm: bool = False) -> Weights:
    """The sample-weighted mean of several models, name by name: a WeightedSum folded in order."""
    if not updates:
        raise ValueError("weighted_mean needs at least one update")
    total = WeightedSum(pool_batchnorm)
    for weights, weight in updates:
        total.add(weights, weight)
    return total.mean()


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
    Per-pixel probabilities of one foreground class (segmentation, (N, 1, H, W)): each pixel's
    share of members that call it foreground; above one half is a majority.
    """
    stacked = np.stack(outputs)  # (members, N, C)
    if stacked.ndim != 3:
        return (stacked > 0.5).mean(axis=0).astype(np.float32)
    votes = np.eye(stacked.shape[2], dtype=np.float32)[stacked.argmax(axis=2)]
    return votes.mean(axis=0)
