"""fedrad's command line: `fedrad run CONFIG --out DIR` and `fedrad compare CONFIG --methods ... --out DIR`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedrad.cli.audit import register as register_audit_commands
from fedrad.cli.data import register as register_data_commands
from fedrad.cli.deploy import register as register_deploy_commands
from fedrad.config import ConfigError, JobConfig, for_strategy, load_config
from fedrad.report.comparison import method_header, method_rows, primary_metric, site_rows, write_comparison
from fedrad.run.federation import FederationError, check_strategy, resolve_kind
from fedrad.run.simulate import MethodRun, build_sites, build_task
from fedrad.run.summary import exit_code, worst
from fedrad.server.evaluation import summarize
from fedrad.strategies import registry

app = typer.Typer(add_completion=False, help="Federated learning for medical imaging.", no_args_is_help=True)
# Piped output (make demo under CI, a log file) gets a width that fits the tables instead of 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
ConfigArg = Annotated[Path, typer.Argument(metavar="CONFIG", help="job YAML")]
OutOption = Annotated[Path, typer.Option("--out", help="results folder")]
StrictOption = Annotated[
    bool, typer.Option("--strict", help="exit 3 when a run is degraded (a failed run always exits 4)")
]


def _load(config_path: Path) -> JobConfig:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _sites(config: JobConfig, methods: list[str]) -> list:
    """The job's sites; a site with no usable data or refused preprocessing, or a method the task
    cannot support (fedbn on the tabular MLP), ends the command before anything runs (exit 2)."""
    try:
        sites = build_sites(config)
        kind = resolve_kind(config, sites)
        for method in methods:
            check_strategy(method, kind)
        return sites
    except FederationError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _run_method(config: JobConfig, method: str, out: Path, sites) -> dict:
    job = for_strategy(config, method)  # the job as this method runs it (its own strategy section)
    total = registry.get(method).rounds(job.train.rounds, len(sites), job.strategy)
    metric = build_task(job, sites).primary_metric
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"{method:>8}", total=total)

        def on_round(record) -> None:
            text = f"{method:>8}"
            if record.evaluations:
                pooled, _ = summarize(record.evaluations)
                text += f"  pooled {metric} {pooled.get(metric, float('nan')):.3f}"
            if record.failures:
                text += f"  [red]{len(record.failures)} failed[/red]"
            progress.update(bar, advance=1, description=text)

        return MethodRun(config, method, out, sites, on_round).run()


def _results_table(title: str, summaries: list[dict]) -> Table:
    """The methods table with each run's health in a last column."""
    rows = [[*row, s.get("status", "ok")] for row, s in zip(method_rows(summaries), summaries, strict=True)]
    return _table(title, [*method_header(summaries), "status"], rows)


def _print_health(summaries: list[dict]) -> None:
    """Each run's status; a run that is not ok, with its reasons, on stderr."""
    for s in summaries:
        status, where = s.get("status", "ok"), f"{s['method']}: " if len(summaries) > 1 else ""
        if status == "ok":
            console.print(f"{where}status: ok")
            continue
        errors.print(f"{where}status: {status}", markup=False, highlight=False)
        for reason in s.get("status_reasons", []):
            errors.print(f"  - {reason}", markup=False, highlight=False)


def _table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def _with_companions(methods: list[str]) -> list[str]:
    """Each method once, followed by its registered companions that are not chosen elsewhere."""
    out: list[str] = []
    for method in methods:
        for name in (method, *registry.get(method).companions):
            if name not in out and (name == method or name not in methods):
                out.append(name)
    return out


@app.command()
def run(config_path: ConfigArg, out: OutOption, strict: StrictOption = False) -> None:
    """Run the configured strategy on the configured sites; write the results contract to OUT.

    Exit status: 0 ok; 3 degraded with --strict (0 without); 4 failed; 2 a bad config or data; 130 Ctrl-C."""
    config = _load(config_path)
    try:
        summary = _run_method(config, config.strategy.name, out, _sites(config, [config.strategy.name]))
    except KeyboardInterrupt:
        errors.print(f"interrupted: completed rounds are in {out}")
        raise typer.Exit(130) from None
    console.print(_results_table("result", [summary]))
    _print_health([summary])
    code = exit_code(summary["status"], strict)
    if code:
        raise typer.Exit(code)


@app.command()
def compare(
    config_path: ConfigArg,
    out: OutOption,
    methods: Annotated[
        str, typer.Option(help=f"comma-separated, from {','.join(registry.names())}")
    ] = "fedavg,cds,local",
    strict: StrictOption = False,
) -> None:
    """Run several methods on the same sites, seed and budget; write comparison.json and report.md.

    Each method runs with its own strategy section: the job's when the job names it, else its defaults
    with the job's values for the keys they share. A method's companions (swt: swt-reversed, for the
    recency bias) run right after it. Exits with the worst of the methods' statuses (as `fedrad run`),
    after writing the comparison and the report."""
    config = _load(config_path)
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in registry.names()]
    if unknown or not chosen:
        registered = ", ".join(registry.names())
        errors.print(f"error: --methods: unknown method(s) {unknown or chosen}; registered: {registered}")
        raise typer.Exit(2)
    chosen = _with_companions(chosen)
    sites = _sites(config, chosen)
    summaries = []
    try:
        for method in chosen:
            summaries.append(_run_method(config, method, out / method, sites))
    except KeyboardInterrupt:
        errors.print(f"interrupted: completed methods and rounds are in {out}")
        raise typer.Exit(130) from None
    finally:
        if summaries:
            write_comparison(out, summaries)
    console.print(_results_table("methods", summaries))
    site_header, rows = site_rows(summaries)
    console.print(_table(f"per-site {primary_metric(summaries).replace('_', ' ')}", site_header, rows))
    console.print(f"report: {out / 'report.md'}")
    _print_health(summaries)
    code = exit_code(worst(s["status"] for s in summaries), strict)
    if code:
        raise typer.Exit(code)


register_deploy_commands(app)  # provision / server / client / status: fedrad/cli/deploy.py
register_data_commands(app)  # data check: fedrad/cli/data.py
register_audit_commands(app)  # audit: fedrad/cli/audit.py


if __name__ == "__main__":
    app()
