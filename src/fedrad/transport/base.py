"""The Transport contract: instructions out to sites, one reply per instruction back, in order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from fedrad.types import Instruction, Reply


class Transport(Protocol):
    def dispatch(self, instructions: Sequence[Instruction]) -> list[Reply]:
        """Deliver each instruction and return one reply per instruction, failures included."""
        ...

    def stream(self, instructions: Sequence[Instruction]) -> Iterator[tuple[int, Reply]]:
        """The same replies, (instruction number, reply), yielded in instruction order as each is
        ready, so the caller can fold one and let it go before the next is taken in."""
        ...
