"""Secure aggregation around an averaging strategy: the server learns the sum of the sites' updates, never one.

Per round (Bonawitz et al. 2017, semi-honest server; `fedrad.secagg` holds the protocol):
`prepare` runs the key exchange (advertise, share) through the round's channel and sends each site
that completed it a masked FIT; `begin` returns `SecureSum`, which adds the masked uint32 uploads
mod 2^32 as they arrive (streaming: one model-sized sum, one upload); `settle` asks the survivors
for the shares that remove the masks of the sites in the sum and of those that dropped after the
key exchange; `finish` reads the sum as the weighted mean update and hands the model it gives to the
inner strategy as its one "reply", as central DP does, so FedAvg takes it and FedAvgM / FedAdam
step along it.

The weights are public: each site announces its example count n_u (the server knows its declared
count anyway), weights its update by n_u / N (N: the examples of the sites that advertised), and
the server divides the sum by the survivors' share of N. Integer entries (BatchNorm's
num_batches_tracked) are the global model's: they count batches and are never masked.

Example:
    >>> strategy = SecureAggregation(FedAvg(), SecAggSettings(threshold=2, clip_norm=100.0))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from fedrad.secagg import crypto, masking
from fedrad.secagg.participant import SecAggSettings
from fedrad.secagg.protocol import RoundProtocol
from fedrad.strategies.base import (
    AVERAGING,
    GLOBAL,
    Channel,
    FitResult,
    FitTask,
    Fold,
    MaskedFit,
    ServerState,
    Strategy,
    StrategyWrapper,
    from_one_reply,
)
from fedrad.types import RoundAborted, Weights

SECURE = "secure-aggregation"  # the site id of the one result the inner strategy folds


def refusal(name: str) -> str | None:
    """Why secure aggregation cannot wrap strategy `name` (one line), or None."""
    if name in AVERAGING:
        return None
    return (f"secure_aggregation cannot wrap strategy {name!r}: only the averaging strategies "
            f"({', '.join(sorted(AVERAGING))}) reduce to a sum the masks can hide")


class SecureAggregation(StrategyWrapper):
    def __init__(self, inner: Strategy, settings: SecAggSettings):
        super().__init__(inner)
        self.settings = settings
        self.protocols: dict[int, RoundProtocol] = {}  # this round's (the previous rounds' are dropped)
        self.layouts: dict[int, tuple[masking.Layout, frozenset[str]]] = {}  # and its layout and kept entries

    def prepare(self, round: int, state: ServerState, tasks: list[FitTask], channel: Channel) -> list[FitTask]:
        tasks = self.inner.prepare(round, state, tasks, channel)
        if not tasks:
            return tasks
        layouts = {masking.Layout.of(t.weights, t.keep_local) for t in tasks}
        if len(layouts) != 1 or any(t.control is not None for t in tasks):
            raise RoundAborted(f"round {round}: secure aggregation needs one model sent to every site and no control "
                               "variates; the round kept the previous model")
        protocol = RoundProtocol(round, [t.site_id for t in tasks], self.settings)
        self.protocols = {round: protocol}
        self.layouts = {round: (next(iter(layouts)), tasks[0].keep_local)}
        protocol.take_advertised(channel.ask("advertise", protocol.advertise()), channel.reject)
        protocol.take_shares(channel.ask("share", protocol.share()), channel.reject)
        layout = self.layouts[round][0]
        return [
            dataclasses.replace(t, masked=MaskedFit(protocol.masked(t.site_id), layout.shapes(),
                                                    protocol.keys[t.site_id].num_examples))  # fmt: skip
            for t in tasks if t.site_id in protocol.u2
        ]

    def begin(self, round: int, state: ServerState) -> SecureSum:
        return SecureSum(self, round, state)

    def aggregate(self, round: int, state: ServerState, results: Sequence[FitResult]) -> ServerState:
        raise NotImplementedError("secure aggregation streams its sum (begin); it has no list aggregation")

    def settle(self, round: int, fold: Fold | None, channel: Channel) -> None:
        if isinstance(fold, SecureSum):
            fold.unmask(channel)


class SecureSum:
    """The round's masked uploads summed mod 2^32 (uint32, one model-sized buffer), unmasked once by `unmask`."""

    def __init__(self, wrapper: SecureAggregation, round: int, state: ServerState):
        self.wrapper, self.round, self.state = wrapper, round, state
        self.protocol = wrapper.protocols.get(round)
        self.layout, self.keep_local = wrapper.layouts.get(round, (None, frozenset()))
        self.start = state.models[GLOBAL]
        self.sum: np.ndarray | None = None
        self.sites: list[str] = []
        self.examples = 0
        self.unmasked = False

    def add(self, result: FitResult, owned: bool = False) -> None:
        if self.protocol is None or result.site_id not in self.protocol.u2:
            raise ValueError(f"site {result.site_id}: a masked update outside the round's key exchange")
        words = self.layout.join(result.weights, np.uint32)
        self.sum = words if self.sum is None else self.sum + words  # wraps mod 2^32, as the masks do
        self.sites.append(result.site_id)
        self.examples += result.num_examples

    def unmask(self, channel: Channel) -> None:
        if not self.sites:
            return
        survivors = sorted(self.sites)
        replies = channel.ask("unmask", self.protocol.unmask(survivors))
        correction = self.protocol.correction(replies, channel.reject, survivors, self.layout)
        self.sum = self.sum - correction
        self.unmasked = True

    def finish(self) -> ServerState:
        if not self.sites:  # every asked site failed: the model is kept, the round says why
            return self.state
        if not self.unmasked:
            raise RuntimeError(f"round {self.round}: the masked sum was never unmasked")
        weighted = crypto.from_fixed(self.sum, self.wrapper.settings.fraction_bits)  # sum of (n_u / N) d_u
        mean = weighted * (self.protocol.total_examples / self.examples)  # sum of (n_u / W) d_u, W: the survivors'
        model: Weights = {n: a.copy() for n, a in self.start.items() if n not in self.keep_local}  # integer counters
        model |= masking.apply(self.start, self.layout.split(mean), self.layout)
        # what a site would reply: the sent entries it does not keep
        return from_one_reply(self.wrapper.inner, self.round, self.state, FitResult(SECURE, model, 1))


def wrap(strategy: Strategy, settings: SecAggSettings) -> SecureAggregation:
    why = refusal(strategy.name)
    if why:
        raise ValueError(why)
    return SecureAggregation(strategy, settings)

