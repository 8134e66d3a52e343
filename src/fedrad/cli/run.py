"""fedrad's command line: `fedrad run CONFIG --out DIR` and `fedrad compare CONFIG --methods ... --out DIR`."""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedrad.cli.audit import register as register_audit_commands
from fedrad.cli.data import register as register_data_commands
from fedrad.cli.deploy import register as register_deploy_commands
from fedrad.cli.options import OverwriteOption, refuse_overwrite, results_folder
from fedrad.config import ConfigError, JobConfig, for_strategy, load_config
from fedrad.report.comparison import method_header, method_rows, primary_metric, site_rows, write_comparison
from fedrad.report.sections import run_name
from fedrad.run.federation import FederationError, check_privacy, check_strategy, resolve_kind
from fedrad.run.simulate import MethodRun, build_sites, build_task, check_robust_and_attack, initial_weights
from fedrad.run.summary import exit_code, worst
from fedrad.server.evaluation import summarize
from fedrad.server.results import atomic_write
from fedrad.strategies import registry

app = typer.Typer(add_completion=False, help="Federated learning for medical imaging.", no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _version(value: bool) -> None:
    if value:
        from fedrad import __version__

        print(f"fedrad {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print fedrad's version and exit")] = False,  # fmt: skip
) -> None:
    """Federated learning for medical imaging."""
# Piped output (make demo under CI, a log file) gets a width that fits the tables instead of 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
ConfigArg = Annotated[Path, typer.Argument(metavar="CONFIG", help="job YAML")]
OutOption = Annotated[Path, typer.Option("--out", help="results folder", callback=results_folder)]
StrictOption = Annotated[
    bool, typer.Option("--strict", help="exit 3 when a run is degraded (a failed run always exits 4)")
]


def _load(config_path: Path) -> JobConfig:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _sites(config: JobConfig, methods: list[str], sites: list | None = None) -> list:
    """The job's sites (or `sites`, already built); a site with no usable data or refused preprocessing, or a
    method the task or the job's privacy cannot support (fedbn on the tabular MLP, cds with central DP),
    ends the command before anything runs (exit 2)."""
    try:
        sites = build_sites(config) if sites is None else sites
        kind = resolve_kind(config, sites)
        for method in methods:
            check_strategy(method, kind)
            check_robust_and_attack(config, method, sites)  # an aggregator it cannot wrap, an attack too large
            check_privacy(for_strategy(config, method))  # local or central DP: a strategy it cannot run
            job = for_strategy(config, method)
            task = build_task(job, sites)  # task.freeze: a prefix that matches nothing
            if job.task.init is not None:  # task.init: the file, its digest and its fit to the model
                initial_weights(task, job.seed, job)
        return sites
    except FederationError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _run_method(config: JobConfig, method: str, out: Path, sites, label: str | None = None) -> dict:
    job = for_strategy(config, method)  # the job as this method runs it (its own strategy section)
    total = registry.get(method).rounds(job.train.rounds, len(sites), job.strategy)
    metric = build_task(job, sites).primary_metric
    label = label or method
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"{label:>8}", total=total)

        def on_round(record) -> None:
            text = f"{label:>8}"
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
        name = run_name(s["method"], s.get("sweep"))
        status, where = s.get("status", "ok"), f"{name}: " if len(summaries) > 1 else ""
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


NO_DP = ("inf", "none")  # privacy.epsilon=inf (or none): that point runs without DP (privacy.mode none)


@dataclass(frozen=True)
class SweepPoint:
    """One point of `--sweep KEY=V1,V2,...` (given once or more): the job with each KEY set, and what each
    run's summary records."""

    config: JobConfig
    # summary["sweep"]: {key, value (as the job holds it; null: no DP), label}; with several keys, the keys
    # joined by commas, the values and labels as lists, and `keys`: one such record per key
    record: dict[str, Any]


def _refuse(message: str) -> typer.Exit:
    errors.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _scalar(token: str) -> Any:
    """A value as YAML reads it (8 -> 8, 0.05 -> 0.05, null -> None, rdp -> 'rdp')."""
    try:
        value = yaml.safe_load(token)
    except yaml.YAMLError:
        return token
    return value if value is None or isinstance(value, bool | int | float | str) else token


def _set(mapping: dict, key: str, value: Any) -> None:
    """Set the dotted `key` in the job mapping, creating missing sections (validation refuses unknown ones)."""
    *parents, leaf = key.split(".")
    for depth, part in enumerate(parents, 1):
        if mapping.get(part) is None:  # an absent optional section (data.partition): validation judges it
            mapping[part] = {}
        elif not isinstance(mapping[part], dict):
            raise ValueError(f"key '{'.'.join(parents[:depth])}' is a value, not a section of the job")
        mapping = mapping[part]
    mapping[leaf] = value


def _get(mapping: dict, key: str) -> Any:
    for part in key.split("."):
        mapping = mapping.get(part) if isinstance(mapping, dict) else None
    return mapping


def _value(config: JobConfig, key: str) -> Any:
    """The job's value of the dotted `key`, as its YAML holds it; a key the dump leaves out at its default
    (strategy.aggregator mean and the robust keys beside it) is read from the section itself."""
    dumped = config.model_dump(mode="json")
    *parents, leaf = key.split(".")
    section = _get(dumped, ".".join(parents)) if parents else dumped
    if isinstance(section, dict) and leaf in section:
        return section[leaf]
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part, None)
    return value


def _sweep_point(config: JobConfig, settings: list[tuple[str, str]]) -> SweepPoint:
    """The job with each (key, token) of `settings` set, validated as a job YAML is; ValueError (one line,
    naming the point) if it is not one."""
    raw = config.model_dump(mode="json")
    where = " ".join(f"{key}={token}" for key, token in settings)
    offs = set()
    for key, token in settings:
        if key == "privacy.epsilon" and token.lower() in NO_DP:
            offs.add(key)
            raw["privacy"] = {**raw["privacy"], "mode": "none", "epsilon": None}
        elif key == "privacy.epsilon" and config.privacy.mode == "none":
            raise ValueError(f"{where}: the job's privacy.mode is 'none'; set privacy.mode (local or "
                             "central) in the job to sweep epsilon ('inf' or 'none' is a point without DP)")
        else:
            try:
                _set(raw, key, _scalar(token))
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
    try:
        swept = JobConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"]) or settings[0][0]
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ValueError(f"{where}: key '{loc}': {message}") from None
    swept._folder = config._folder  # relative data.sites stay relative to the job YAML
    records = []
    for key, _ in settings:
        value = _value(swept, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: key '{key}': not a finite number (inf means no DP for privacy.epsilon only)")
        label = "inf" if key in offs else (f"{value:g}" if isinstance(value, float) else str(value))
        records.append({"key": key, "value": value, "label": re.sub(r"[^A-Za-z0-9._+-]", "_", label)})
    if len(records) == 1:
        return SweepPoint(swept, records[0])
    record = {"key": ",".join(r["key"] for r in records), "value": [r["value"] for r in records],
              "label": ",".join(f"{r['key'].rsplit('.', 1)[-1]}={r['label']}" for r in records), "keys": records}
    return SweepPoint(swept, record)


def _sweep_values(text: str) -> tuple[str, list[str]]:
    """`KEY=V1,V2,...` as (KEY, [V1, V2, ...]); a malformed one ends the command (exit 2)."""
    key, _, values = text.partition("=")
    key, tokens = key.strip(), [v.strip() for v in values.split(",") if v.strip()]
    if not key or not tokens:
        raise _refuse(f"--sweep '{text}': expected KEY=V1,V2,... with one job key, e.g. privacy.epsilon=1,4,8,inf")
    if key in ("strategy", "strategy.name"):
        raise _refuse(f"--sweep {key}: the methods are chosen with --methods")
    return key, tokens


def _sweep(config: JobConfig, texts: list[str]) -> list[SweepPoint]:
    """Each `--sweep KEY=V1,V2,...` (given once or more: their cartesian product, the first key outermost)
    as one validated job per point; a bad key or value ends the command (exit 2) before anything runs."""
    axes = [_sweep_values(text) for text in texts]
    keys = [key for key, _ in axes]
    if len(set(keys)) < len(keys):
        raise _refuse(f"--sweep {', '.join(keys)}: a key is swept twice")
    combos = list(itertools.product(*(range(len(tokens)) for _, tokens in axes)))
    try:
        points = [_sweep_point(config, [(key, tokens[i]) for (key, tokens), i in zip(axes, combo, strict=True)])
                  for combo in combos]  # fmt: skip
    except ValueError as exc:
        raise _refuse(f"--sweep {exc}") from None
    for k, text in enumerate(texts):  # each key's labels, along its axis (the other keys at their first value)
        along = [p for p, combo in zip(points, combos, strict=True)
                 if all(c == 0 for j, c in enumerate(combo) if j != k)]  # fmt: skip
        labels = [(p.record if len(keys) == 1 else p.record["keys"][k])["label"] for p in along]
        if len(set(labels)) < len(labels):
            raise _refuse(f"--sweep {text}: a value is given twice ({', '.join(labels)})")
    return points


def _points_sites(points: list[SweepPoint | None], config: JobConfig, methods: list[str]) -> list:
    """Each point's sites (built once per distinct data section), every method checked on every point."""
    built: dict[str, list] = {}
    out = []
    for job in (point.config if point else config for point in points):
        data = json.dumps([job.data.model_dump(mode="json"), job.seed, job.task.model_dump(mode="json")])
        built[data] = _sites(job, methods, built.get(data))
        out.append(built[data])
    return out


def _with_sweep(run_dir: Path, summary: dict, point: SweepPoint | None) -> dict:
    """The summary with its sweep value, also in its run folder's summary.json."""
    if point is None:
        return summary
    summary = {**summary, "sweep": point.record}
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2).encode())
    return summary


@app.command()
def run(config_path: ConfigArg, out: OutOption, strict: StrictOption = False,
        overwrite: Annotated[bool, OverwriteOption] = False) -> None:
    """Run the configured strategy on the configured sites; write the results contract to OUT.

    Exit status: 0 ok; 3 degraded with --strict (0 without); 4 failed; 2 a bad config or data, or OUT
    holding an earlier run's results without --overwrite; 130 Ctrl-C."""
    config = _load(config_path)
    refuse_overwrite(out, overwrite)
    try:
        summary = _run_method(config, config.strategy.name, out, _sites(config, [config.strategy.name]))
    except KeyboardInterrupt:
        errors.print(f"interrupted: completed rounds are in {out}")
        raise typer.Exit(130) from None
    console.print(_results_table("result", [summary]))
    console.print(f"results in {out}: summary.json, metrics.jsonl, model.safetensors, config.yaml")
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
    sweep: Annotated[
        list[str] | None,
        typer.Option(help="KEY=V1,V2,...: one job key (dotted, e.g. privacy.epsilon=1,4,8,inf), several values; "
                     "every method runs at each value, in OUT/METHOD@LEAF=VALUE (fedavg@epsilon=8). privacy.epsilon "
                     "inf or none: no DP at that point; other epsilons need the job's privacy.mode local or central. "
                     "Given twice or more: every combination (attack.sites=0,1,2 and strategy.aggregator=mean,median "
                     "in OUT/METHOD@sites=1@aggregator=median); attack.sites=0 is no attack"),
    ] = None,
    strict: StrictOption = False,
    overwrite: Annotated[bool, OverwriteOption] = False,
) -> None:
    """Run several methods on the same sites, seed and budget; write comparison.json and report.md.

    Each method runs with its own strategy section: the job's when the job names it, else its defaults
    with the job's values for the keys they share. A method's companions (swt: swt-reversed, for the
    recency bias) run right after it. With --sweep, every method runs on the job with the key set to
    each value in turn (validated as the job YAML is, before anything runs), each summary records it as
    `sweep`, and the report plots the pooled metric (and, after `fedrad audit` of the run folders, the
    membership AUC) against the value. --sweep given several times runs every combination; with
    attack.sites among the keys the report plots the pooled metric against the number of attackers,
    one line per defence (method and strategy.aggregator). Exits with the worst of the runs'
    statuses (as `fedrad run`), after writing the comparison and the report."""
    config = _load(config_path)
    refuse_overwrite(out, overwrite)
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in registry.names()]
    if unknown or not chosen:
        registered = ", ".join(registry.names())
        errors.print(f"error: --methods: unknown method(s) {unknown or chosen}; registered: {registered}")
        raise typer.Exit(2)
    chosen = _with_companions(chosen)
    points: list[SweepPoint | None] = _sweep(config, sweep) if sweep else [None]
    point_sites = _points_sites(points, config, chosen)
    summaries = []
    try:
        for point, sites in zip(points, point_sites, strict=True):
            for method in chosen:
                name = run_name(method, point.record if point else None)
                summary = _run_method(point.config if point else config, method, out / name, sites, name)
                summaries.append(_with_sweep(out / name, summary, point))
    except KeyboardInterrupt:
        errors.print(f"interrupted: completed methods and rounds are in {out}")
        raise typer.Exit(130) from None
    finally:
        if summaries:
            write_comparison(out, summaries)
    console.print(_results_table("methods", summaries))
    site_header, rows = site_rows(summaries)
    console.print(_table(f"per-site {primary_metric(summaries).replace('_', ' ')}", site_header, rows))
    figures = sorted(p.name for p in out.glob("*.png"))
    console.print(f"report: {out / 'report.html'} (self-contained) and {out / 'report.md'}; figures in {out}: "
                  f"{', '.join(figures) or 'none'}; each method's run folder: {out}/METHOD")
    _print_health(summaries)
    code = exit_code(worst(s["status"] for s in summaries), strict)
    if code:
        raise typer.Exit(code)


register_deploy_commands(app)  # provision / server / client / status: fedrad/cli/deploy.py
register_data_commands(app)  # data check: fedrad/cli/data.py
register_audit_commands(app)  # audit: fedrad/cli/audit.py


if __name__ == "__main__":
    app()
