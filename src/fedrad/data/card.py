"""A site's data card: aggregate, non-identifying facts about what a site holds.

The card is the only description of a site's data that may leave the site. It holds counts, the
label distribution, modality / manufacturer counts, pixel-spacing and intensity summaries, and
nothing else from an image header. Small cells are suppressed: a category (a label, a modality,
a manufacturer) seen in fewer than `k` patients is reported as the string "<k", and, when exactly
one cell of a family is suppressed, the next smallest cell is suppressed too so the hidden count
cannot be recovered by subtracting the others from the total (complementary suppression, as in
statistical disclosure control). Numeric summaries are withheld when fewer than `k` patients
contribute to them.

Example:
    >>> recs = [CardRecord(patient=f"p{i}", label=i % 2) for i in range(12)]
    >>> card = build_card(recs, source="png_csv", split_sizes={"train": 12, "val": 0, "test": 0}, k=5)
    >>> card["label.0"], card["label.1"]
    (6, 6)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

CardValue = str | int | float
DEFAULT_K = 5  # a common small-cell threshold in health statistics


@dataclass(frozen=True)
class CardRecord:
    """What one sample contributes to the card. `patient` is only counted, never copied out."""

    patient: str  # pseudonymous grouping key held in memory on site (PatientID, volume, file ...)
    label: int | None = None
    modality: str | None = None
    manufacturer: str | None = None
    pixel_spacing_mm: float | None = None  # in-plane (row) spacing
    intensity_mean: float | None = None  # in modality units (HU for CT) before normalisation
    intensity_std: float | None = None


def suppressed(k: int) -> str:
    return f"<{k}"


def _family(
    name: str, records: Sequence[CardRecord], value_of: Callable[[CardRecord], object], k: int
) -> dict[str, CardValue]:
    """Counts of samples per category, suppressed where the category has fewer than k patients."""
    samples: dict[str, int] = defaultdict(int)
    patients: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        value = value_of(rec)
        if value is None or str(value).strip() == "":
            continue
        samples[str(value)] += 1
        patients[str(value)].add(rec.patient)
    cells: dict[str, CardValue] = {}
    hidden = [c for c in samples if len(patients[c]) < k]
    # Complementary suppression: one hidden cell could be recovered as total minus the others.
    if len(hidden) == 1 and len(samples) > 1:
        shown = sorted((c for c in samples if c not in hidden), key=lambda c: (samples[c], c))
        hidden.append(shown[0])
    for category in sorted(samples):
        cells[f"{name}.{category}"] = suppressed(k) if category in hidden else samples[category]
    return cells


def _spacing(records: Sequence[CardRecord], k: int) -> dict[str, CardValue]:
    values = [r.pixel_spacing_mm for r in records if r.pixel_spacing_mm is not None]
    who = {r.patient for r in records if r.pixel_spacing_mm is not None}
    if not values:
        return {}
    if len(who) < k:
        return {"pixel_spacing_mm": suppressed(k)}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "pixel_spacing_mm.min": round(float(arr.min()), 4),
        "pixel_spacing_mm.median": round(float(np.median(arr)), 4),
        "pixel_spacing_mm.max": round(float(arr.max()), 4),
    }


def _intensity(records: Sequence[CardRecord], k: int) -> dict[str, CardValue]:
    used = [r for r in records if r.intensity_mean is not None and r.intensity_std is not None]
    if not used:
        return {}
    if len({r.patient for r in used}) < k:
        return {"intensity": suppressed(k)}
    means = np.asarray([r.intensity_mean for r in used], dtype=np.float64)
    stds = np.asarray([r.intensity_std for r in used], dtype=np.float64)
    # Pooled over samples of equal weight: var = mean(std^2) + var(means).
    pooled_std = float(np.sqrt(np.mean(stds**2) + np.var(means)))
    return {"intensity.mean": round(float(means.mean()), 4), "intensity.std": round(pooled_std, 4)}


def build_card(
    records: Sequence[CardRecord],
    *,
    source: str,
    split_sizes: Mapping[str, int],
    num_skipped: int = 0,
    input_shape: Iterable[int] = (),
    patient_unit: str = "patient",
    k: int = DEFAULT_K,
) -> dict[str, CardValue]:
    """Aggregate `records` (one per sample) into a flat card fit for `SiteData.card`.

    `num_patients` counts distinct `CardRecord.patient` keys; `patient_unit` says what one key is
    ("patient", "volume", "file" or "sample" where a source carries no patient identity).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    card: dict[str, CardValue] = {
        "source": source,
        "num_samples": len(records),
        **{f"num_{name}": int(size) for name, size in split_sizes.items()},
        "num_skipped": int(num_skipped),
        "patient_unit": patient_unit,
        "num_patients": len({r.patient for r in records}),
        "input_shape": "x".join(str(int(d)) for d in input_shape),
        "suppress_below": k,
    }
    card.update(_family("label", records, lambda r: r.label, k))
    card.update(_family("modality", records, lambda r: r.modality, k))
    card.update(_family("manufacturer", records, lambda r: r.manufacturer, k))
    card.update(_spacing(records, k))
    card.update(_intensity(records, k))
    return card
