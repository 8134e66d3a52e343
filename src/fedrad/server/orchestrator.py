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
"""

from __future__ import annotations

import dataclasses
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedrad.codec import CodecError, views
from fedrad.server.blobs import ModelBlobs
from fedrad.server.ensemble_eval import evaluate_ensemble
from fedrad.server.evaluation import ModelEvaluation, evaluate_models
from fedrad.server.ledger import Ledger
from fedrad.server.validation import UpdateValidator
from fedrad.strategies.base import FitResult, FitTask, Fold, ServerState, Strategy
from fedrad.transport.base import Transport
from fedrad.types import DataKind, FailureKind, Instruction, InstructionKind, Reply, SiteFailure

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


@dataclass(frozen=True)
class RoundRecord:
    round: int
    asked: list[str]
    failures: list[SiteFailure]
    train_metrics: dict[str, dict[str, float]]
    evaluations: dict[str, ModelEvaluation] = field(default_factory=dict)
    bytes: int = 0
    wall_s: float = 0.0


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
    ):
        self.strategy, self.ctx = strategy, ctx
        self.train_sites, self.eval_sites = list(train_sites), list(eval_sites)
        self.rounds, self.eval_every = rounds, eval_every
        self.on_round = on_round

    def run(self, state: ServerState, start_round: int = 0) -> ServerState:
        for round in range(start_round, self.rounds):
            state = self.round(round, state)
        return state

    def round(self, round: int, state: ServerState) -> ServerState:
        started = time.perf_counter()
        tasks = self.strategy.configure(round, state, self.train_sites)
        instructions = self._instructions(round, tasks)
        fold: Fold | None = self.strategy.begin(round, state)  # None: the results come as a list
        results: list[FitResult] = []
        failures: list[SiteFailure] = []
        train_metrics: dict[str, dict[str, float]] = {}
        answered = 0
        for number, reply in self.ctx.transport.stream(instructions):
            if number != answered:
                raise RuntimeError(f"round {round}: reply {number} arrived where reply {answered} was due")
            answered += 1
            result = self._accept(round, tasks[number], instructions[number], reply, failures)
            del reply  # its bytes live on only in the result's arrays (views, no copy)
            if result is None:
                continue
            train_metrics[result.site_id] = dict(result.metrics)
            if fold is not None:
                fold.add(result, owned=True)  # scaled in place; the first update's buffer becomes the sum
            else:
                results.append(result)
            del result
        if answered != len(instructions):
            raise RuntimeError(f"round {round}: {answered} replies to {len(instructions)} instructions")
        del instructions  # the encoded model: the sites have it
        state = fold.finish() if fold is not None else self.strategy.aggregate(round, state, results)
        self.ctx.blobs.retain(state.models.values())  # the old model's form goes, unless it is still the model
        evaluations = {}
        if (round + 1) % self.eval_every == 0 or round + 1 == self.rounds:
            evaluations = self.evaluate(round, state)
            failures += [failure for e in evaluations.values() for failure in e.failures]  # phase "evaluate"
        record = RoundRecord(
            round=round,
            asked=[t.site_id for t in tasks],
            failures=failures,
            train_metrics=train_metrics,
            evaluations=evaluations,
            bytes=self.ctx.ledger.round_bytes(round),
            wall_s=time.perf_counter() - started,
        )
        if self.on_round is not None:
            self.on_round(record, state)
        return state

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
                    | ({} if task.control is None else {DataKind.CONTROL: blobs.encode(task.control)}),
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
        """Book, decode and validate one reply: a FitResult, or None with the reason in `failures`."""
        if reply.site_id != task.site_id:
            raise RuntimeError(f"round {round}: a reply from {reply.site_id} to an instruction for {task.site_id}")
        self.ctx.ledger.record_message(round, "train", reply.site_id, "received", instruction.nbytes())
        self.ctx.ledger.record_message(round, "train", reply.site_id, "sent", reply.nbytes())
        if not reply.ok:
            failures.append(SiteFailure(reply.site_id, reply.error or "unknown error", reply.error_kind))
            return None
        try:
            weights = views(reply.payload[DataKind.WEIGHTS])
            control = views(reply.payload[DataKind.CONTROL]) if DataKind.CONTROL in reply.payload else None
        except (KeyError, CodecError) as exc:
            failures.append(SiteFailure(reply.site_id, f"unreadable reply: {exc}", FailureKind.REJECTED))
            return None
        rejected = self._rejected(task, reply, weights, control)
        if rejected is not None:
            failures.append(SiteFailure(reply.site_id, rejected, FailureKind.REJECTED))
            return None
        return FitResult(reply.site_id, weights, reply.num_examples, dict(reply.metrics), control)

    def _rejected(self, task: FitTask, reply: Reply, weights, control) -> str | None:
        """Why this update must not be aggregated (logged), or None; the same check for every transport.

        SCAFFOLD's control-variate delta gets the same checks against the variate sent (no norm bound:
        it is a correction, not a step).
        """
        if self.ctx.validator is None:
            return None
        expected = {n: a for n, a in task.weights.items() if n not in task.keep_local}  # what comes back
        reason = self.ctx.validator.check(reply.site_id, weights, expected, reply.num_examples)
        if reason is None and (control is None) != (task.control is None):
            what = "control variates it was not sent" if task.control is None else "no control variates"
            reason = f"site {reply.site_id}: update rejected: the reply carries {what}"
        elif reason is None and control is not None:
            unbounded = dataclasses.replace(self.ctx.validator, max_update_norm=None)
            reason = unbounded.check(reply.site_id, control, task.control, reply.num_examples)
            reason = reason and reason.replace("update rejected:", "update rejected: control variates:")
        if reason is not None:
            log.warning("round %d: %s", reply.round, reason)
        return reason
