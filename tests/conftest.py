from __future__ import annotations

import pytest

from fedrad.config import JobConfig
from tests.tiny import TINY  # the one tiny job (tests.cli.test_run imports it from here)


@pytest.fixture
def tiny_config() -> JobConfig:
    """Three small phantom hospitals of 16x16 scans: a whole federation in well under a second."""
    return JobConfig.model_validate(TINY)
