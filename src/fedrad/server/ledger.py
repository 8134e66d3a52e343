"""The ledger: every byte that crosses a site boundary, by round, phase, site, direction and kind.

Directions are seen from the site: "sent" left the site, "received" arrived at it. This is how
fedrad measures the review's "transferred data" and "communication load" columns.

The privacy column (`epsilon`): with local DP, a site's fit reply releases its model after DP-SGD,
and the row of the weights it sent books what that release spent (the reply's `epsilon_round`,
the increase of its accountant's epsilon), so a site's column sums to the epsilon it has spent.
Rows without a privacy cost (everything else, every job without local DP) hold None.
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
    epsilon: float | None = None  # local DP: the privacy this transfer spent (None: none; rows of old checkpoints)


class Ledger:
    def __init__(self, count_messages: bool = True):
        # Simulation-only baselines book what a real deployment of them would move (CDS: raw data;
        # local-only: nothing) instead of the simulator's internal messages.
        self.count_messages = count_messages
        self.transfers: list[Transfer] = []

    def record(
        self, round: int, phase: str, site_id: str, direction: str, sizes: dict[DataKind, int],
        epsilon: float | None = None,
    ) -> None:
        """Book one message's bytes by kind; `epsilon` (its privacy cost) on its weights row (else its first)."""
        kinds = [DataKind(kind) for kind in sizes]
        carrier = DataKind.WEIGHTS if DataKind.WEIGHTS in kinds else (kinds[0] if kinds else None)
        for kind, nbytes in zip(kinds, sizes.values(), strict=True):
            cost = float(epsilon) if epsilon is not None and kind == carrier else None
            self.transfers.append(Transfer(round, phase, site_id, direction, kind, int(nbytes), cost))

    def record_message(
        self, round: int, phase: str, site_id: str, direction: str, sizes: dict, epsilon: float | None = None
    ) -> None:
        if self.count_messages:
            self.record(round, phase, site_id, direction, sizes, epsilon)

    def epsilon_by_site(self) -> dict[str, float]:
        """The privacy column summed per site (local DP): each site's epsilon spent; {} when nothing was booked."""
        spent: dict[str, float] = defaultdict(float)
        for t in self.transfers:
            if t.epsilon is not None:
                spent[t.site_id] += t.epsilon
        return dict(sorted(spent.items()))

    def round_bytes(self, round: int) -> int:
        return sum(t.nbytes for t in self.transfers if t.round == round)

    def summary(self) -> dict:
        by_kind: dict[str, int] = defaultdict(int)
        by_phase: dict[str, int] = defaultdict(int)
        by_site: dict[str, dict] = defaultdict(lambda: {"sent": 0, "received": 0, "by_kind": defaultdict(int)})
        uploaded: dict[str, int] = defaultdict(int)  # what the sites sent to train: the upload a link must carry
        for t in self.transfers:
            by_kind[t.kind.value] += t.nbytes
            if t.direction == "sent" and t.phase == "train":
                uploaded[t.kind.value] += t.nbytes
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
            "train_upload_by_kind": dict(sorted(uploaded.items())),
        }

    def rows(self) -> list[dict]:
        return [asdict(t) | {"kind": t.kind.value} for t in self.transfers]
