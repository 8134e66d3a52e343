"""fedrad's command line: `run` / `compare` (cli/run.py), deployment (cli/deploy.py), data checks (cli/data.py)."""

from __future__ import annotations

from fedrad.cli.run import app

__all__ = ["app"]
