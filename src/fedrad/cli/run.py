"""fedrad's command line: `fedrad run CONFIG --out DIR` and `fedrad compare CONFIG --methods ... --out DIR`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedrad.cli.data import register as register_data_commands
from fedrad.cli.deploy import register as register_deploy_commands
from fedrad.config import METHODS, ConfigError, JobConfig, load_config
from fedrad.report.comparison import method_header, method_rows, primary_metric, site_rows, write_comparison
from fedrad.run.federation import FederationError
from fedrad.run.methods import planned_rounds
from fedrad.run.simulate import MethodRun, build_sites
from fedrad.server.evaluation import summarize

app = typer.Typer(add_completion=False, help="Federated learning for medical imaging.", no_args_is_help=True)
# Piped output (make demo under CI, a log file) gets a width that fits the tables instead of 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
ConfigArg = Annotated[Path, typer.Argument(metavar="CONFIG", help="job YAML")]
OutOption = Annotated[Path, typer.Option("--out", help="results folder")]


def _load(config_path: Path) -> JobConfig:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None


def _sites(config: JobConfig) -> list:
    """The job's sites; a site with no usable data or refused preprocessing ends the command (exit 2)."""
    try:
        return build_sites(config)
    except FederationError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None


def _run_method(config: JobConfig, method: str, out: Path, sites) -> dict:
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"{method:>8}", total=planned_rounds(config, method, len(sites)))

        def on_round(record) -> None:
            text = f"{method:>8}"
            if record.evaluations:
                pooled, _ = summarize(record.evaluations)
                metric = "dice" if "dice" in pooled else "balanced_accuracy"
                text += f"  pooled {metric} {pooled.get(metric, float('nan')):.3f}"
            if record.failures:
                text += f"  [red]{len(record.failures)} failed[/red]"
            progress.update(bar, advance=1, description=text)

        return MethodRun(config, method, out, sites, on_round).run()


def _table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


@app.command()
def run(config_path: ConfigArg, out: OutOption) -> None:
    """Run the configured strategy on the configured sites; write the results contract to OUT."""
    config = _load(config_path)
    try:
        summary = _run_method(config, config.strategy.name, out, _sites(config))
    except KeyboardInterrupt:
        errors.print(f"interrupted: completed rounds are in {out}")
        raise typer.Exit(130) from None
    console.print(_table("result", method_header([summary]), method_rows([summary])))


@app.command()
def compare(
    config_path: ConfigArg,
    out: OutOption,
    methods: Annotated[str, typer.Option(help=f"comma-separated, from {','.join(METHODS)}")] = "fedavg,cds,local",
) -> None:
    """Run several methods on the same sites, seed and budget; write comparison.json and report.md."""
    config = _load(config_path)
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        errors.print(f"error: --methods: unknown method(s) {unknown or chosen}; choose from {', '.join(METHODS)}")
        raise typer.Exit(2)
    sites = _sites(config)
    summaries = []
    if "swt" in chosen:  # recency bias needs the reversed order too
        chosen.insert(chosen.index("swt") + 1, "swt-reversed")
    try:
        for method in chosen:
            summaries.append(_run_method(config, method, out / method, sites))
    except KeyboardInterrupt:
        errors.print(f"interrupted: completed methods and rounds are in {out}")
        raise typer.Exit(130) from None
    finally:
        if summaries:
            write_comparison(out, summaries)
    console.print(_table("methods", method_header(summaries), method_rows(summaries)))
    site_header, rows = site_rows(summaries)
    console.print(_table(f"per-site {primary_metric(summaries).replace('_', ' ')}", site_header, rows))
    console.print(f"report: {out / 'report.md'}")


register_deploy_commands(app)  # provision / server / client / status: fedrad/cli/deploy.py
register_data_commands(app)  # data check: fedrad/cli/data.py


if __name__ == "__main__":
    app()
