"""Extra message phases within a round (secure aggregation's key exchange and unmasking), over the
round's own transport: `PhaseChannel` is the `Channel` the orchestrator hands `Strategy.prepare` and
`Strategy.settle`.

Every phase message is a SECAGG instruction whose DataKind.SECAGG payload is the strategy's bytes;
each is booked in the ledger (phase "train", kind "secagg") both ways, like every other message, so
the cost of the protocol is measured, not estimated. A site that fails a phase (dropped, refused,
timed out: the transport's reply says which) or answers with anything but one SECAGG payload is
that round's failure, with the phase in its reason; the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fedrad.server.ledger import Ledger
from fedrad.transport.base import Transport
from fedrad.types import DataKind, FailureKind, Instruction, InstructionKind, SiteFailure


class PhaseChannel:
    def __init__(self, transport: Transport, ledger: Ledger, round: int, job_hash: str,
                 seed: Callable[[str], int], failures: list[SiteFailure]):  # fmt: skip
        self.transport, self.ledger, self.round, self.job_hash = transport, ledger, round, job_hash
        self.seed, self.failures = seed, failures

    def ask(self, phase: str, requests: Mapping[str, bytes]) -> dict[str, bytes]:
        instructions = [
            Instruction(round=self.round, site_id=site, kind=InstructionKind.SECAGG, payload={DataKind.SECAGG: blob},
                        job_hash=self.job_hash, seed=self.seed(site))  # fmt: skip
            for site, blob in requests.items()
        ]
        answers: dict[str, bytes] = {}
        if not instructions:
            return answers
        for number, reply in self.transport.stream(instructions):
            instruction = instructions[number]
            site = instruction.site_id
            if reply.site_id != site:  # the transport's contract, not the site's bytes
                raise RuntimeError(f"round {self.round}: a reply from {reply.site_id} to an instruction for {site}")
            self.ledger.record_message(self.round, "train", site, "received", instruction.nbytes())
            self.ledger.record_message(self.round, "train", site, "sent", reply.nbytes())
            if not reply.ok:
                kind = reply.error_kind or FailureKind.ERROR
                self.failures.append(SiteFailure(site, f"secure aggregation ({phase}): {reply.error}", kind))
                continue
            if set(reply.payload) != {DataKind.SECAGG}:
                self.reject(site, f"{phase}: the reply carries {sorted(reply.payload)}, not one secagg payload")
                continue
            answers[site] = bytes(reply.payload[DataKind.SECAGG])
        return answers

    def reject(self, site_id: str, reason: str) -> None:
        reason = f"site {site_id}: secure aggregation: {reason}"
        self.failures.append(SiteFailure(site_id, reason, FailureKind.REJECTED))
