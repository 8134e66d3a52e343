from __future__ import annotations

import pytest

from fedrad.config import JobConfig

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


@pytest.fixture
def tiny_config() -> JobConfig:
    """Three small phantom hospitals of 16x16 scans: a whole federation in well under a second."""
    return JobConfig.model_validate(TINY)
