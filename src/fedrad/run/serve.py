"""`fedrad server`: the simulator's own engine served over gRPC + mutual TLS.

The server runs the same Orchestrator, Strategy, Ledger and RunDirectory as `fedrad run`; only
the transport differs (GrpcServerTransport instead of in-process Sites). It adds what a network
needs: a round deadline with a quorum (`fedrad.server.quorum`), a status file, and a checkpoint
after every round so a restarted server (`--resume`) continues from the last completed round.
A round short of its quorum ends the run: the summary of the completed rounds is written with
`status: failed` (`fedrad.run.summary`) and the sites are told the job failed. So does any other
exception that escapes the round loop (a server bug: no site's reply can raise one, see
`fedrad.server.orchestrator`): status.json says `failed` with the reason in one line, and
`fedrad server` exits 4. A resumed run takes the update-norm history from the checkpoint's metrics
lines, so its norm bound is the uninterrupted run's. The hospital's side is `fedrad.run.join`.

    summary = ServerRun(config, Path("kits/server"), Path("runs/fl")).run()
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedrad.config import JobConfig
from fedrad.pki.kits import load_server_kit
from fedrad.run.methods import method_extras
from fedrad.run.simulate import (
    build_strategy,
    build_task,
    initial_weights,
    privacy_block,
    update_validator,
    wrapped,
)
from fedrad.run.summary import run_summary, with_health
from fedrad.server.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    previous_path,
    restore_ledger,
    save_checkpoint,
)
from fedrad.server.ledger import Ledger
from fedrad.server.orchestrator import Orchestrator, RoundRecord, RunContext, norm_history, one_line
from fedrad.server.quorum import QuorumError, QuorumTransport
from fedrad.server.results import RunDirectory
from fedrad.server.status import STATUS_FILE, StatusFile
from fedrad.strategies import central_dp
from fedrad.strategies.base import ServerState
from fedrad.transport.grpc_transport import GrpcServerTransport

log = logging.getLogger(__name__)


class DeployError(RuntimeError):
    """The server or a client cannot go on; one line naming the file, the site or the round."""


@dataclass(frozen=True)
class ServerOptions:
    deadline_s: float = 600.0  # a round closes this long after it opens ...
    min_sites: int = 1  # ... if at least this many sites replied; otherwise it waits longer,
    quorum_wait_s: float = 600.0  # up to this much, and then fails with a clear status
    wait_sites_s: float = 60.0  # before round 0: how long to wait for every site to connect
    poll_s: float = 15.0  # how long a site's request for work is held open
    bind: str | None = None  # default: all interfaces, the port in the kit
    max_uploads: int = 1  # replies read at once: 1 keeps memory at ~3 models; slow links want more
    upload_timeout_s: float | None = None  # each upload's window from its turn; None: deadline_s
    gone_after_s: float | None = None  # a site silent this long (not training) is not waited for; None: 60 s


@dataclass
class ServerRun:
    """One job served over gRPC + mTLS to the sites in the server kit; writes the results contract."""

    config: JobConfig
    kit_dir: Path
    out: Path
    options: ServerOptions = ServerOptions()
    resume: bool = False

    def run(self) -> dict:
        started = time.perf_counter()
        kit, method = load_server_kit(self.kit_dir), self.config.strategy.name
        task, strategy = build_task(self.config), build_strategy(self.config, method)
        if strategy.simulation_only:
            raise DeployError(f"strategy {method!r} is a simulation-only baseline; `fedrad run` runs it")
        if self.config.attack is not None:
            raise DeployError("job key 'attack' simulates hostile sites: simulation only (`fedrad run`)")
        sites, job_hash = sorted(kit.sites), self.config.job_hash()
        # central DP's noise from a secret seed kept beside the checkpoints: the sites know the job seed
        noise_seed = central_dp.server_noise_seed(self.out) if self.config.privacy.mode == "central" else 0
        strategy = wrapped(self.config, strategy, sites, noise_seed)
        ledger, start, lines = Ledger(), 0, []
        state = strategy.initial_state(initial_weights(task, self.config.seed, self.config), sites)
        if self.resume:
            start, state, lines = self._restore(ledger, method, job_hash)
        directory = RunDirectory(self.out, method, self.config.to_yaml())
        if lines:
            (self.out / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
        options = self.options
        transport = GrpcServerTransport(
            kit, bind=options.bind, reply_timeout_s=options.deadline_s, poll_s=options.poll_s,
            quorum=options.min_sites, quorum_wait_s=options.quorum_wait_s, max_uploads=options.max_uploads,
            upload_timeout_s=options.upload_timeout_s, gone_after_s=options.gone_after_s,
        )
        with transport, StatusFile(self.out / STATUS_FILE, transport.board.snapshot, options.poll_s) as status:
            rounds = strategy.num_rounds(self.config.train.rounds, sites)  # CWT / SWT: one round per visit
            # which process serves, on which port (the kit's, or the one the system chose for `--bind HOST:0`)
            status.update(phase="waiting for sites", round=start, job_hash=job_hash, method=method,
                          pid=os.getpid(), port=transport.port)
            missing = transport.wait_for_sites(sites, options.wait_sites_s) if start < rounds else set()
            if start >= rounds:
                log.info("the checkpoint holds the final round %d: nothing left to run", rounds - 1)
            if missing:
                log.warning("starting round %d without sites that have not connected: %s", start, sorted(missing))

            final = [state]  # the model after the last completed round (its health is checked)

            def on_round(record: RoundRecord, new_state: ServerState) -> None:
                directory.on_round(record, new_state)
                final[:] = [new_state]
                lines.append((self.out / "metrics.jsonl").read_text().splitlines()[-1])
                save_checkpoint(
                    self.out / CHECKPOINT_FILE,
                    Checkpoint(record.round, method, job_hash, new_state, ledger.rows(), list(lines)),
                )
                status.completed(record)
                status.update(round=record.round + 1)

            ctx = RunContext(QuorumTransport(transport, options.min_sites), ledger, task, job_hash, self.config.seed,
                             validator=update_validator(self.config), declared=transport.declared_examples)
            orchestrator = Orchestrator(strategy, ctx, sites, sites, rounds, self.config.evaluation.every, on_round,
                                        norm_history=norm_history([json.loads(line) for line in lines]))
            status.update(phase="running")
            quorum, stopped, outcome = None, None, f"job {self.config.name} finished after {rounds} rounds"
            try:
                orchestrator.run(state, start)
                status.update(phase="done", round=rounds)
            except QuorumError as exc:  # the run failed: its summary says so (status "failed"), the sites are told
                quorum, outcome = str(exc), f"job {self.config.name} failed: {exc}"
                status.update(phase="failed", error=quorum)
            except Exception as exc:  # a server bug: the run failed, said in one line, never a `running` status
                log.exception("the server stopped in round %d", len(lines))
                stopped = one_line(f"round {len(lines)}: {type(exc).__name__}: {exc}", limit=300)
                outcome = f"job {self.config.name} failed: the server stopped: {stopped}"
                status.update(phase="failed", error=stopped)
            failed = quorum is not None or stopped is not None
            untold = transport.finish(job_hash, outcome, linger_s=2 * options.poll_s + 5, failed=failed)
            if untold:
                log.info("sites not told that the job finished (not polling): %s", sorted(untold))
        summary = run_summary(method, directory.records, ledger, time.perf_counter() - started, False)
        if self.resume:  # the whole run, not only the rounds this process ran: from every metrics line
            summary |= _from_metrics_lines(lines)
        wire = transport.traffic()  # serialized protobuf, both directions: what the ledger's payloads cost
        summary["wire_bytes"] = {s: {"to_site": t.to_site, "from_site": t.from_site} for s, t in sorted(wire.items())}
        summary |= {"rounds": len(lines), "resumed_from": start if self.resume else None,
                    "metric": task.primary_metric}
        summary |= method_extras(strategy, directory.records, sites)  # of the rounds this process ran
        summary["privacy"] = privacy_block(self.config, strategy, directory.records, len(lines))
        rows = [json.loads(line) for line in lines]  # every round's
        summary = with_health(summary, rows, final[-1], quorum, stopped)
        directory.write_summary(summary)
        return summary

    def _restore(self, ledger: Ledger, method: str, job_hash: str) -> tuple[int, ServerState, list[str]]:
        """The last checkpoint that verifies: the current one, else the previous one (one round runs again)."""
        path = self.out / CHECKPOINT_FILE
        checkpoint, source = _verified_checkpoint(path)
        if checkpoint.job_hash != job_hash or checkpoint.strategy != method:
            raise DeployError(
                f"{source}: written for job {checkpoint.job_hash[:12]} ({checkpoint.strategy}), "
                f"not this job {job_hash[:12]} ({method})"
            )
        if source != path and path.exists():  # kept for inspection; the next checkpoint then keeps prev, the good one
            path.replace(path.with_name(f"{path.stem}.refused{path.suffix}"))
        restore_ledger(ledger, checkpoint.ledger_rows)
        log.info("resuming after round %d from %s", checkpoint.round, source)
        return checkpoint.round + 1, checkpoint.state, checkpoint.metrics_lines


def _verified_checkpoint(path: Path) -> tuple[Checkpoint, Path]:
    """`path`'s checkpoint, or else the previous one, and the file it came from; DeployError if neither verifies.

    A write never leaves `path` missing (fedrad.server.checkpoint); one missing all the same (moved
    or deleted) beside a previous checkpoint is treated as refused: prev is the last one left."""
    previous = previous_path(path)
    if not path.exists() and not previous.exists():
        raise DeployError(f"{path}: no checkpoint to resume from (run without --resume to start afresh)")
    try:
        return load_checkpoint(path), path
    except CheckpointError as exc:
        refused = str(exc) if path.exists() else f"{path}: missing"
    if not previous.exists():
        raise DeployError(f"{refused}; no {previous.name} beside it to fall back on")
    try:
        checkpoint = load_checkpoint(previous)
    except CheckpointError as exc:
        raise DeployError(f"{refused}; {previous.name} too: {str(exc).removeprefix(f'{previous}: ')}") from None
    log.warning("%s; resuming from %s instead: round %d runs again", refused, previous, checkpoint.round + 1)
    return checkpoint, previous


def _from_metrics_lines(lines: Sequence[str]) -> dict:
    """A resumed run's failures (all rounds) and pooled / per-site metrics (the last evaluated round)."""
    rows = [json.loads(line) for line in lines]
    evaluated = [row for row in rows if row.get("pooled")]
    last = evaluated[-1] if evaluated else {"pooled": {}, "sites": {}}
    return {"failures": sum(len(row["failures"]) for row in rows), "pooled": last["pooled"], "sites": last["sites"]}
