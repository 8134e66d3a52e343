"""The in-process transport: sites are objects in this process, called one after another."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from fedrad.types import FailureKind, Instruction, Reply, failure_kind


class InProcessTransport:
    """Calls `site.handle` directly. A site that raises becomes a Reply with `error` set.

    The reply's kind is the exception's (`fedrad.types.failure_kind`: a SiteError refusal is REFUSED,
    anything unexpected ERROR); an unknown site is DROPPED, as one that never connected would be.
    """

    def __init__(self, sites: Mapping[str, object]):
        self.sites = dict(sites)

    def declared_examples(self, site_id: str) -> int | None:
        """The training examples a site holds (`len(site.data.train)`), as a deployed site declares them
        in its first request; None for an unknown site or one without data (a stub)."""
        data = getattr(self.sites.get(site_id), "data", None)  # a Site holds its SiteData; a test stub may not
        return len(data.train) if data is not None else None

    def dispatch(self, instructions: Sequence[Instruction]) -> list[Reply]:
        return [self._deliver(instruction) for instruction in instructions]

    def stream(self, instructions: Sequence[Instruction]) -> Iterator[tuple[int, Reply]]:
        for number, instruction in enumerate(instructions):
            yield number, self._deliver(instruction)

    def _deliver(self, instruction: Instruction) -> Reply:
        site = self.sites.get(instruction.site_id)
        if site is None:  # as a site that never connected to a server
            return self._failed(instruction, f"no site named {instruction.site_id!r} in this federation",
                                FailureKind.DROPPED)
        try:
            return site.handle(instruction)
        except Exception as exc:  # a failed site is data, never the end of the run
            return self._failed(instruction, f"{type(exc).__name__}: {exc}", failure_kind(exc))

    @staticmethod
    def _failed(instruction: Instruction, error: str, kind: FailureKind) -> Reply:
        return Reply(instruction.round, instruction.site_id, instruction.kind, error=error, error_kind=kind)
