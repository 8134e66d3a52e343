"""Command-line checks shared by the commands (cli/run.py, cli/deploy.py)."""

from __future__ import annotations

from pathlib import Path

import typer


def results_folder(path: Path) -> Path:
    """--out must name a folder (made if missing), never an existing file: a one-line usage error, exit 2."""
    if path.exists() and not path.is_dir():
        raise typer.BadParameter(f"{path} is a file, not a results folder")
    return path


RESULT_FILES = ("metrics.jsonl", "summary.json", "comparison.json", "checkpoint.safetensors")


def previous_results(out: Path) -> Path | None:
    """A results file already in `out` or one level below (a compare's method folders), or None."""
    if not out.is_dir():
        return None
    for name in RESULT_FILES:
        found = next(iter(sorted(out.glob(name))), None) or next(iter(sorted(out.glob(f"*/{name}"))), None)
        if found is not None:
            return found
    return None


def refuse_overwrite(out: Path, overwrite: bool, resume_hint: str = "") -> None:
    """A one-line error (exit 2) when `out` holds an earlier run's results and --overwrite was not given."""
    found = previous_results(out)
    if found is not None and not overwrite:
        typer.echo(f"error: --out {out}: it holds an earlier run's results ({found}); {resume_hint}--overwrite "
                   "replaces them, or choose another folder", err=True)
        raise typer.Exit(2)


OverwriteOption = typer.Option("--overwrite", help="replace the results already in OUT")
