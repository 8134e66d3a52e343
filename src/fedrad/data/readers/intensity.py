"""Intensity handling shared by the image readers: windowing and per-image normalisation.

Example:
    >>> import numpy as np
    >>> apply_window(np.array([-1000.0, 40.0, 1000.0]), center=40, width=400).tolist()
    [0.0, 0.5, 1.0]
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Intensity = Literal["minmax", "zscore", "raw"]


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Clip to [center - width/2, center + width/2] and map linearly onto [0, 1].

    This is the plain radiology window (e.g. soft tissue: center 40, width 400 HU). It differs from
    DICOM's VOI LUT formula (PS3.3 C.11.2.1.2) only by its half-pixel offsets, which do not matter
    for learning.
    """
    if width <= 0:
        raise ValueError(f"window width must be > 0, got {width}")
    low = center - width / 2.0
    return np.clip((values.astype(np.float32) - low) / width, 0.0, 1.0).astype(np.float32)


def normalise(values: np.ndarray, how: Intensity) -> np.ndarray:
    """Per-image (or per-volume) normalisation: min-max to [0, 1], z-score, or none."""
    x = values.astype(np.float32)
    if how == "raw":
        return x
    if how == "minmax":
        low, high = float(x.min()), float(x.max())
        return (x - low) / (high - low) if high > low else np.zeros_like(x)
    std = float(x.std())
    return (x - float(x.mean())) / std if std > 0 else np.zeros_like(x)


def to_model_range(
    values: np.ndarray, window: tuple[float, float] | None, how: Intensity
) -> np.ndarray:
    """The window when one is configured (it has a meaning in physical units), else `normalise`."""
    if window is not None:
        return apply_window(values, *window)
    return normalise(values, how)


def summary(values: np.ndarray) -> tuple[float, float]:
    """(mean, std) in the image's own units, for the data card."""
    return float(np.mean(values)), float(np.std(values))
