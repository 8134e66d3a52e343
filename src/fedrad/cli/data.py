"""`fedrad data check SITE.yaml [--k 5]`: what a hospital's admin runs before joining a federation.

It reads the site's data with the job's readers, audits DICOM headers for identifiers (PS3.15
Basic Profile, `fedrad.data.deid`), and prints per-file findings, a summary, every skipped file
with its reason, and the site's data card (aggregate counts only, cells under k suppressed).
Exit code 0: the site has usable data; 1: it has none; 2: the site YAML cannot be used.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedrad.data.deid import FileAudit, audit_paths, summarize
from fedrad.data.readers import DicomSource, SiteDataConfigError, SiteFile, Skipped, read_source
from fedrad.data.readers.config import load_site_file

data_app = typer.Typer(add_completion=False, help="Check a site's data before it joins a federation.",
                       no_args_is_help=True)  # fmt: skip
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in header:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _audit(site: SiteFile) -> list[FileAudit]:
    """Header audits of a DICOM site's files (other sources carry no DICOM header)."""
    if not isinstance(site.data, DicomSource):
        return []
    from fedrad.data.readers.dicom import list_files

    return audit_paths(list_files(site.data.path, ignore=(site.data.labels_csv,)))


def _print_audit(audits: list[FileAudit], source: str) -> None:
    if not audits:
        console.print(f"de-identification audit: no DICOM headers to audit (source {source})")
        return
    rows = []
    for a in audits:
        if a.error:
            rows.append([a.path, f"unreadable: {a.error}", "", ""])
            continue
        found = sorted({f.keyword for f in a.identifiers()})
        rows.append([a.path, ", ".join(found) or "none", a.burned_in_annotation or "absent (check pixels)",
                     str(a.private_tags)])  # fmt: skip
    console.print(_table("identifiers found (attribute names only, never values)",
                         ["file", "identifying attributes with a value", "burned-in annotation", "private tags"],
                         rows))  # fmt: skip
    s = summarize(audits)
    summary = [
        ["files", str(s.num_files)],
        ["unreadable", str(s.num_unreadable)],
        ["files with identifiers", str(s.num_with_identifiers)],
        ["files with private tags", str(s.num_with_private_tags)],
        ["burned-in annotation YES", str(s.burned_in_yes)],
        ["burned-in flag absent", str(s.burned_in_absent)],
    ] + [[f"  {keyword}", f"{count} file(s)"] for keyword, count in s.attribute_counts.items()]
    console.print(_table("de-identification summary (PS3.15 Basic Profile)", ["", "count"], summary))


def _print_skipped(skipped: list[Skipped]) -> None:
    if not skipped:
        console.print("skipped: none")
        return
    console.print(_table(f"skipped ({len(skipped)})", ["file", "reason"], [[s.path, s.reason] for s in skipped]))


def check_site(path: Path, k: int | None) -> int:
    """Print the check of one site YAML; return the exit code."""
    try:
        site = load_site_file(path)
    except SiteDataConfigError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    if k is not None:
        site = site.model_copy(update={"data": site.data.model_copy(update={"suppress_below": k})})
    console.print(f"site {site.site_id}: source {site.data.source}, {site.data.path}")
    _print_audit(_audit(site), site.data.source)
    try:
        data, skipped = read_source(site.data, site.site_id)
    except ValueError as exc:  # no usable data, a missing folder or label column
        errors.print(f"error: site {site.site_id}: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 1
    _print_skipped(skipped)
    card = [[key, str(value)] for key, value in data.card.items()]
    title = f"data card of {site.site_id} (aggregate only; cells under k={data.card.get('suppress_below')} suppressed)"
    console.print(_table(title, ["field", "value"], card))
    usable = len(data.train) + len(data.val) + len(data.test)
    console.print(f"usable: {usable} sample(s) (train {len(data.train)}, val {len(data.val)}, test {len(data.test)}); "
                  f"skipped: {len(skipped)}")  # fmt: skip
    return 0 if len(data.train) else 1


@data_app.command()
def check(
    site_yaml: Annotated[Path, typer.Argument(metavar="SITE.yaml", help="the site's data YAML (docs/data.md)")],
    k: Annotated[int | None, typer.Option("--k", min=1, help="data card: suppress cells under k patients")] = None,
) -> None:
    """Read a site's data, audit it for identifiers, and print its skipped files and data card."""
    code = check_site(site_yaml, k)
    if code:
        raise typer.Exit(code)


def _label_mix(targets, segmentation: bool) -> str:
    """A split's label distribution ("0: 12 (60%), 1: 8 (40%)"), or its lesion-pixel share for masks."""
    import numpy as np

    if not len(targets):
        return "-"
    if segmentation:
        return f"lesion pixels {float(np.mean(targets > 0.5)):.2%}"
    classes, counts = np.unique(targets, return_counts=True)
    return ", ".join(f"{int(c)}: {n} ({n / len(targets):.0%})" for c, n in zip(classes, counts, strict=True))


@data_app.command()
def sites(
    job_yaml: Annotated[Path, typer.Argument(metavar="JOB.yaml", help="a job config (fedrad run / compare)")],
) -> None:
    """The federation a job builds: per site, its split sizes and label distribution (non-IID at a glance)."""
    from fedrad.config import ConfigError, load_config
    from fedrad.run.federation import FederationError, load_federation

    try:
        config = load_config(job_yaml)
        federation = load_federation(config, report=lambda line: errors.print(line, markup=False))
    except (ConfigError, FederationError) as exc:
        errors.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    rows = []
    for data in federation.sites:
        segmentation = data.train.targets.ndim >= 3
        sizes = [str(len(split)) for split in (data.train, data.val, data.test)]
        mix = _label_mix(data.train.targets, segmentation)
        rows.append([data.site_id, *sizes, mix, str(tuple(data.train.inputs.shape[1:]))])
    title = f"job {config.name}: data source {config.data.source}"
    console.print(_table(title, ["site", "train", "val", "test", "train labels", "input shape"], rows))


def register(app: typer.Typer) -> None:
    """Add the `data` command group (`fedrad data check`, `fedrad data sites`) to fedrad's app."""
    app.add_typer(data_app, name="data")
