"""A site's side of secure aggregation: its keys, its shares of the others' secrets, its masked upload.

Per round (a `Session`, in memory: keys never touch the disk, so a client restarted within a
round has lost them and is recovered like any site that dropped):

1) advertise: two fresh X25519 keys (one to encrypt shares, one derived from a 16-byte seed to
   agree pairwise masks), a fresh 16-byte self-mask seed b; it sends both public keys, sha256(b)
   and its example count, all public;
2) share: given U1's public keys it splits b and its mask-key seed into |U1| Shamir shares (t of
   n) and seals each other site's pair of shares for it (AES-GCM under HKDF(X25519), associated
   data naming round, sender and receiver); the server relays ciphertexts it cannot open;
3) masked (the FIT instruction): given U2 and the ciphertexts addressed to it, it trains and
   uploads its fixed-point, weighted, clipped update plus its masks (`fedrad.secagg.masking`);
4) unmask: given the survivors U3 and the dropped D (U3 and D must make up U2), it opens what each
   sent it and reveals b's share for a survivor and the mask-key seed's share for a dropped site,
   never both for one site, however the server asks (a site revealing both would give away that
   site's update).

Every setting the server states (threshold, fixed point, clip bound, the total of the examples) is
checked against what this site's own job says and what the others announced: a server cannot lower
the threshold or change the weights. Deployed, each site signs its advertisement with its mTLS
certificate's key and checks every other site's (`fedrad.secagg.identity`), so a server cannot
substitute keys either (docs/secure_aggregation.md, "Threat model").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from fedrad.secagg import crypto, masking
from fedrad.secagg import secagg_pb2 as pb
from fedrad.secagg.crypto import SecAggError
from fedrad.secagg.identity import Identity
from fedrad.types import Weights

ADVERTISE, SHARE, MASKED, UNMASK = "advertise", "share", "masked", "unmask"
CLIPPED = "secagg_clipped"  # a fit reply's metric: 1.0 when the update was clipped to clip_norm before masking


@dataclass(frozen=True)
class SecAggSettings:
    """The job's `secure_aggregation` as both ends read it."""

    threshold: int | None = None  # None: a majority of each round's asked sites
    clip_norm: float = 100.0

    def threshold_for(self, asked: int) -> int:
        return self.threshold if self.threshold is not None else asked // 2 + 1

    @property
    def fraction_bits(self) -> int:
        return crypto.fraction_bits(self.clip_norm)


def share_info(round: int) -> bytes:
    return b"fedrad secagg share key|%d" % round


def associated(round: int, sender: str, receiver: str) -> bytes:
    return f"fedrad secagg|{round}|{sender}|{receiver}".encode()


def parse_request(blob: bytes, what: str) -> pb.Request:
    request = pb.Request()
    try:
        request.ParseFromString(bytes(blob))
    except Exception:  # protobuf's DecodeError
        raise SecAggError(f"{what}: unreadable secure-aggregation request") from None
    return request


@dataclass
class Session:
    round: int
    asked: list[str]
    threshold: int
    num_examples: int
    cipher_key: object = field(default_factory=lambda: crypto.private_key())
    mask_seed: bytes = field(default_factory=lambda: crypto.new_seed())
    self_seed: bytes = field(default_factory=lambda: crypto.new_seed())
    u1: list[str] = field(default_factory=list)
    keys: dict[str, pb.PublicKeys] = field(default_factory=dict)
    own_shares: pb.SharePair | None = None
    u2: list[str] = field(default_factory=list)
    inbox: dict[str, bytes] = field(default_factory=dict)
    revealed: dict[str, str] = field(default_factory=dict)  # site -> "seed" or "key": what this site gave of it
    advertised: pb.PublicKeys | None = None  # what this site sent (signed, when deployed)

    @property
    def mask_key(self):
        return crypto.private_key(self.mask_seed)

    def public(self) -> pb.PublicKeys:
        return pb.PublicKeys(
            cipher=crypto.public_bytes(self.cipher_key), mask=crypto.public_bytes(self.mask_key),
            seed_digest=hashlib.sha256(self.self_seed).digest(), num_examples=self.num_examples,
        )


class Participant:
    """One site in secure aggregation; `respond` answers the SECAGG phases, `mask` the FIT's upload."""

    def __init__(self, site_id: str, settings: SecAggSettings, identity: Identity | None = None):
        self.site_id, self.settings = site_id, settings
        self.identity = identity  # deployed: signs this site's keys and checks the others' (secagg.identity)
        self.sessions: dict[int, Session] = {}

    def respond(self, round: int, blob: bytes, num_examples: int) -> bytes:
        request = self._request(round, blob, (ADVERTISE, SHARE, UNMASK))
        handler = {ADVERTISE: self._advertise, SHARE: self._share, UNMASK: self._unmask}[request.phase]
        return handler(request, num_examples).SerializeToString()

    def mask(self, round: int, blob: bytes, sent: Weights, trained: Weights, keep_local: frozenset[str],
             num_examples: int) -> tuple[dict[str, np.ndarray], float]:
        """The masked upload (uint32 per entry, the layout's names) and whether the update was clipped."""
        request = self._request(round, blob, (MASKED,))
        session = self._session(round, MASKED)
        u2 = list(request.roster)
        self._check_roster(u2, session.u1, "U2", MASKED, session, request)
        senders = set(u2) - {self.site_id}
        if set(request.ciphertexts) != senders:
            raise SecAggError(f"site {self.site_id}: masked: ciphertexts from {sorted(request.ciphertexts)}, "
                              f"expected one from each of {sorted(senders)}")
        total = sum(session.keys[s].num_examples for s in session.u1)
        if request.total_examples != total:
            raise SecAggError(f"site {self.site_id}: masked: the server states {request.total_examples} examples in "
                              f"all, U1 announced {total}")
        if num_examples != session.num_examples:
            raise SecAggError(f"site {self.site_id}: masked: it advertised {session.num_examples} examples, "
                              f"now holds {num_examples}")
        session.u2, session.inbox = u2, dict(request.ciphertexts)
        layout = masking.Layout.of(sent, keep_local)
        delta = masking.update(sent, trained, layout)
        norm = float(np.sqrt(sum(float(np.sum(d * d)) for d in delta.values())))
        factor = min(1.0, self.settings.clip_norm / norm) if norm > 0 else 1.0
        weight = num_examples / total
        bits = self.settings.fraction_bits
        words = crypto.to_fixed(layout.join(delta, np.float64) * (weight * factor), bits)
        words += masking.self_mask(session.self_seed, round, layout.size)
        mask_key = session.mask_key
        for other in sorted(senders):
            key = crypto.pairwise_key(mask_key, session.keys[other].mask, masking.pair_info(round),
                                      f"site {self.site_id}: {other}'s mask key")  # fmt: skip
            pair = masking.pair_mask(key, layout.size)
            words = words + pair if masking.sign(self.site_id, other) > 0 else words - pair
        return layout.split(words), float(factor < 1.0)

    # -- phases ----------------------------------------------------------------------------------

    def _advertise(self, request: pb.Request, num_examples: int) -> pb.Response:
        asked = list(request.roster)
        if self.site_id not in asked or len(set(asked)) != len(asked):
            raise SecAggError(f"site {self.site_id}: advertise: the roster must name each asked site once, this one "
                              "included")
        self._check_threshold(request, len(asked), ADVERTISE)
        session = Session(request.round, asked, request.threshold, num_examples)
        session.advertised = session.public()
        if self.identity is not None:
            self.identity.sign(request.round, session.advertised)
        self.sessions = {r: s for r, s in self.sessions.items() if r > request.round - 2} | {request.round: session}
        return pb.Response(phase=ADVERTISE, round=request.round, keys=session.advertised)

    def _share(self, request: pb.Request, num_examples: int) -> pb.Response:
        session = self._session(request.round, SHARE)
        u1 = list(request.roster)
        self._check_roster(u1, session.asked, "U1", SHARE, session, request)
        if set(request.keys) != set(u1):
            raise SecAggError(f"site {self.site_id}: share: keys for {sorted(request.keys)}, U1 is {sorted(u1)}")
        mine = request.keys[self.site_id]
        if mine.SerializeToString(deterministic=True) != session.advertised.SerializeToString(deterministic=True):
            raise SecAggError(f"site {self.site_id}: share: the server relays other keys than this site advertised")
        if self.identity is not None:  # deployed: every other site's keys must be signed by its certificate
            for other in sorted(set(u1) - {self.site_id}):
                self.identity.check(request.round, other, request.keys[other])
        publics = [k.cipher for k in request.keys.values()] + [k.mask for k in request.keys.values()]
        if len(set(publics)) != len(publics):
            raise SecAggError(f"site {self.site_id}: share: two advertised public keys are equal")
        session.u1, session.keys = sorted(u1), dict(request.keys)
        seed_shares = crypto.split(session.self_seed, session.threshold, len(u1))
        key_shares = crypto.split(session.mask_seed, session.threshold, len(u1))
        out = pb.Response(phase=SHARE, round=request.round)
        for (index, seed_share), (_, key_share), receiver in zip(seed_shares, key_shares, session.u1, strict=True):
            pair = pb.SharePair(sender=self.site_id, receiver=receiver, round=request.round, index=index,
                                seed_share=seed_share, key_share=key_share)  # fmt: skip
            if receiver == self.site_id:
                session.own_shares = pair
                continue
            key = crypto.pairwise_key(session.cipher_key, session.keys[receiver].cipher, share_info(request.round),
                                      f"site {self.site_id}: {receiver}'s cipher key")  # fmt: skip
            out.ciphertexts[receiver] = crypto.seal(key, pair.SerializeToString(),
                                                    associated(request.round, self.site_id, receiver))
        return out

    def _unmask(self, request: pb.Request, num_examples: int) -> pb.Response:
        session = self._session(request.round, UNMASK)
        if not session.u2:
            raise SecAggError(f"site {self.site_id}: unmask: this site did not mask an update in round {request.round}")
        survivors, dropped = list(request.roster), list(request.dropped)
        if set(survivors) & set(dropped) or sorted(survivors + dropped) != sorted(session.u2):
            raise SecAggError(f"site {self.site_id}: unmask: survivors {sorted(survivors)} and dropped "
                              f"{sorted(dropped)} do not split U2 {sorted(session.u2)}")
        if request.threshold != session.threshold:
            raise SecAggError(f"site {self.site_id}: unmask: threshold {request.threshold} stated, "
                              f"{session.threshold} was advertised for this round")
        if self.site_id not in survivors or len(survivors) < session.threshold:
            raise SecAggError(f"site {self.site_id}: unmask: {len(survivors)} survivor(s), this site must be one and "
                              f"at least {session.threshold} are needed")
        wanted = {s: "seed" for s in survivors} | {s: "key" for s in dropped}
        clash = sorted(s for s, what in wanted.items() if session.revealed.get(s, what) != what)
        if clash:
            raise SecAggError(f"site {self.site_id}: unmask: asked for the other secret of {clash} than it revealed "
                              "before; refused (both would unmask that site's update)")
        out = pb.Response(phase=UNMASK, round=request.round)
        for sender, what in wanted.items():
            pair = self._opened(session, sender)
            share = pb.Share(index=pair.index, value=pair.seed_share if what == "seed" else pair.key_share)
            (out.seed_shares if what == "seed" else out.key_shares)[sender].CopyFrom(share)
            session.revealed[sender] = what
        return out

    # -- checks ----------------------------------------------------------------------------------

    def _request(self, round: int, blob: bytes, phases: tuple[str, ...]) -> pb.Request:
        request = parse_request(blob, f"site {self.site_id}")
        if request.phase not in phases:
            raise SecAggError(f"site {self.site_id}: secure-aggregation phase {request.phase!r} where "
                              f"{' or '.join(phases)} was due")
        if request.round != round:
            raise SecAggError(f"site {self.site_id}: a {request.phase} request for round {request.round} in "
                              f"round {round}")
        if request.fraction_bits != self.settings.fraction_bits or request.clip_norm != self.settings.clip_norm:
            raise SecAggError(f"site {self.site_id}: {request.phase}: the server states fixed point 2^-"
                              f"{request.fraction_bits} and clip norm {request.clip_norm:g}, this site's job says 2^-"
                              f"{self.settings.fraction_bits} and {self.settings.clip_norm:g}")
        return request

    def _check_threshold(self, request: pb.Request, asked: int, phase: str) -> None:
        expected = self.settings.threshold_for(asked)
        if request.threshold != expected:
            raise SecAggError(f"site {self.site_id}: {phase}: threshold {request.threshold} stated, this site's job "
                              f"gives {expected} for {asked} sites")
        if not asked // 2 < expected <= asked:
            raise SecAggError(f"site {self.site_id}: {phase}: threshold {expected} must be a majority of the {asked} "
                              "sites asked, and at most all of them")

    def _session(self, round: int, phase: str) -> Session:
        session = self.sessions.get(round)
        if session is None:
            raise SecAggError(f"site {self.site_id}: {phase}: no secure-aggregation keys for round {round} (this "
                              "client restarted after advertising them, or never advertised)")
        return session

    def _check_roster(self, roster: list[str], within: list[str], name: str, phase: str, session: Session,
                      request: pb.Request) -> None:
        if len(set(roster)) != len(roster) or not set(roster) <= set(within) or self.site_id not in roster:
            raise SecAggError(f"site {self.site_id}: {phase}: {name} {sorted(roster)} must be distinct sites of "
                              f"{sorted(within)}, this one included")
        threshold = session.threshold
        if request.threshold != threshold:
            raise SecAggError(f"site {self.site_id}: {phase}: threshold {request.threshold} stated, {threshold} was "
                              "advertised for this round")
        if len(roster) < threshold:
            raise SecAggError(f"site {self.site_id}: {phase}: {name} has {len(roster)} site(s), below the threshold "
                              f"{threshold}")

    def _opened(self, session: Session, sender: str) -> pb.SharePair:
        if sender == self.site_id:
            return session.own_shares
        what = f"site {self.site_id}: {sender}'s shares"
        key = crypto.pairwise_key(session.cipher_key, session.keys[sender].cipher, share_info(session.round), what)
        plain = crypto.open_sealed(key, session.inbox[sender], associated(session.round, sender, self.site_id), what)
        pair = pb.SharePair()
        try:
            pair.ParseFromString(plain)
        except Exception:
            raise SecAggError(f"{what}: unreadable") from None
        mine = 1 + session.u1.index(self.site_id)
        if (pair.sender, pair.receiver, pair.round, pair.index) != (sender, self.site_id, session.round, mine):
            raise SecAggError(f"{what}: addressed to another site, round or share index")
        return pair
