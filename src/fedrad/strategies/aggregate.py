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


# Robust aggregation (strategies/robust.py wraps an averaging strategy with these). Each takes every
# update of the round at once: a robust statistic needs them all, there is no running sum. One site,
# one vote: the example counts do not weight the median, the trimmed mean or Krum's choice, so a site
# cannot buy influence over a robust statistic by claiming more examples (the validator bounds the
# claim by the site's declared count, but that count is the site's own word). They weight only what
# is a mean again: Multi-Krum's average of the chosen updates and the norm-bounded mean.
# Integer entries (BatchNorm's num_batches_tracked): the lower median of the sites' values (an actual
# site's count, robust to one absurd value), Krum: the chosen site's, the means: the rounded weighted mean.


def _robust_names(updates: Sequence[tuple[Weights, float]], what: str) -> list[str]:
    """The entries every update carries (the first update's names), after checking they agree in name and shape."""
    if not updates:
        raise ValueError(f"{what} needs at least one update")
    first = updates[0][0]
    for weights, _ in updates[1:]:
        if set(weights) != set(first):
            differ = sorted(set(weights) ^ set(first))[:5]
            raise ValueError(f"{what}: update names differ from the first update's: {differ}")
        for name, array in weights.items():
            if np.shape(array) != np.shape(first[name]):
                raise ValueError(f"{what}: entry {name!r} has shape {np.shape(array)}, the first update's "
                                 f"{np.shape(first[name])}")  # fmt: skip
    return list(first)


def _stack(updates: Sequence[tuple[Weights, float]], name: str) -> np.ndarray:
    return np.stack([np.asarray(weights[name]) for weights, _ in updates])


def _lower_median(stack: np.ndarray) -> np.ndarray:
    """The coordinate-wise lower median along axis 0: always one of the values given (integers stay integers)."""
    return np.sort(stack, axis=0)[(len(stack) - 1) // 2]


def median(updates: Sequence[tuple[Weights, float]]) -> Weights:
    """The coordinate-wise median of the updates (Yin et al. 2018), entry by entry, unweighted.

    Float entries: numpy's median (the mean of the two middle values for an even count), computed in
    at least float32 and returned in each entry's dtype; integer entries: the lower median.
    Memory: besides the updates, one stacked copy of the largest entry (n x its size).
    """
    out: Weights = {}
    for name in _robust_names(updates, "median"):
        stack = _stack(updates, name)
        if stack.dtype.kind != "f":
            out[name] = _lower_median(stack)
            continue
        work = stack.astype(np.promote_types(stack.dtype, np.float32), copy=False)
        out[name] = np.median(work, axis=0).astype(stack.dtype)
    return out


def trimmed_mean(updates: Sequence[tuple[Weights, float]], beta: float) -> Weights:
    """The coordinate-wise beta-trimmed mean (Yin et al. 2018): at every coordinate the k = floor(beta * n)
    largest and k smallest of the n values are dropped and the rest averaged (unweighted, in float64).

    beta in [0, 0.5): at least one value is always left (0 is the plain mean of the values, unweighted).
    Integer entries: the lower median.
    """
    if not 0 <= beta < 0.5:
        raise ValueError(f"trimmed_mean: beta must be in [0, 0.5), got {beta}")
    names = _robust_names(updates, "trimmed_mean")
    n = len(updates)
    k = int(np.floor(beta * n))
    out: Weights = {}
    for name in names:
        stack = _stack(updates, name)
        if stack.dtype.kind != "f":
            out[name] = _lower_median(stack)
            continue
        kept = np.sort(stack, axis=0)[k : n - k]
        out[name] = kept.astype(np.float64).mean(axis=0).astype(stack.dtype)
    return out


def float_names(weights: Weights) -> list[str]:
    """The floating-point entries: what Krum's distances and the update norms are taken over."""
    return [name for name, array in weights.items() if np.asarray(array).dtype.kind == "f"]


def pairwise_sq_distances(updates: Sequence[tuple[Weights, float]]) -> np.ndarray:
    """The (n, n) squared L2 distances between the updates, over their flattened float entries (float64).

    Accumulated entry by entry from the differences themselves (not from a Gram matrix, whose
    cancellation would break Krum's ties at random), so the memory beyond the updates is one stacked
    entry in float64 and its differences to one update.
    """
    names = float_names(updates[0][0])
    n = len(updates)
    distances = np.zeros((n, n))
    for name in names:
        stack = _stack(updates, name).reshape(n, -1).astype(np.float64)
        for i in range(n - 1):
            delta = stack[i + 1 :] - stack[i]
            distances[i, i + 1 :] += np.einsum("ij,ij->i", delta, delta)
    return distances + distances.T


def krum_scores(updates: Sequence[tuple[Weights, float]], f: int) -> np.ndarray:
    """Each update's Krum score (Blanchard et al. 2017): the sum of its squared distances to its n - f - 2
    nearest other updates. Needs n > 2f + 2 updates (ValueError, one line, otherwise)."""
    n = len(updates)
    if f < 0:
        raise ValueError(f"krum: f must be at least 0, got {f}")
    if n <= 2 * f + 2:
        raise ValueError(f"krum with f={f} needs more than 2f+2 = {2 * f + 2} updates, got {n}")
    _robust_names(updates, "krum")
    distances = pairwise_sq_distances(updates)
    neighbours = n - f - 2
    others = np.sort(distances + np.diag(np.full(n, np.inf)), axis=1)[:, :neighbours]  # itself excluded
    return others.sum(axis=1)


def krum_select(updates: Sequence[tuple[Weights, float]], f: int, m: int = 1) -> list[int]:
    """The indices of the m updates with the lowest Krum scores, best first (ties: the lower index)."""
    scores = krum_scores(updates, f)
    if not 1 <= m <= len(updates):
        raise ValueError(f"multi_krum: m must be between 1 and the {len(updates)} updates, got {m}")
    return [int(i) for i in np.argsort(scores, kind="stable")[:m]]


def krum(updates: Sequence[tuple[Weights, float]], f: int) -> Weights:
    """Krum (Blanchard et al. 2017): the one update with the lowest score (see `krum_scores`), copied."""
    chosen = updates[krum_select(updates, f, 1)[0]][0]
    return {name: np.array(array, copy=True) for name, array in chosen.items()}


def multi_krum(updates: Sequence[tuple[Weights, float]], f: int, m: int | None = None) -> Weights:
    """Multi-Krum (El Mhamdi et al. 2018): the sample-weighted mean (pooled BatchNorm variance, as FedAvg's)
    of the m updates with the lowest Krum scores, the scores computed once; m = None: n - f."""
    m = len(updates) - f if m is None else m
    chosen = krum_select(updates, f, m)
    return weighted_mean([updates[i] for i in chosen], pool_batchnorm=True)


def update_norms(updates: Sequence[tuple[Weights, float]], start: Weights) -> list[float]:
    """Each update's L2 distance from `start` over its float entries (float64)."""
    norms = []
    for weights, _ in updates:
        total = 0.0
        for name in float_names(weights):
            delta = np.asarray(weights[name], np.float64) - np.asarray(start[name], np.float64)
            total += float(np.sum(delta * delta))
        norms.append(float(np.sqrt(total)))
    return norms


def clipped(weights: Weights, start: Weights, bound: float, norm: float) -> Weights:
    """`weights` moved towards `start` so that its float entries' distance from it is at most `bound`:
    start + (weights - start) * min(1, bound / norm), `norm` being that distance; integer entries as given."""
    factor = min(1.0, bound / norm) if norm > 0 else 1.0
    if factor == 1.0:
        return dict(weights)
    out = dict(weights)
    for name in float_names(weights):
        base = np.asarray(start[name], np.float64)
        out[name] = (base + (np.asarray(weights[name], np.float64) - base) * factor).astype(weights[name].dtype)
    return out


def norm_bounded_mean(
    updates: Sequence[tuple[Weights, float]], start: Weights, bound: float | None = None
) -> tuple[Weights, float]:
    """Norm bounding (Sun et al. 2019): each update's distance from `start` (the model sent) clipped to
    `bound`, then the sample-weighted mean (pooled BatchNorm variance, as FedAvg's). bound = None: the
    median of this round's update norms, so at most half the updates are shortened. Returns (mean, bound).

    A clipped running variance stays a convex combination of two variances, so it stays non-negative.
    """
    _robust_names(updates, "norm_bounded_mean")
    missing = [name for name in float_names(updates[0][0]) if name not in start]
    if missing:
        raise ValueError(f"norm_bounded_mean: entries not in the model sent: {missing[:5]}")
    norms = update_norms(updates, start)
    bound = float(np.median(norms)) if bound is None else float(bound)
    if not bound >= 0:
        raise ValueError(f"norm_bounded_mean: the bound must be non-negative, got {bound}")
    return weighted_mean(
        [(clipped(w, start, bound, norm), n) for (w, n), norm in zip(updates, norms, strict=True)], pool_batchnorm=True
    ), bound
