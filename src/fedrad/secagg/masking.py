"""What the site masks and the server unmasks, computed alike at both ends from the model sent.

The masked vector is every floating-point entry the reply carries (the model sent, less the
entries the site keeps), in sorted name order, flattened: entry NAME occupies words
[offset, offset + size) of one vector. Per entry the site uploads

    y = to_fixed(w * c * d) + PRG(b_u) + sum over v in U2, v != u of sign(u, v) * PRG(s_uv)   (mod 2^32)

where d is the update (trained - sent; for a BatchNorm running variance, the change of the second
moment var + mean^2, so that the server recovers the pooled variance as plain FedAvg does), c =
min(1, clip_norm / ||d||) clips it, w = n_u / N is the site's public share of the round's examples,
b_u its self-mask seed, s_uv the key it agrees with v and sign(u, v) = +1 if u < v else -1, so the
pairwise masks cancel in the sum over U2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedrad.secagg import crypto
from fedrad.types import Weights

VAR, MEAN = "running_var", "running_mean"


@dataclass(frozen=True)
class Layout:
    """The masked entries: name -> (offset, shape), in sorted order; `size` words in all."""

    entries: tuple[tuple[str, int, tuple[int, ...]], ...]
    size: int

    @classmethod
    def of(cls, sent: Mapping[str, np.ndarray], keep_local: frozenset[str] = frozenset()) -> Layout:
        entries, offset = [], 0
        for name in sorted(n for n, a in sent.items() if n not in keep_local and np.asarray(a).dtype.kind == "f"):
            shape = tuple(np.shape(sent[name]))
            entries.append((name, offset, shape))
            offset += int(np.prod(shape, dtype=np.int64))
        return cls(tuple(entries), offset)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.entries]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: shape for name, _, shape in self.entries}

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return {name: flat[o : o + int(np.prod(s, dtype=np.int64))].reshape(s) for name, o, s in self.entries}

    def join(self, arrays: Mapping[str, np.ndarray], dtype) -> np.ndarray:
        flat = np.empty(self.size, dtype=dtype)
        for name, offset, shape in self.entries:
            flat[offset : offset + int(np.prod(shape, dtype=np.int64))] = np.asarray(arrays[name]).reshape(-1)
        return flat


def variance_pairs(names: list[str]) -> dict[str, str]:
    """running_var name -> its running_mean name, for the BatchNorm layers among `names`."""
    present = set(names)
    return {n: n[: -len(VAR)] + MEAN for n in names if n.endswith(VAR) and n[: -len(VAR)] + MEAN in present}


def update(sent: Weights, trained: Weights, layout: Layout) -> dict[str, np.ndarray]:
    """The site's update d per masked entry, in float64 (a running variance as its second moment's change)."""
    out = {n: trained[n].astype(np.float64) - sent[n].astype(np.float64) for n in layout.names}
    for var, mean in variance_pairs(layout.names).items():
        out[var] = _second(trained, var, mean) - _second(sent, var, mean)
    return out


def _second(weights: Weights, var: str, mean: str) -> np.ndarray:
    return weights[var].astype(np.float64) + weights[mean].astype(np.float64) ** 2


def apply(sent: Weights, mean_update: Mapping[str, np.ndarray], layout: Layout) -> Weights:
    """The model sent plus the mean update: what plain FedAvg's weighted mean (pooled BatchNorm variance) gives."""
    model: Weights = {}
    for name in layout.names:
        model[name] = sent[name].astype(np.float64) + mean_update[name]
    for var, mean in variance_pairs(layout.names).items():
        second = sent[var].astype(np.float64) + sent[mean].astype(np.float64) ** 2 + mean_update[var]
        model[var] = np.maximum(second - model[mean] ** 2, 0.0)
    return {name: model[name].astype(sent[name].dtype) for name in layout.names}


def self_mask(seed: bytes, round: int, size: int) -> np.ndarray:
    return crypto.expand(crypto.hkdf(seed, b"fedrad secagg self mask|%d" % round), size)


def pair_mask(key: bytes, size: int) -> np.ndarray:
    return crypto.expand(key, size)


def pair_info(round: int) -> bytes:
    return b"fedrad secagg pair mask|%d" % round


def sign(a: str, b: str) -> int:
    """+1 if `a` adds the pair's mask, -1 if it subtracts it: the smaller site id adds."""
    return 1 if a < b else -1
