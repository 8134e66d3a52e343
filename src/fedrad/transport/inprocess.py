"""The in-process transport: sites are objects in this process, called one after another."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from fedrad.types import Instruction, Reply


class InProcessTransport:
    """Calls `site.handle` directly. A site that raises becomes a Reply with `error` set."""

    def __init__(self, sites: Mapping[str, object]):
        self.sites = dict(sites)

    def dispatch(self, instructions: Sequence[Instruction]) -> list[Reply]:
        return [self._deliver(instruction) for instruction in instructions]

    def stream(self, instructions: Sequence[Instruction]) -> Iterator[tuple[int, Reply]]:
        for number, instruction in enumerate(instructions):
            yield number, self._deliver(instruction)

    def _deliver(self, instruction: Instruction) -> Reply:
        site = self.sites.get(instruction.site_id)
        try:
            if site is None:
                raise LookupError(f"no site named {instruction.site_id!r} in this federation")
            return site.handle(instruction)
        except Exception as exc:  # a failed site is data, never the end of the run
            return Reply(
                round=instruction.round,
                site_id=instruction.site_id,
                kind=instruction.kind,
                error=f"{type(exc).__name__}: {exc}",
            )
