"""`fedrad provision / server / client / status`: the commands a hospital IT admin runs (docs/deploy.md).

Registered on the app of fedrad.cli by `register(app)`; the engine behind them is
fedrad.run.serve (server) and fedrad.run.join (client).
"""

from __future__ import annotations

import json
import logging
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedrad.cli.options import OverwriteOption, refuse_overwrite, results_folder
from fedrad.config import ConfigError, JobConfig, load_config
from fedrad.pki.kits import KitError
from fedrad.pki.provision import ProvisionError
from fedrad.run.summary import exit_code
from fedrad.server.status import read_status

if TYPE_CHECKING:
    from fedrad.transport.grpc_client import GrpcClient

console = Console(width=None if sys.stdout.isatty() else 160)  # piped (a log, `watch`): the whole table
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
Folder = Annotated[Path, typer.Option(help="a kit folder written by `fedrad provision`")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    errors.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _job(path: Path) -> JobConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def provision(
    project: Annotated[Path | None, typer.Argument(help="project.yaml (omit with --add-site / --revoke-site)")] = None,
    out: Annotated[Path, typer.Option("--out", help="where the CA and the kits go")] = Path("kits"),
    add_site: Annotated[str | None, typer.Option(help="issue a kit for one more site of OUT")] = None,
    revoke_site: Annotated[str | None, typer.Option(help="revoke a site's certificate in OUT's CRL")] = None,
) -> None:
    """Create a project's CA, server kit and one kit per site; or add or revoke a site."""
    from fedrad.pki import provision as prov

    try:
        if add_site is not None:
            kit = prov.add_site(out, add_site)
            console.print(f"kit for {add_site}: {kit}  (copy {out / 'server' / 'kit.json'} to the server too)")
        elif revoke_site is not None:
            crl = prov.revoke_site(out, revoke_site)
            console.print(f"revoked {revoke_site}: {crl}  (copy it to the server kit; it is re-read, no restart)")
        elif project is not None:
            kits = prov.provision(prov.load_project(project), out)
            console.print(f"server kit: {kits.server}")
            for site, folder in kits.sites.items():
                console.print(f"site kit {site}: {folder}")
        else:
            raise _fail("give a project.yaml, --add-site NAME or --revoke-site NAME")
    except (ProvisionError, KitError) as exc:
        raise _fail(str(exc)) from None


def server(
    job: Annotated[Path, typer.Option(help="the job YAML every site approved")],
    kit: Folder,
    out: Annotated[Path, typer.Option("--out", help="results folder: metrics, model, checkpoint, status",
                                      callback=results_folder)],
    resume: Annotated[bool, typer.Option(help="continue after the last checkpointed round in OUT")] = False,
    overwrite: Annotated[bool, OverwriteOption] = False,
    bind: Annotated[str | None, typer.Option(help="host:port to listen on (default all interfaces, kit port)")] = None,
    deadline: Annotated[float, typer.Option(help="seconds a round waits for replies")] = 600.0,
    min_sites: Annotated[
        int | None, typer.Option(help="quorum (default: the job's strategy.min_sites, or 1 without sampling)")
    ] = None,
    quorum_wait: Annotated[float, typer.Option(help="extra seconds to wait for a quorum before failing")] = 600.0,
    wait_sites: Annotated[float, typer.Option(help="seconds to wait for all sites before round 0")] = 60.0,
    poll: Annotated[float, typer.Option(help="seconds a site's request for work is held open")] = 15.0,
    max_uploads: Annotated[
        int, typer.Option(min=1, help="replies read at once (slow links: more; memory ~ (2 + this) x model)")
    ] = 1,
    upload_timeout: Annotated[
        float | None, typer.Option(help="seconds an upload may take from its turn (default: --deadline)")
    ] = None,
    gone_after: Annotated[
        float | None, typer.Option(help="seconds of silence (not training) after which a site is not waited for "
                                        "(default 60; must exceed --poll)")
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="exit 3 when the run is degraded (failed: 4)")] = False,
) -> None:
    """Serve a job to the sites of the server kit over gRPC + mutual TLS.

    Exit status as `fedrad run`: 0 ok; 3 degraded with --strict (0 without); 4 failed (a round short
    of its quorum included); 1 the server cannot go on (kit, checkpoint, port); 2 a bad job."""
    from fedrad.run.federation import FederationError
    from fedrad.run.serve import DeployError, ServerOptions, ServerRun
    from fedrad.server.checkpoint import CheckpointError

    config = _job(job)
    if not resume:
        refuse_overwrite(out, overwrite, "--resume continues it, ")
    _logging()
    quorum = min_sites if min_sites is not None else config.strategy.default_quorum()
    if gone_after is not None and not gone_after > poll:  # an idle site polls every --poll seconds
        raise _fail(f"--gone-after {gone_after:g} must exceed --poll {poll:g}: an idle site would look gone")
    if upload_timeout is not None and not upload_timeout > 0:
        raise _fail(f"--upload-timeout {upload_timeout:g} must be positive")
    options = ServerOptions(deadline, quorum, quorum_wait, wait_sites, poll, bind, max_uploads, upload_timeout,
                            gone_after)  # fmt: skip
    console.print(f"job {config.name}: hash {config.job_hash()}  (each site's admin approves this)")
    try:
        summary = ServerRun(config, kit, out, options, resume).run()
    except (DeployError, CheckpointError, KitError, OSError) as exc:
        raise _fail(str(exc), 1) from None
    except (FederationError, ValueError) as exc:  # a job the server cannot run (fedbn on the tabular MLP, a
        raise _fail(str(exc)) from None  # robust aggregator above strategy.robust_max_mb): exit 2
    console.print(f"done: {summary['rounds']} rounds, pooled {summary['pooled']}; results in {out}")
    _print_health(summary)
    code = exit_code(summary["status"], strict)
    if code:
        raise typer.Exit(code)


def _print_health(summary: dict) -> None:
    """The run's status; a run that is not ok, with its reasons, on stderr."""
    if summary.get("status", "ok") == "ok":
        console.print("status: ok")
        return
    errors.print(f"status: {summary['status']}", markup=False, highlight=False)
    for reason in summary.get("status_reasons", []):
        errors.print(f"  - {reason}", markup=False, highlight=False)


def client(
    kit: Folder,
    data: Annotated[Path, typer.Option(help="this site's data YAML")],
    job: Annotated[Path, typer.Option(help="this site's approved copy of the job YAML")],
    expect_hash: Annotated[str | None, typer.Option(help="refuse to start unless the job hash starts so")] = None,
    server_address: Annotated[str | None, typer.Option("--server", help="host:port (default: the kit's)")] = None,
    backoff_cap: Annotated[float, typer.Option(help="longest wait between reconnection attempts, s")] = 60.0,
    state: Annotated[
        Path | None, typer.Option(help="this site's state file (default: .fedrad-state/ beside the data YAML)")
    ] = None,
) -> None:
    """Run this hospital's site: pull work from the server, train and evaluate locally, reply.

    Retries a server it cannot reach, forever. Exit status (docs/deploy.md, section 10):
    0 the job finished (or Ctrl-C);
    1 the kit cannot be read;
    2 a bad job YAML, data YAML, state file or option;
    3 refused before dialing (site.crt expired, of another CA or site),
      at the TLS handshake (3 times in a row), or as revoked / not allowed;
    4 the server reports that the job failed;
    5 the server ended another job than the one this site approved."""
    from fedrad.pki.certs import check_site_cert
    from fedrad.pki.kits import load_site_kit
    from fedrad.run.join import client_site
    from fedrad.run.serve import DeployError
    from fedrad.transport.grpc_client import Backoff, ClientError, ClientRefused, GrpcClient

    config = _job(job)
    job_hash = config.job_hash()
    if expect_hash is not None and not job_hash.startswith(expect_hash):
        raise _fail(f"{job}: job hash {job_hash} does not match the approved {expect_hash}")
    _logging()
    try:
        backoff = Backoff(base_s=min(0.5, backoff_cap), cap_s=backoff_cap)
    except ValueError as exc:
        raise _fail(f"--backoff-cap: {exc}") from None
    try:
        site_kit = load_site_kit(kit)
    except KitError as exc:
        raise _fail(str(exc), 1) from None
    try:  # what the server's TLS handshake would refuse, said here, before dialing
        check_site_cert(site_kit.cert_pem, site_kit.ca_pem, site_kit.site_id, str(kit / "site.crt"))
    except ValueError as exc:
        raise _fail(f"refused before dialing: {exc}; ask the project's coordinator for a new kit", 3) from None
    try:
        site = client_site(config, site_kit, data, state)
    except (DeployError, ValueError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"site {site_kit.site_id}: job {config.name} hash {job_hash}; only this job will run here")
    seed = zlib.crc32(site_kit.site_id.encode())  # jitter differs between sites
    runner = GrpcClient(site, site_kit, server_address=server_address, backoff=backoff, seed=seed)
    try:
        runner.run()
    except ClientRefused as exc:
        raise _fail(str(exc), 3) from None
    except ClientError as exc:
        raise _fail(str(exc), 1) from None
    except KeyboardInterrupt:
        runner.stop()
    _client_exit(runner, site_kit.site_id, job_hash)


def _client_exit(runner: GrpcClient, site: str, job_hash: str) -> None:
    """The line and exit status for how the client's run ended (0: finished, or stopped)."""
    handled = f"{runner.handled} instructions handled"
    if runner.other_job is not None:
        theirs, mine = runner.other_job[:12], job_hash[:12]
        raise _fail(f"site {site}: the server ended job {theirs}, not this site's job {mine}: compare the job "
                    f"hashes with the coordinator ({handled})", 5)
    if runner.failed:
        raise _fail(f"site {site}: the server reports the job failed: {runner.finished}; {handled}, exiting", 4)
    if runner.finished is not None:
        console.print(f"site {site}: {runner.finished}; {handled}, exiting")


def status(folder: Annotated[Path, typer.Argument(help="the server's --out folder (or its status.json)")]) -> None:
    """Each site's state now and in every completed round (submitted, or its failure's kind), from the
    server's status file; once the run has ended, its status (ok, degraded, failed) and the reasons."""
    try:
        doc = read_status(folder)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    console.print(f"phase: {doc.get('phase')}  round: {doc.get('round')}  updated: {doc.get('updated')}")
    if doc.get("error"):
        console.print(f"error: {doc['error']}", markup=False)
    rounds = doc.get("rounds", [])
    table = Table(title="sites")
    for column in ["site", "now", "late", "MB down", "MB up", *[f"r{r['round']}" for r in rounds]]:
        table.add_column(column)
    for site, entry in doc.get("sites", {}).items():
        history = [r["sites"].get(site, "-") for r in rounds]
        wire = [f"{entry.get(key, 0):.2f}" for key in ("mb_to_site", "mb_from_site")]
        table.add_row(site, entry["state"], str(entry["late"]), *wire, *history)
    console.print(table)
    _print_result((folder if folder.is_dir() else folder.parent) / "summary.json")


def _print_result(path: Path) -> None:
    """The ended run's status and reasons, from its summary.json (nothing while the run goes on)."""
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    console.print(f"result: {result.get('status', 'unknown')}", markup=False)
    for reason in result.get("status_reasons", []):
        console.print(f"  - {reason}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    for command in (provision, server, client, status):
        app.command()(command)
