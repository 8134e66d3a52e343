"""Phantom hospitals: deterministic synthetic 2D scans with lesions, one scanner profile per site.

Each scan is a 64x64 "chest-like" slice: a soft elliptical body, two darker organs, a bright
central structure, low-frequency tissue texture and small bright vessels in every scan. Positive
scans carry one lesion: a round blob, larger than a vessel, inside one of the organs. The
task is lesion present / absent (and, for segmentation, the lesion mask).

Heterogeneity is real and has three sources, as between hospitals:
- the scanner profile (gain, offset, gamma, blur, noise) changes how the same anatomy looks;
- the number of patients differs (quantity skew);
- the disease prevalence differs (label skew).

Example:
    >>> sites = phantom_sites(DEFAULT_HOSPITALS[:2], seed=0)
    >>> sites[0].train.inputs.shape[1:]
    (1, 64, 64)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from fedrad.data.base import SiteData, Split, split_indices


@dataclass(frozen=True)
class ScannerProfile:
    """How a site's scanner renders anatomy: out = gain * blur(anatomy) ** gamma + offset + noise."""

    gain: float = 1.0
    offset: float = 0.0
    gamma: float = 1.0
    blur: float = 0.0  # Gaussian sigma in pixels; 0 = sharp
    noise: float = 0.05  # standard deviation of additive Gaussian noise


@dataclass(frozen=True)
class HospitalSpec:
    """One phantom hospital: its name, scanner, number of patients and disease prevalence."""

    site_id: str
    scanner: ScannerProfile
    num_patients: int
    prevalence: float


# Six hospitals that differ in scanner, size and prevalence. Calibrated (README) so that pooling
# helps the small sites and a model from one scanner degrades on another.
DEFAULT_HOSPITALS: tuple[HospitalSpec, ...] = (
    HospitalSpec("hosp-a", ScannerProfile(1.0, 0.0, 1.0, 0.6, 0.05), 450, 0.50),
    HospitalSpec("hosp-b", ScannerProfile(0.7, 0.25, 1.6, 1.0, 0.08), 350, 0.35),
    HospitalSpec("hosp-c", ScannerProfile(1.3, -0.15, 0.7, 0.3, 0.05), 300, 0.60),
    HospitalSpec("hosp-d", ScannerProfile(0.9, 0.1, 1.3, 1.4, 0.10), 250, 0.40),
    HospitalSpec("hosp-e", ScannerProfile(1.1, -0.05, 0.8, 0.8, 0.07), 150, 0.30),
    HospitalSpec("hosp-f", ScannerProfile(0.6, 0.35, 2.0, 0.4, 0.09), 80, 0.50),
)

SPLIT_FRACTIONS = (0.6, 0.15, 0.25)  # train / val / test, per hospital


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx, cy, rx, ry, edge: float = 0.04) -> np.ndarray:
    """Soft-edged filled ellipses, one per row of the (n, 1, 1) parameter arrays."""
    r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return 1.0 / (1.0 + np.exp(np.minimum((r - 1.0) / edge, 50.0)))


def _blobs(xx, yy, cx, cy, sigma) -> np.ndarray:
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2.0 * sigma**2))


def _anatomy(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scanner-independent anatomy in [0, 1] and the organ centres/radii lesions may sit in."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")

    def u(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, size=(n, 1, 1)).astype(np.float32)

    body = _ellipse(xx, yy, u(-0.05, 0.05), u(-0.05, 0.05), u(0.78, 0.92), u(0.62, 0.8))
    # Two organs, left and right: (n, 2, 4) of centre x, centre y, radius x, radius y.
    organs = np.stack(
        [
            np.stack([-rng.uniform(0.3, 0.42, n), rng.uniform(0.3, 0.42, n)], axis=1),
            rng.uniform(-0.1, 0.1, (n, 2)),
            rng.uniform(0.2, 0.28, (n, 2)),
            rng.uniform(0.32, 0.45, (n, 2)),
        ],
        axis=-1,
    ).astype(np.float32)
    o = organs[:, :, :, None, None]
    organ_mask = sum(_ellipse(xx, yy, o[:, j, 0], o[:, j, 1], o[:, j, 2], o[:, j, 3]) for j in (0, 1))
    centre = _ellipse(xx, yy, u(-0.04, 0.04), u(0.0, 0.15), u(0.1, 0.16), u(0.16, 0.24))
    texture = gaussian_filter(rng.standard_normal((n, size, size)).astype(np.float32), (0, 3, 3))
    image = body * (0.55 + 0.6 * texture) - 0.3 * organ_mask * body + 0.35 * centre
    # Small bright vessels in every scan: the lesion must be told apart by size, not brightness.
    for _ in range(3):
        present = rng.uniform(size=(n, 1, 1)) < 0.7
        organ = organs[np.arange(n), rng.integers(0, 2, size=n)]
        vx = organ[:, 0] + rng.uniform(-0.6, 0.6, n) * organ[:, 2]
        vy = organ[:, 1] + rng.uniform(-0.6, 0.6, n) * organ[:, 3]
        vessel = _blobs(xx, yy, vx[:, None, None], vy[:, None, None], u(0.018, 0.026))
        image = image + present * u(0.25, 0.4) * vessel
    return image.astype(np.float32), organs


def _lesions(
    n: int, size: int, organs: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One lesion per scan inside a random organ: its intensity image and its binary mask."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    k = rng.integers(0, 2, size=n)
    organ = organs[np.arange(n), k]  # (n, 4): cx, cy, rx, ry
    angle = rng.uniform(0, 2 * np.pi, n)
    radius = np.sqrt(rng.uniform(0, 1, n)) * 0.6
    cx = (organ[:, 0] + radius * np.cos(angle) * organ[:, 2])[:, None, None]
    cy = (organ[:, 1] + radius * np.sin(angle) * organ[:, 3])[:, None, None]
    sigma = rng.uniform(0.07, 0.1, size=(n, 1, 1)).astype(np.float32)
    amplitude = rng.uniform(0.5, 0.8, size=(n, 1, 1)).astype(np.float32)
    blob = _blobs(xx, yy, cx, cy, sigma)
    return (amplitude * blob).astype(np.float32), (blob > 0.5).astype(np.uint8)


def render(anatomy: np.ndarray, scanner: ScannerProfile, rng: np.random.Generator) -> np.ndarray:
    """Apply a scanner profile to scanner-independent anatomy (also usable on any image batch)."""
    image = np.clip(anatomy, 0.0, None)
    if scanner.blur > 0:
        image = gaussian_filter(image, (0,) * (image.ndim - 2) + (scanner.blur, scanner.blur))
    image = scanner.gain * image**scanner.gamma + scanner.offset
    image = image + rng.normal(0.0, scanner.noise, size=image.shape)
    return image.astype(np.float32)


def generate_scans(
    n: int, prevalence: float, scanner: ScannerProfile, rng: np.random.Generator, size: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n scans of one hospital: images (n, 1, size, size), labels (n,), lesion masks (n, 1, size, size)."""
    labels = (rng.uniform(size=n) < prevalence).astype(np.int64)
    anatomy, organs = _anatomy(n, size, rng)
    lesion, mask = _lesions(n, size, organs, rng)
    anatomy = anatomy + lesion * labels[:, None, None]
    mask = mask * labels[:, None, None].astype(np.uint8)
    images = render(anatomy, scanner, rng)
    return images[:, None], labels, mask[:, None]


def phantom_site(
    spec: HospitalSpec, seed: int, index: int, size: int = 64, segmentation: bool = False
) -> SiteData:
    """Generate one hospital's data deterministically from (seed, index)."""
    rng = np.random.default_rng([seed, index])
    images, labels, masks = generate_scans(spec.num_patients, spec.prevalence, spec.scanner, rng, size)
    targets = masks.astype(np.float32) if segmentation else labels
    parts = [Split(images[i], targets[i]) for i in split_indices(len(images), SPLIT_FRACTIONS, rng)]
    card = {
        "source": "phantom",
        "num_patients": spec.num_patients,
        "num_positive": int(labels.sum()),
        "scanner": f"gain={spec.scanner.gain} offset={spec.scanner.offset} gamma={spec.scanner.gamma}",
    }
    return SiteData(spec.site_id, parts[0], parts[1], parts[2], card)


def phantom_sites(
    specs: Sequence[HospitalSpec] = DEFAULT_HOSPITALS,
    seed: int = 0,
    size: int = 64,
    segmentation: bool = False,
) -> list[SiteData]:
    """All hospitals of a phantom federation."""
    return [phantom_site(s, seed, i, size, segmentation) for i, s in enumerate(specs)]
