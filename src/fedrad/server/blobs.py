"""One serialization per model: the encoded form of a weights dict, reused while the dict lives on.

A round's new global model is encoded to be evaluated, and the same weights go out again as the
next round's FIT instructions; a model that did not change (every update rejected, or a baseline
that keeps it) is evaluated in the form it was sent in. `ModelBlobs.encode` serializes each dict
once and makes the dict's arrays read-only views into the blob (`codec.share_storage`), so the
model and its wire form share one buffer. `retain` lets go of every dict the run no longer holds,
so the cache never keeps an old model alive.

    blobs = ModelBlobs()
    blob = blobs.encode(state.models["global"])   # evaluation of round r
    blobs.encode(state.models["global"]) is blob  # FIT instructions of round r + 1: True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from fedrad.codec import encode, share_storage


@dataclass(frozen=True)
class _Entry:
    weights: Mapping[str, np.ndarray]  # held, so that its id() cannot be reused by another dict
    arrays: dict[str, np.ndarray]  # the arrays it held when encoded: a replaced entry means a new model
    blob: bytes


class ModelBlobs:
    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}

    def encode(self, weights: Mapping[str, np.ndarray]) -> bytes:
        """The safetensors bytes of `weights`, serialized once however often the same dict is sent."""
        entry = self._entries.get(id(weights))
        if entry is not None and entry.weights is weights and self._unchanged(entry):
            return entry.blob
        blob = encode(weights)
        if isinstance(weights, dict):  # the model and its wire form share one buffer
            share_storage(weights, blob)
        self._entries[id(weights)] = _Entry(weights, dict(weights), blob)
        return blob

    def retain(self, live: Iterable[Mapping[str, np.ndarray]]) -> None:
        """Forget every model but these (the current state's, the instructions' in flight)."""
        keep = {id(weights) for weights in live}
        self._entries = {key: entry for key, entry in self._entries.items() if key in keep}

    @staticmethod
    def _unchanged(entry: _Entry) -> bool:
        now = entry.weights
        return len(now) == len(entry.arrays) and all(now.get(k) is a for k, a in entry.arrays.items())
