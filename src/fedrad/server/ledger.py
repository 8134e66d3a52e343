"""The ledger: every byte that crosses a site boundary, by round, phase, site, direction and kind.

Directions are seen from the site: "sent" left the site, "received" arrived at it. This is how
fedrad measures the review's "transferred data" and "communication load" columns.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

from fedrad.types import DataKind


@dataclass(frozen=True)
class Transfer:
    round: int
    phase: str  # "train" or "evaluate"
    site_id: str
    direction: str  # "sent" or "received", seen from the site
    kind: DataKind
    nbytes: int


class Ledger:
    def __init__(self, count_messages: bool = True):
        # Simulation-only baselines book what a real deployment of them would move (CDS: raw data;
        # local-only: nothing) instead of the simulator's internal messages.
        self.count_messages = count_messages
        self.transfers: list[Transfer] = []

    def record(self, round: int, phase: str, site_id: str, direction: str, sizes: dict[DataKind, int]) -> None:
        for kind, nbytes in sizes.items():
            self.transfers.append(Transfer(round, phase, site_id, direction, DataKind(kind), int(nbytes)))

    def record_message(self, round: int, phase: str, site_id: str, direction: str, sizes: dict) -> None:
        if self.count_messages:
            self.record(round, phase, site_id, direction, sizes)

    def round_bytes(self, round: int) -> int:
        return sum(t.nbytes for t in self.transfers if t.round == round)

    def summary(self) -> dict:
        by_kind: dict[str, int] = defaultdict(int)
        by_phase: dict[str, int] = defaultdict(int)
        by_site: dict[str, dict] = defaultdict(lambda: {"sent": 0, "received": 0, "by_kind": defaultdict(int)})
        for t in self.transfers:
            by_kind[t.kind.value] += t.nbytes
            by_phase[t.phase] += t.nbytes
            site = by_site[t.site_id]
            site[t.direction] += t.nbytes
            site["by_kind"][t.kind.value] += t.nbytes
        for kind in DataKind:
            by_kind.setdefault(kind.value, 0)
        return {
            "total_bytes": sum(by_kind.values()),
            "by_kind": dict(by_kind),
            "by_phase": dict(by_phase),
            "by_site": {s: {**v, "by_kind": dict(v["by_kind"])} for s, v in sorted(by_site.items())},
        }

    def rows(self) -> list[dict]:
        return [asdict(t) | {"kind": t.kind.value} for t in self.transfers]
