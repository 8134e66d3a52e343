"""Command-line checks shared by the commands (cli/run.py, cli/deploy.py)."""

from __future__ import annotations

from pathlib import Path

import typer


def results_folder(path: Path) -> Path:
    """--out must name a folder (made if missing), never an existing file: a one-line usage error, exit 2."""
    if path.exists() and not path.is_dir():
        raise typer.BadParameter(f"{path} is a file, not a results folder")
    return path
