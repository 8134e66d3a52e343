"""The Orchestrator: the only round loop, the same over every transport.

One round: 1) the strategy says whom to ask, 2) instructions go out through the transport,
3) replies come back and are booked in the ledger, 4) failed sites become data, 5) the strategy
aggregates the rest, 6) the models are evaluated on every site's test set, 7) the round is handed
to `on_round` (which writes metrics and the checkpoint).

Memory: replies are taken one at a time, in instruction order (`Transport.stream`). A strategy
whose `begin` returns a Fold (FedAvg, FedProx, FedBN, FedOpt) folds each accepted update into its running sum
before the next reply is read, so the server holds the global model (sharing memory with its
encoded form), the sum and one update, whatever the number of sites. Other strategies get the
list of results. The order is fixed, so the network gives the simulator's numbers bit for bit.

No reply can end the run: anything that goes wrong while one site's reply is read, validated or
folded is that site's failure (REJECTED, or ERROR for a fold that raised), logged with its
traceback. Every check runs before an update touches the running sum; if folding itself raises
(a server bug), the half-added sum is never used: the round keeps the previous state. So does a
round whose aggregate holds a non-finite value, or whose aggregation raised; the round record's
`notes` say why (`fedrad.run.summary` makes the run degraded).

Norm history: each accepted update's norm (`fedrad.server.validation`) is recorded in the site's
train metrics under `update_norm` (so metrics.jsonl and a checkpoint carry it) and kept by round;
the next round's relative bound is measured against the latest round's median. A resumed run
passes `norm_history(lines)` and so bounds its next round as the uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedrad.codec import CodecError, views
from fedrad.privacy.summary import EPSILON_ROUND
from fedrad.server.blobs import ModelBlobs
from fedrad.server.ensemble_eval import evaluate_ensemble
from fedrad.server.evaluation import ModelEvaluation, evaluate_models
from fedrad.server.ledger import Ledger
from fedrad.server.phases import PhaseChannel
from fedrad.server.validation import UPDATE_NORM, NormReference, UpdateValidator, masked_problem, model_norm
from fedrad.strategies.base import FitResult, FitTask, Fold, ServerState, Strategy
from fedrad.transport.base import Transport
from fedrad.types import (
    DataKind,
    FailureKind,
    Instruction,
    InstructionKind,
    Reply,
    RoundAborted,
    SiteFailure,
    Weights,
)

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What the loop needs besides the strategy: where messages go and where bytes are booked."""

    transport: Transport
    ledger: Ledger
    task: object
    job_hash: str = ""
    seed: int = 0
    validator: UpdateValidator | None = field(default_factory=UpdateValidator)  # None: trust every update
    blobs: ModelBlobs = field(default_factory=ModelBlobs)  # each model serialized once: evaluation, then FIT
    # A site's declared training-example count (its data card), or None if it declared none; the
    # validator rejects a reply claiming more. None here: no site declared anything.
    declared: Callable[[str], int | None] | None = None


@dataclass(frozen=True)
class RoundRecord:
    round: int
    asked: list[str]
    failures: list[SiteFailure]
    train_metrics: dict[str, dict[str, float]]
    evaluations: dict[str, ModelEvaluation] = field(default_factory=dict)
    bytes: int = 0
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)  # run-level, one line each: why the round kept the old state


def norm_history(lines: Sequence[Mapping]) -> dict[int, list[float]]:
    """The accepted update norms by round, from metrics.jsonl lines (a resumed run's history)."""
    history = {}
    for line in lines:
        norms = [m[UPDATE_NORM] for m in line["train"].values() if UPDATE_NORM in m]
        if norms:
            history[int(line["round"])] = norms
    return history


def instruction_seed(seed: int, round: int, site_id: str) -> int:
    """A site's shuffling seed for a round: independent of which other sites were asked."""
    return int(np.random.SeedSequence([seed, round, zlib.crc32(site_id.encode())]).generate_state(1)[0])


class Orchestrator:
    def __init__(
        self,
        strategy: Strategy,
        ctx: RunContext,
        train_sites: Sequence[str],
        eval_sites: Sequence[str],
        rounds: int,
        eval_every: int = 1,
        on_round: Callable[[RoundRecord, ServerState], None] | None = None,
        norm_history: Mapping[int, Sequence[float]] | None = None,  # a resumed run's (`norm_history(lines)`)
    ):
        self.strategy, self.ctx = strategy, ctx
        self.train_sites, self.eval_sites = list(train_sites), list(eval_sites)
        self.rounds, self.eval_every = rounds, eval_every
        self.on_round = on_round
        self.norms: dict[int, list[float]] = {r: list(n) for r, n in (norm_history or {}).items() if n}
        self._undeclared: set[str] = set()  # sites already logged as having declared no example count

    def run(self, state: ServerState, start_round: int = 0) -> ServerState:
        for round in range(start_round, self.rounds):
            state = self.round(round, state)
        return state

    def round(self, round: int, state: ServerState) -> ServerState:
        started = time.perf_counter()
        asked = self.strategy.configure(round, state, self.train_sites)
        failures: list[SiteFailure] = []
        notes: list[str] = []
        seed = lambda site: instruction_seed(self.ctx.seed, round, site)  # noqa: E731
        channel = PhaseChannel(self.ctx.transport, self.ctx.ledger, round, self.ctx.job_hash, seed, failures)
        tasks = self._prepare(round, state, asked, channel, notes)  # secure aggregation's key exchange, or asked
        instructions = self._instructions(round, tasks)
        fold: Fold | None = self.strategy.begin(round, state) if tasks else None  # None: the results come as a list
        results: list[FitResult] = []
        train_metrics: dict[str, dict[str, float]] = {}
        answered = 0
        for number, reply in self.ctx.transport.stream(instructions) if instructions else ():
            if number != answered:
                raise RuntimeError(f"round {round}: reply {number} arrived where reply {answered} was due")
            answered += 1
            result = self._accept(round, tasks[number], instructions[number], reply, failures)
            del reply  # its bytes live on only in the result's arrays (views, no copy)
            if result is None:
                continue
            if fold is None:
                results.append(result)
            elif not notes:  # after a fold raised, its sum is never used: nothing more is folded into it
                notes = self._fold(round, fold, result, failures)  # scaled in place; the first buffer becomes the sum
                if notes:
                    continue  # this site's update is a failure, not an accepted one
            train_metrics[result.site_id] = dict(result.metrics)
            del result
        if answered != len(instructions):
            raise RuntimeError(f"round {round}: {answered} replies to {len(instructions)} instructions")
        del instructions  # the encoded model: the sites have it
        norms = [m[UPDATE_NORM] for m in train_metrics.values() if UPDATE_NORM in m]
        if norms:
            self.norms[round] = norms
        if not notes and tasks:
            notes = self._settle(round, fold, channel)  # secure aggregation's unmasking
        if not notes:
            state, notes = self._aggregate(round, state, fold, results)
        self.ctx.blobs.retain(state.models.values())  # the old model's form goes, unless it is still the model
        evaluations = {}
        if (round + 1) % self.eval_every == 0 or round + 1 == self.rounds:
            evaluations = self._evaluate(round, state, failures)
            failures += [failure for e in evaluations.values() for failure in e.failures]  # phase "evaluate"
        record = RoundRecord(
            round=round,
            asked=[t.site_id for t in asked],
            failures=failures,
            train_metrics=train_metrics,
            evaluations=evaluations,
            bytes=self.ctx.ledger.round_bytes(round),
            wall_s=time.perf_counter() - started,
            notes=notes,
        )
        if self.on_round is not None:
            self.on_round(record, state)
        return state

    def _prepare(self, round: int, state: ServerState, asked: list[FitTask], channel: PhaseChannel,
                 notes: list[str]) -> list[FitTask]:
        """The strategy's phases before the fits; no task when it aborts the round (the reason in `notes`)."""
        tasks: list[FitTask] = []
        notes += self._phases(round, "before", lambda: tasks.extend(self.strategy.prepare(round, state, asked,
                                                                                          channel)))  # fmt: skip
        return [] if notes else tasks

    def _settle(self, round: int, fold: Fold | None, channel: PhaseChannel) -> list[str]:
        """The strategy's phases after the fits (unmasking); a note when the round cannot be completed."""
        return self._phases(round, "after", lambda: self.strategy.settle(round, fold, channel))

    def _phases(self, round: int, when: str, run: Callable[[], object]) -> list[str]:
        """`run` the strategy's phases; the round's note if it aborted (RoundAborted) or raised (a server bug:
        this round fails, not the run)."""
        try:
            run()
        except RoundAborted as exc:
            log.warning("%s", exc)
            return [one_line(str(exc), 400)]
        except Exception as exc:
            log.exception("round %d: the phases %s the fits failed", round, when)
            return [f"round {round}: the phases {when} the fits failed ({_one_line(exc)}); "
                    "the round kept the previous model"]
        return []

    def _fold(self, round: int, fold: Fold, result: FitResult, failures: list[SiteFailure]) -> list[str]:
        """Fold one validated update; if that raises (a server bug), the site's failure and a note."""
        try:
            fold.add(result, owned=True)
        except Exception as exc:  # the sum may be half-added: the round must not use it
            log.exception("round %d: folding site %s's update failed", round, result.site_id)
            why = _one_line(exc)
            failures.append(SiteFailure(result.site_id, f"site {result.site_id}: update not folded: {why}"))
            return [f"round {round}: folding site {result.site_id}'s update failed ({why}); "
                    "the round kept the previous model"]
        return []

    def _aggregate(
        self, round: int, state: ServerState, fold: Fold | None, results: list[FitResult]
    ) -> tuple[ServerState, list[str]]:
        """The round's new state, or the previous one with the reason: aggregation raised, or is not finite."""
        try:
            new = fold.finish() if fold is not None else self.strategy.aggregate(round, state, results)
        except Exception as exc:
            log.exception("round %d: aggregation failed", round)
            return state, [f"round {round}: aggregation failed ({_one_line(exc)}); the round kept the previous model"]
        bad = _non_finite(new)
        if bad:
            log.warning("round %d: the aggregate holds %d non-finite value(s); keeping the previous model", round, bad)
            return state, [f"round {round}: the aggregate was not finite ({bad} non-finite value(s)); "
                           "the round kept the previous model"]
        return new, []

    def _evaluate(self, round: int, state: ServerState, failures: list[SiteFailure]) -> dict[str, ModelEvaluation]:
        """`evaluate`, where an exception (a reply the evaluation code could not handle) fails this
        round's evaluation at every site instead of the run."""
        try:
            return self.evaluate(round, state)
        except Exception as exc:
            log.exception("round %d: evaluation failed", round)
            why = f"evaluation of round {round} failed: {_one_line(exc)}"
            failures += [SiteFailure(site, why, FailureKind.ERROR, phase="evaluate") for site in self.eval_sites]
            return {}

    def evaluate(self, round: int, state: ServerState) -> dict[str, ModelEvaluation]:
        """Every model on every test set, or, for a strategy that combines outputs, the ensemble."""
        if self.strategy.evaluation == "outputs":
            return evaluate_ensemble(self.strategy.combine_outputs, self.eval_sites, round, self.ctx)
        # local_names: each site evaluates with its own values for these (FedBN's BatchNorm)
        return evaluate_models(state.models, self.eval_sites, round, self.ctx, self.strategy.local_names)

    def _instructions(self, round: int, tasks: Sequence[FitTask]) -> list[Instruction]:
        # One serialization per distinct model (and control variate), however many sites get it; the
        # model evaluated last round is sent in the form it was evaluated in (ModelBlobs).
        blobs = self.ctx.blobs
        instructions = []
        for task in tasks:
            instructions.append(
                Instruction(
                    round=round,
                    site_id=task.site_id,
                    kind=InstructionKind.FIT,
                    payload={DataKind.WEIGHTS: blobs.encode(task.weights)}
                    | ({} if task.control is None else {DataKind.CONTROL: blobs.encode(task.control)})
                    | ({} if task.masked is None else {DataKind.SECAGG: task.masked.request}),
                    fit=task.config,
                    job_hash=self.ctx.job_hash,
                    seed=instruction_seed(self.ctx.seed, round, task.site_id),
                    keep_local=task.keep_local,
                )
            )
        blobs.retain([t.weights for t in tasks] + [t.control for t in tasks if t.control is not None])
        return instructions

    def _accept(
        self, round: int, task: FitTask, instruction: Instruction, reply: Reply, failures: list[SiteFailure]
    ) -> FitResult | None:
        """Book, decode and validate one reply: a FitResult, or None with the reason in `failures`.

        Whatever the reply holds, it is at most this site's failure: an exception while reading or
        validating it (the codec's OverflowError on a forged header, say) rejects it, with the
        exception named in one line and the traceback logged.
        """
        if reply.site_id != task.site_id:  # the transport's contract, not the site's bytes
            raise RuntimeError(f"round {round}: a reply from {reply.site_id} to an instruction for {task.site_id}")
        self.ctx.ledger.record_message(round, "train", reply.site_id, "received", instruction.nbytes())
        self.ctx.ledger.record_message(round, "train", reply.site_id, "sent", reply.nbytes(),
                                       epsilon=_epsilon_round(reply))  # local DP: what this release spent
        if not reply.ok:
            failures.append(SiteFailure(reply.site_id, reply.error or "unknown error", reply.error_kind))
            return None
        try:
            return self._read(round, task, reply, failures)
        except Exception as exc:  # a reply never ends the run
            log.warning("round %d: site %s: reply could not be handled", round, task.site_id, exc_info=True)
            reason = f"site {task.site_id}: update rejected: the reply could not be handled: {_one_line(exc)}"
            failures.append(SiteFailure(task.site_id, reason, FailureKind.REJECTED))
            return None

    def _read(self, round: int, task: FitTask, reply: Reply, failures: list[SiteFailure]) -> FitResult | None:
        try:
            weights = views(reply.payload[DataKind.WEIGHTS])
            control = views(reply.payload[DataKind.CONTROL]) if DataKind.CONTROL in reply.payload else None
        except (KeyError, CodecError) as exc:
            failures.append(SiteFailure(reply.site_id, f"unreadable reply: {exc}", FailureKind.REJECTED))
            return None
        rejected, norm = self._rejected(round, task, reply, weights, control)
        if rejected is not None:
            failures.append(SiteFailure(reply.site_id, rejected, FailureKind.REJECTED))
            return None
        # the server-computed norm replaces any value the site reported under that key
        metrics = dict(reply.metrics) | ({} if math.isnan(norm) else {UPDATE_NORM: norm})
        return FitResult(reply.site_id, weights, reply.num_examples, metrics, control)

    def _rejected(self, round: int, task: FitTask, reply: Reply, weights, control) -> tuple[str | None, float]:
        """Why this update must not be aggregated (logged), or None; and its norm. The same check for
        every transport.

        SCAFFOLD's control-variate delta gets the same checks against the variate sent, but no norm
        bound: it is a correction, not a step.
        """
        if task.masked is not None:  # secure aggregation: only the form can be judged
            reason = masked_problem(reply.site_id, weights, control, task.masked, reply.num_examples,
                                    self._declared(reply.site_id), self.ctx.validator)  # fmt: skip
            if reason is not None:
                log.warning("round %d: %s", reply.round, reason)
            return reason, float("nan")
        expected = {n: a for n, a in task.weights.items() if n not in task.keep_local}  # what comes back
        if self.ctx.validator is None:
            return None, float("nan")
        declared = self._declared(reply.site_id)
        verdict = self.ctx.validator.judge(
            reply.site_id, weights, expected, reply.num_examples, self._reference(round, expected), declared
        )
        reason = verdict.reason
        if reason is None and (control is None) != (task.control is None):
            what = "control variates it was not sent" if task.control is None else "no control variates"
            reason = f"site {reply.site_id}: update rejected: the reply carries {what}"
        elif reason is None and control is not None:
            unbounded = dataclasses.replace(self.ctx.validator, max_update_norm=None, norm_multiplier=None)
            reason = unbounded.check(reply.site_id, control, task.control, reply.num_examples)
            reason = reason and reason.replace("update rejected:", "update rejected: control variates:")
        if reason is not None:
            log.warning("round %d: %s", reply.round, reason)
        return reason, verdict.norm

    def _reference(self, round: int, sent: Weights) -> NormReference:
        """The relative bound's reference: the latest earlier round's median accepted norm, else the model's norm."""
        earlier = [r for r in self.norms if r < round]
        if earlier:
            latest = max(earlier)
            median = statistics.median(self.norms[latest])
            return NormReference(median, f"the median update norm {median:.3g} of round {latest}")
        norm = model_norm(sent)
        return NormReference(norm, f"the norm {norm:.3g} of the model sent")

    def _declared(self, site_id: str) -> int | None:
        declared = self.ctx.declared(site_id) if self.ctx.declared is not None else None
        if declared is None and site_id not in self._undeclared:
            self._undeclared.add(site_id)
            cap = self.ctx.validator.max_num_examples if self.ctx.validator is not None else None
            log.info("site %s declared no training-example count: its replies are held to the cap %s", site_id, cap)
        return declared


def _non_finite(state: ServerState) -> int:
    """How many float entries of the state's models and extra arrays are NaN or infinite."""
    arrays = [a for weights in state.models.values() for a in weights.values()] + list(state.extra.values())
    return sum(int(np.count_nonzero(~np.isfinite(a))) for a in arrays if np.asarray(a).dtype.kind in "fc")


def one_line(text: str, limit: int = 200) -> str:
    """`text` on one line (whitespace runs collapsed), cut to `limit` characters: a reason for a log or a status."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(exc: BaseException) -> str:
    return one_line(f"{type(exc).__name__}: {exc}")


def _epsilon_round(reply: Reply) -> float | None:
    """The epsilon a local-DP fit reply says it spent (the ledger's privacy column); None without DP
    or for a value that is not a finite, non-negative number (the reply is judged elsewhere)."""
    value = reply.metrics.get(EPSILON_ROUND) if reply.ok else None
    return float(value) if isinstance(value, int | float) and np.isfinite(value) and value >= 0 else None
