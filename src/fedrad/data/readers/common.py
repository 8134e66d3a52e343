"""What every reader shares: the skip record, the sample, the site grid, and turning samples into a SiteData.

The rule for bad input: one bad file (corrupt, truncated, undecodable, unlabelled, mismatched) never
stops a site. It becomes a `Skipped(path, reason)` and reading goes on; only a site left with no
usable sample at all raises a `ValueError` that names the folder or file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from fedrad.data.base import SiteData, Split, split_indices
from fedrad.data.card import CardRecord, build_card

if TYPE_CHECKING:
    from fedrad.data.geometry import Geometry
    from fedrad.data.harmonize import Harmonizer

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}  # fmt: skip


@dataclass(frozen=True)
class Skipped:
    """An input item that was left out, and why (one line, naming the file)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class SkipItem(Exception):
    """Raised inside a reader for an item that must be skipped; its message is the reason."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library messages can run to many lines)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class SiteRead(NamedTuple):
    """What a reader returns: the site's data and every item it skipped."""

    data: SiteData
    skipped: list[Skipped]


@dataclass(frozen=True)
class Sample:
    """One usable example before splitting."""

    input: np.ndarray  # (C, H, W), (C, D, H, W) or (F,)
    target: int | np.ndarray  # class index, or a float32 mask shaped like input with C = 1
    group: str  # patient / volume / file: a group never straddles two splits (no leakage)
    origin: str  # the file (and frame / slice) it came from, for messages
    record: CardRecord
    split: str | None = None  # from a split column, where the source has one


def parse_split(value: str) -> str | None:
    """'train' / 'val' / 'test' (and common spellings) -> canonical name; anything else -> None."""
    return _SPLIT_ALIASES.get(value.strip().lower())


def no_usable_data(where: object, skipped: Sequence[Skipped]) -> ValueError:
    first = f"; first: {skipped[0]}" if skipped else ""
    return ValueError(f"{where}: no usable data ({len(skipped)} item(s) skipped{first})")


def resize(image: np.ndarray, size: Sequence[int], *, nearest: bool = False) -> np.ndarray:
    """Resize a channel-first array to `size` (spatial dims) with MONAI's Resize.

    Images use "area" (an average over each output pixel's footprint: deterministic, no aliasing
    when shrinking, the usual case for medical images); masks use "nearest" so labels stay labels.
    MONAI (and torch) is imported only when a resize is actually needed.
    """
    size = tuple(int(s) for s in size)
    if tuple(image.shape[1:]) == size:
        return image.astype(np.float32, copy=False)
    from monai.transforms import Resize  # heavy import: only when shapes differ

    out = Resize(spatial_size=size, mode="nearest" if nearest else "area")(image.astype(np.float32))
    return np.asarray(out.detach().cpu().numpy() if hasattr(out, "detach") else out, dtype=np.float32)


def on_grid(
    image: np.ndarray,
    geometry: Geometry,
    size: Sequence[int],
    harmonizer: Harmonizer | None = None,
    *,
    mask: bool = False,
) -> np.ndarray:
    """A native image on the site's grid: the job's harmonisation with the image's real geometry
    (orientation, spacing in mm) where declared, then a resize to the reader's `size` unless the
    job fixed the size itself. Without harmonisation this is the reader's resize alone."""
    if harmonizer is not None:
        image = harmonizer.image(image, geometry, mask=mask)
        if harmonizer.config.size is not None:
            return image
    return resize(image, size, nearest=mask)


def _consistent(samples: list[Sample], skipped: list[Skipped]) -> list[Sample]:
    """Keep samples shaped like the first one; the rest are skipped (e.g. a different channel count)."""
    shape = samples[0].input.shape
    kept = []
    for s in samples:
        if s.input.shape == shape:
            kept.append(s)
        else:
            skipped.append(Skipped(s.origin, f"input shape {s.input.shape} differs from the site's {shape}"))
    return kept


def _assign(samples: list[Sample], fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """Split name per sample: the split column where given, else a seeded split over groups."""
    if any(s.split is not None for s in samples):
        return np.asarray([s.split for s in samples])
    groups, inverse = np.unique([s.group for s in samples], return_inverse=True)
    parts = split_indices(len(groups), fractions, np.random.default_rng(seed))
    name_of_group = np.empty(len(groups), dtype=object)
    for name, index in zip(SPLITS, parts, strict=True):
        name_of_group[index] = name
    return name_of_group[inverse].astype(str)


class SourceBlock(Protocol):
    """What `assemble_site` reads from a reader's validated data block (config._Source)."""

    @property
    def source(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def fractions(self) -> tuple[float, float, float]: ...
    @property
    def seed(self) -> int: ...
    @property
    def suppress_below(self) -> int: ...


def assemble_site(
    site_id: str,
    samples: list[Sample],
    skipped: list[Skipped],
    block: SourceBlock,
    *,
    patient_unit: str = "patient",
    where: object = None,
    harmonizer: Harmonizer | None = None,
) -> SiteRead:
    """Check, split and stack samples into a SiteData with its card; raise if nothing is usable.

    `where` names the input in the "no usable data" error (default: the block's path); with a
    `harmonizer`, the samples have been harmonised and the card carries its fingerprint.
    """
    if not samples:
        raise no_usable_data(block.path if where is None else where, skipped)
    samples = _consistent(samples, skipped)
    names = _assign(samples, block.fractions, block.seed)
    inputs = np.stack([s.input for s in samples]).astype(np.float32, copy=False)
    if isinstance(samples[0].target, np.ndarray):
        targets = np.stack([s.target for s in samples]).astype(np.float32, copy=False)
    else:
        targets = np.asarray([s.target for s in samples], dtype=np.int64)
    splits = {n: Split(inputs[names == n], targets[names == n]) for n in SPLITS}
    card = build_card(
        [s.record for s in samples],
        source=block.source,
        split_sizes={n: len(splits[n]) for n in SPLITS},
        num_skipped=len(skipped),
        input_shape=inputs.shape[1:],
        patient_unit=patient_unit,
        k=block.suppress_below,
    )
    data = SiteData(site_id, splits["train"], splits["val"], splits["test"], card)
    return SiteRead(harmonizer.stamp(data) if harmonizer else data, skipped)
