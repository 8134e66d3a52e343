"""The one site-data contract every source (phantom, DICOM, NIfTI, ...) produces."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Split:
    """One part of a site's data: inputs (N, C, H, W) or (N, F) float32, targets (N,) int64 or masks."""

    inputs: np.ndarray
    targets: np.ndarray

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise ValueError(
                f"inputs and targets differ in length: {len(self.inputs)} != {len(self.targets)}"
            )

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def nbytes(self) -> int:
        """Bytes this split would occupy if it left the site as it is held (inputs and targets)."""
        return int(self.inputs.nbytes + self.targets.nbytes)

    def subset(self, index: np.ndarray) -> Split:
        return Split(self.inputs[index], self.targets[index])


@dataclass(frozen=True)
class SiteData:
    """A hospital's data: train / validation / test parts that never leave the site.

    `card` holds only aggregate, non-identifying facts (counts, scanner profile name ...).
    """

    site_id: str
    train: Split
    val: Split
    test: Split
    card: Mapping[str, str | int | float] = field(default_factory=dict)

    @property
    def num_train(self) -> int:
        return len(self.train)


def concat_splits(splits: Sequence[Split]) -> Split:
    """Pool several splits into one (for the CDS baseline and the pooled test set)."""
    return Split(
        np.concatenate([s.inputs for s in splits]),
        np.concatenate([s.targets for s in splits]),
    )


def split_indices(
    n: int, fractions: tuple[float, float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle range(n) and cut it into train / val / test by the given fractions."""
    order = rng.permutation(n)
    n_val = int(round(n * fractions[1]))
    n_test = int(round(n * fractions[2]))
    n_train = n - n_val - n_test
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
