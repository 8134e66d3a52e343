"""A round's quorum over the network: a training round in which too few sites replied fails the run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fedrad.transport.base import Transport
from fedrad.types import Instruction, InstructionKind, Reply


class QuorumError(RuntimeError):
    """Too few sites replied to a training round; one line naming the round and each failed site."""


class QuorumTransport:
    """Wraps a transport: a training round in which fewer than `min_sites` sites replied fails."""

    def __init__(self, inner: Transport, min_sites: int):
        self.inner, self.min_sites = inner, min_sites

    def dispatch(self, instructions: Sequence[Instruction]) -> list[Reply]:
        return [reply for _, reply in self.stream(instructions)]

    def stream(self, instructions: Sequence[Instruction]) -> Iterator[tuple[int, Reply]]:
        """The inner transport's replies; after the last, DeployError if too few training sites replied."""
        fit, ok, why = 0, 0, []
        for number, reply in self.inner.stream(instructions):
            if instructions[number].kind == InstructionKind.FIT:
                fit, ok = fit + 1, ok + reply.ok
                if not reply.ok:
                    why.append(f"{reply.site_id}: {reply.error}")
            yield number, reply
        needed = min(self.min_sites, fit)
        if ok < needed:
            round = instructions[0].round
            raise QuorumError(f"round {round}: {ok} of {fit} sites replied, the quorum is {needed}: {'; '.join(why)}")
