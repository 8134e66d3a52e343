"""The tiny job every test builds on: three small phantom hospitals of 16x16 scans.

A whole federation trains in well under a second. `tests/conftest.py` (the `tiny_config` fixture)
and the deployment tests (`tests/deploy/helpers.py`) derive their jobs from this one mapping.
"""

from __future__ import annotations

import copy

import numpy as np

from fedrad.data.base import SiteData, Split

TINY = {
    "name": "tiny",
    "seed": 3,
    "data": {
        "source": "phantom",
        "image_size": 16,
        "hospitals": [
            {"site_id": "s1", "num_patients": 40, "prevalence": 0.5},
            {"site_id": "s2", "num_patients": 30, "prevalence": 0.4, "scanner": {"gain": 0.7, "gamma": 1.5}},
            {"site_id": "s3", "num_patients": 20, "prevalence": 0.6, "scanner": {"blur": 1.0}},
        ],
    },
    "task": {"channels": [4, 8]},
    "train": {"rounds": 2, "local_epochs": 1, "batch_size": 8, "lr": 0.05},
}


def tiny_job(**changes: dict | str | int) -> dict:
    """A deep copy of TINY; each keyword replaces a top-level key, a mapping value updating that key's mapping."""
    job = copy.deepcopy(TINY)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(job.get(key), dict):
            job[key] = {**job[key], **copy.deepcopy(value)}
        else:
            job[key] = copy.deepcopy(value)
    return job


# A tabular job: data.sites is never read when the sites are given in memory (`tabular_sites`).
TABULAR = {"name": "tiny-tabular", "seed": 3, "data": {"source": "sites", "sites": ["unread.yaml"]},
           "task": {"kind": "tabular", "hidden": [8]}, "train": {"rounds": 2, "batch_size": 8, "lr": 0.1}}  # fmt: skip


def tabular_sites(num_sites: int = 3, n: int = 40) -> list[SiteData]:
    """Sites of (n, 4) features whose label is a linear rule, in memory (no CSV): train / val / test."""
    sites = []
    for k in range(num_sites):
        rng = np.random.default_rng(k)
        x = rng.normal(0.3 * k, 1.0, (n, 4)).astype(np.float32)
        y = (x[:, 0] + x[:, 1] > 0.6 * k).astype(np.int64)
        parts = [Split(x[a:b], y[a:b]) for a, b in ((0, n // 2), (n // 2, 3 * n // 4), (3 * n // 4, n))]
        sites.append(SiteData(f"t{k + 1}", *parts))
    return sites
