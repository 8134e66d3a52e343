"""Simulated attacks on a federation (the job's `attack:`), to measure the defences. Simulation only.

Which sites attack: the last `attack.sites` training sites, in the job's order (a phantom partition's
`site-5`, `site-6`, `site-7` for 3 of 8), so the attackers of a smaller count are among those of a larger
one and a run is reproducible; `sites: 0` is no attack. summary.json records them:
`attack: {kind, scale, sites: [...], scale_used: [...]}`.

Every attack but label flipping rewrites the attackers' FIT replies on their way to the server
(`AttackTransport`, around the in-process transport): each attacker trains honestly, then replaces
its update u = w - g (w its trained model, g the model it was sent) over the trainable entries
(`aggregate.trainable_names`; BatchNorm running statistics and counters are sent as trained, since
a negative variance would give the attacker away outright) by

- `sign_flip`: g - s u (s = `scale`, default 1; "boosted sign-flipped" is s > 1);
- `boost`: g + s u (model replacement, Bagdasaryan et al. 2020; default s = the number of sites asked
  that round, which makes FedAvg's mean about the attacker's own model);
- `noise`: g + N(0, s^2) per coordinate (default s = 1), seeded by (job seed, round, site);
- `little_is_enough` (Baruch et al. 2019): mean - z std, coordinate-wise, of the honest sites' trained
  models of the round (the attackers collude and see the honest replies: the round's replies are
  collected before any is handed on; with no honest reply, of the attackers' own); every attacker
  sends the same model. z = `scale`, default Baruch et al.'s z_max = Phi^-1((n - s) / n),
  s = floor(n / 2 + 1) - m for n sites asked and m attackers among them;
- `label_flip`: data, not update: the attackers train (and validate) on labels y -> C - 1 - y
  (segmentation masks: 1 - mask); their test sets, and so the pooled metric, keep the true labels.

Evaluation replies are never rewritten. The server's update validator (`validation:`) still judges
every reply: a boosted update whose norm exceeds `norm_multiplier` x the previous round's median is
rejected there, which is itself a defence (docs/robustness.md).

Example:
    >>> transport = AttackTransport(InProcessTransport(sites), config.attack, ["site-7"], seed=0)
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from fedrad.codec import encode, views
from fedrad.data.base import SiteData, Split
from fedrad.run.federation import FederationError
from fedrad.strategies.aggregate import trainable_names
from fedrad.types import DataKind, Instruction, InstructionKind, Reply, Weights

TAG = 0x41545443  # "ATTC": keeps the noise attack's stream apart from every other seeded draw
UPDATE_ATTACKS = ("sign_flip", "boost", "noise", "little_is_enough")


def attackers(attack: Any, site_ids: Sequence[str]) -> list[str]:
    """The attacking sites: the last `attack.sites` of `site_ids` (none without an attack); FederationError
    (one line) when that would leave no honest site."""
    if attack is None or attack.sites == 0:
        return []
    if attack.sites >= len(site_ids):
        raise FederationError(f"attack.sites {attack.sites}: the job has {len(site_ids)} training site(s); "
                              "at least one must stay honest")  # fmt: skip
    return list(site_ids[-attack.sites :])


def flip_labels(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Class labels y -> C - 1 - y; masks (any targets of more than one dimension) -> 1 - mask."""
    if targets.ndim > 1:
        return (1 - targets).astype(targets.dtype)
    return (num_classes - 1 - targets).astype(targets.dtype)


def poisoned(attack: Any, sites: Sequence[SiteData], attacking: Sequence[str], num_classes: int) -> list[SiteData]:
    """The sites as the attack leaves them: label flipping flips the attackers' train and validation labels;
    every other attack leaves the data alone."""
    if attack is None or attack.kind != "label_flip" or not attacking:
        return list(sites)

    def flipped(split: Split) -> Split:
        return Split(split.inputs, flip_labels(split.targets, num_classes))

    return [dataclasses.replace(d, train=flipped(d.train), val=flipped(d.val)) if d.site_id in attacking else d
            for d in sites]  # fmt: skip


def little_is_enough_z(asked: int, attacking: int) -> float:
    """Baruch et al. 2019's z_max for n sites asked, m of them attackers: Phi^-1((n - s) / n),
    s = floor(n / 2 + 1) - m (at least 1)."""
    from scipy.stats import norm  # lazy: scipy.stats is slow to import

    s = max(1, math.floor(asked / 2 + 1) - attacking)
    return float(norm.ppf((asked - s) / asked))


class AttackTransport:
    """A transport whose attacking sites' FIT replies are rewritten (module docstring); the rest pass as they are."""

    def __init__(self, inner: Any, attack: Any, attacking: Sequence[str], seed: int = 0):
        self.inner, self.attack, self.attacking, self.seed = inner, attack, frozenset(attacking), seed
        self.scale_used: dict[int, float] = {}  # round -> the scale (z for little_is_enough) applied

    def declared_examples(self, site_id: str) -> int | None:
        return self.inner.declared_examples(site_id)

    def dispatch(self, instructions: Sequence[Instruction]) -> list[Reply]:
        return [reply for _, reply in self.stream(instructions)]

    def stream(self, instructions: Sequence[Instruction]) -> Iterator[tuple[int, Reply]]:
        attacked = [self._attacks(i) for i in instructions]
        if not any(attacked):
            yield from self.inner.stream(instructions)
            return
        if self.attack.kind == "little_is_enough":  # the colluders wait for the round's honest replies
            replies = list(self.inner.dispatch(instructions))
            target = self._little_is_enough(instructions, replies, attacked)
            for number, reply in enumerate(replies):
                yield number, self._replace(reply, target) if attacked[number] and target is not None else reply
            return
        for number, reply in self.inner.stream(instructions):
            yield number, self._rewrite(instructions[number], reply, len(instructions)) if attacked[number] else reply

    def _attacks(self, instruction: Instruction) -> bool:
        return (self.attack.kind in UPDATE_ATTACKS and instruction.kind == InstructionKind.FIT
                and instruction.site_id in self.attacking)  # fmt: skip

    def _rewrite(self, instruction: Instruction, reply: Reply, asked: int) -> Reply:
        """sign_flip, boost or noise on one attacker's reply (a failed reply passes as it is)."""
        if not reply.ok or DataKind.WEIGHTS not in reply.payload:
            return reply
        sent, trained = views(instruction.payload[DataKind.WEIGHTS]), views(reply.payload[DataKind.WEIGHTS])
        kind = self.attack.kind
        scale = self.attack.scale if self.attack.scale is not None else (float(asked) if kind == "boost" else 1.0)
        self.scale_used[instruction.round] = scale
        rng = np.random.default_rng(
            np.random.SeedSequence([self.seed, instruction.round, TAG, zlib.crc32(instruction.site_id.encode())])
        )
        out: Weights = dict(trained)
        for name in sorted(n for n in trainable_names(trained) if n in sent):
            start = sent[name].astype(np.float64)
            update = trained[name].astype(np.float64) - start
            if kind == "sign_flip":
                value = start - scale * update
            elif kind == "boost":
                value = start + scale * update
            else:  # noise
                value = start + rng.standard_normal(update.shape) * scale
            out[name] = value.astype(trained[name].dtype)
        return self._replace(reply, out)

    def _little_is_enough(
        self, instructions: Sequence[Instruction], replies: Sequence[Reply], attacked: Sequence[bool]
    ) -> Weights | None:
        """The colluders' model: each attacker's own trained model with its trainable entries replaced by
        mean - z std of the honest replies' (the attackers' own when no honest site replied); None if
        no attacker replied."""
        usable = [k for k, r in enumerate(replies) if r.ok and DataKind.WEIGHTS in r.payload]
        own = [k for k in usable if attacked[k]]
        if not own:
            return None
        honest = [k for k in usable if not attacked[k]] or own
        asked = sum(i.kind == InstructionKind.FIT for i in instructions)
        z = self.attack.scale if self.attack.scale is not None else little_is_enough_z(asked, sum(attacked))
        self.scale_used[instructions[0].round] = z
        models = [views(replies[k].payload[DataKind.WEIGHTS]) for k in honest]
        out: Weights = dict(views(replies[own[0]].payload[DataKind.WEIGHTS]))
        for name in trainable_names(out):
            stack = np.stack([m[name].astype(np.float64) for m in models])
            out[name] = (stack.mean(axis=0) - z * stack.std(axis=0)).astype(out[name].dtype)
        return out

    @staticmethod
    def _replace(reply: Reply, weights: Weights) -> Reply:
        return dataclasses.replace(reply, payload={**reply.payload, DataKind.WEIGHTS: encode(weights)})


def attack_record(attack: Any, attacking: Sequence[str], transport: AttackTransport | None) -> dict | None:
    """summary.json's `attack`: the kind, the configured scale (null: the kind's default), the attacking
    sites, and the distinct scales (z) applied; None for a job without an attack."""
    if attack is None:
        return None
    used = sorted(set(transport.scale_used.values())) if transport is not None else []
    return {"kind": attack.kind, "scale": attack.scale, "sites": list(attacking), "scale_used": used}
