"""Weights on the wire: safetensors bytes in, named numpy arrays out. Never pickle."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from safetensors.numpy import load, save

from fedrad.types import Weights


class CodecError(ValueError):
    """A payload that is not a valid safetensors blob."""


def encode(weights: Mapping[str, np.ndarray]) -> bytes:
    """Serialize named arrays to safetensors bytes (contiguous copies where needed)."""
    return save({name: np.ascontiguousarray(array) for name, array in weights.items()})


def decode(blob: bytes) -> Weights:
    """Parse safetensors bytes back to named arrays (keyed by name; order is not meaningful)."""
    try:
        return dict(load(blob))
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise CodecError(f"payload is not valid safetensors: {exc}") from exc
