"""Partitioners: cut one pooled data set (arrays) into sites, as the FL literature does.

Each partitioner returns one index array per site, so it works for any data held as arrays;
`site_data` turns indices into SiteData (train / val / test), and `partition_table` gives the
per-site counts and label distribution as rows.

- `iid`: a uniform random split into equal parts.
- `dirichlet`: label skew; each class is spread over sites by proportions ~ Dirichlet(alpha)
  (Hsu et al. 2019): small alpha, sites dominated by a few classes.
- `quantity_skew`: site sizes follow a power law, size_k proportional to (k + 1) ** -exponent.
- `natural`: one site per value of an institution column.
- `feature_skew`: the same anatomy, a different scanner per site: the phantom's scanner profiles
  (fedrad.data.phantom.render) applied to each site's images.

Example:
    >>> parts = dirichlet(labels, num_sites=4, alpha=0.5, rng=np.random.default_rng(0))
    >>> rows = partition_table(parts, labels)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrad.data.base import SiteData, Split, split_indices
from fedrad.data.phantom import DEFAULT_HOSPITALS, SPLIT_FRACTIONS, ScannerProfile, generate_scans, render


def _check(num_sites: int, n: int) -> None:
    if num_sites < 1:
        raise ValueError(f"num_sites must be at least 1, got {num_sites}")
    if n < num_sites:
        raise ValueError(f"cannot split {n} examples into {num_sites} sites")


def iid(n: int, num_sites: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation of range(n) cut into num_sites near-equal parts (sorted indices)."""
    _check(num_sites, n)
    return [np.sort(part) for part in np.array_split(rng.permutation(n), num_sites)]


def dirichlet(
    labels: np.ndarray, num_sites: int, alpha: float, rng: np.random.Generator, min_size: int = 2, tries: int = 100
) -> list[np.ndarray]:
    """Label skew: class c's examples go to sites in proportions p_c ~ Dirichlet(alpha * 1).

    A small alpha can leave a site (almost) empty; the draw is repeated (seeded, up to `tries`
    times) until every site holds at least `min_size` examples, as common FL benchmarks do.
    """
    _check(num_sites, len(labels))
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if len(labels) < num_sites * min_size:
        raise ValueError(f"{len(labels)} examples cannot give {num_sites} sites at least {min_size} each")
    for _ in range(tries):
        parts: list[list[int]] = [[] for _ in range(num_sites)]
        for c in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_sites, alpha))
            cuts = np.floor(np.cumsum(shares)[:-1] * len(members)).astype(int)
            for site, chunk in enumerate(np.split(members, cuts)):
                parts[site].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ValueError(
        f"Dirichlet alpha {alpha}: no draw in {tries} gave each of {num_sites} sites {min_size} examples; "
        "raise alpha or use fewer sites"
    )


def quantity_skew(
    n: int, num_sites: int, exponent: float, rng: np.random.Generator, min_size: int = 2
) -> list[np.ndarray]:
    """Sizes proportional to (k + 1) ** -exponent (largest first), each at least `min_size`."""
    _check(num_sites, n)
    if n < num_sites * min_size:
        raise ValueError(f"{n} examples cannot give {num_sites} sites at least {min_size} each")
    weights = (np.arange(num_sites) + 1.0) ** -exponent
    sizes = min_size + np.floor(weights / weights.sum() * (n - num_sites * min_size)).astype(int)
    sizes[0] += n - sizes.sum()  # rounding leftovers go to the largest site
    return [np.sort(part) for part in np.split(rng.permutation(n), np.cumsum(sizes)[:-1])]


def natural(groups: np.ndarray) -> dict[str, np.ndarray]:
    """One site per distinct value of an institution column (sorted by value)."""
    return {str(g): np.flatnonzero(groups == g) for g in np.unique(groups)}


def feature_skew(
    images: np.ndarray, parts: Sequence[np.ndarray], profiles: Sequence[ScannerProfile], rng: np.random.Generator
) -> list[np.ndarray]:
    """Each site's images rendered through its own scanner profile (profiles are cycled)."""
    return [render(images[index], profiles[k % len(profiles)], rng) for k, index in enumerate(parts)]


def site_data(site_id: str, inputs: np.ndarray, targets: np.ndarray, rng: np.random.Generator, **card) -> SiteData:
    """One site's arrays cut into train / val / test by the phantom's fractions."""
    train, val, test = (Split(inputs[i], targets[i]) for i in split_indices(len(inputs), SPLIT_FRACTIONS, rng))
    return SiteData(site_id, train, val, test, {"num_patients": len(inputs), **card})


def partition_table(parts: Sequence[np.ndarray], labels: np.ndarray, names: Sequence[str] | None = None) -> list[dict]:
    """Per site: its number of examples, its count of each class and its label distribution."""
    classes = np.unique(labels)
    rows = []
    for k, index in enumerate(parts):
        counts = {int(c): int(np.sum(labels[index] == c)) for c in classes}
        n = len(index)
        rows.append(
            {
                "site": names[k] if names else f"site-{k}",
                "n": n,
                "counts": counts,
                "fractions": {c: (v / n if n else 0.0) for c, v in counts.items()},
            }
        )
    return rows


def phantom_partition(
    kind: str, num_sites: int, num_patients: int, prevalence: float, seed: int, size: int = 64,
    alpha: float = 0.5, exponent: float = 1.0,
) -> list[SiteData]:
    """A phantom federation made by partitioning one pooled set of scans (`data.partition`).

    The pooled scans come from one neutral scanner (no blur, no noise). feature_skew splits them
    IID and renders each site's part through the default hospitals' scanner profiles in turn; the
    other kinds add light noise only, so the sites differ in labels or size alone.
    """
    rng = np.random.default_rng([seed, 7919])  # its own stream: not the per-hospital phantom seeds
    images, labels, _ = generate_scans(num_patients, prevalence, ScannerProfile(noise=0.0), rng, size)
    if kind == "dirichlet":
        parts = dirichlet(labels, num_sites, alpha, rng, min_size=8)  # room for train, val and test
    elif kind == "quantity_skew":
        parts = quantity_skew(num_patients, num_sites, exponent, rng)
    elif kind in ("iid", "feature_skew"):
        parts = iid(num_patients, num_sites, rng)
    else:
        raise ValueError(f"unknown partition kind {kind!r}; choose iid, dirichlet, quantity_skew, feature_skew")
    profiles = [h.scanner for h in DEFAULT_HOSPITALS] if kind == "feature_skew" else [ScannerProfile()]
    rendered = feature_skew(images[:, 0], parts, profiles, rng)
    return [
        site_data(f"site-{k}", rendered[k][:, None], labels[index], rng, partition=kind)
        for k, index in enumerate(parts)
    ]
