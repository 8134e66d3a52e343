"""The server's side of one secure-aggregation round: relay keys and ciphertexts, then remove the masks.

The server sees public keys, example counts, ciphertexts it cannot open, masked uploads and, at
the end, the shares that remove the masks of the sum: a survivor's self-mask seed b (its masked
upload is in the sum, so b must go) and a dropped site's mask-key seed (its pairwise masks are in
the survivors' uploads; its own upload is not in the sum, and its b is never revealed, so even an
upload that arrives late stays masked). What it can check is in docs/secure_aggregation.md.

Each reply is parsed as hostile: a malformed one is that site's rejection (`reject(site, reason)`),
never an exception. A round that falls below the threshold t raises `RoundAborted` with one line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import numpy as np

from fedrad.secagg import crypto, masking
from fedrad.secagg import secagg_pb2 as pb
from fedrad.secagg.crypto import KEY_BYTES, SEED_BYTES, SecAggError
from fedrad.secagg.participant import ADVERTISE, MASKED, SHARE, UNMASK, SecAggSettings
from fedrad.types import RoundAborted

Reject = Callable[[str, str], None]
MAX_CIPHERTEXT_BYTES = 256  # a sealed SharePair is about 100 bytes


class RoundProtocol:
    """One round: `advertise` -> `take_advertised` -> `share` -> `take_shares` -> `masked(site)` per FIT
    -> `unmask(survivors)` -> `correction(...)`: the words to subtract from the sum of the uploads."""

    def __init__(self, round: int, asked: list[str], settings: SecAggSettings):
        self.round, self.asked, self.settings = round, list(asked), settings
        self.threshold = settings.threshold_for(len(asked))
        self.keys: dict[str, pb.PublicKeys] = {}
        self.u1: list[str] = []
        self.u2: list[str] = []
        self.inbox: dict[str, dict[str, bytes]] = {}  # receiver -> sender -> ciphertext

    def _request(self, phase: str, roster: list[str]) -> pb.Request:
        return pb.Request(phase=phase, round=self.round, threshold=self.threshold, roster=roster,
                          fraction_bits=self.settings.fraction_bits, clip_norm=self.settings.clip_norm)  # fmt: skip

    def _enough(self, count: int, what: str) -> None:
        if count < self.threshold:
            raise RoundAborted(f"round {self.round}: secure aggregation: {count} of {len(self.asked)} sites {what}, "
                               f"below the threshold {self.threshold}; the round kept the previous model")

    def advertise(self) -> dict[str, bytes]:
        blob = self._request(ADVERTISE, self.asked).SerializeToString()
        return {site: blob for site in self.asked}

    def take_advertised(self, replies: Mapping[str, bytes], reject: Reject) -> None:
        seen: set[bytes] = set()
        for site, blob in replies.items():
            try:
                keys = self._response(site, blob, ADVERTISE).keys
                for what, value, size in (("cipher key", keys.cipher, KEY_BYTES), ("mask key", keys.mask, KEY_BYTES),
                                          ("seed digest", keys.seed_digest, 32)):  # fmt: skip
                    if len(value) != size:
                        raise SecAggError(f"its {what} has {len(value)} bytes, {size} expected")
                crypto.load_public(keys.cipher, "cipher key")
                crypto.load_public(keys.mask, "mask key")
                if keys.num_examples < 1:
                    raise SecAggError("it announced no training examples")
                if {keys.cipher, keys.mask} & seen or keys.cipher == keys.mask:
                    raise SecAggError("it announced a public key another site (or its other key) already has")
            except (SecAggError, ValueError) as exc:
                reject(site, f"advertise: {exc}")
                continue
            seen |= {keys.cipher, keys.mask}
            self.keys[site] = keys
        self.u1 = sorted(self.keys)
        self._enough(len(self.u1), "advertised keys")

    def share(self) -> dict[str, bytes]:
        request = self._request(SHARE, self.u1)
        for site in self.u1:
            request.keys[site].CopyFrom(self.keys[site])
        blob = request.SerializeToString()
        return {site: blob for site in self.u1}

    def take_shares(self, replies: Mapping[str, bytes], reject: Reject) -> None:
        sealed: dict[str, Mapping[str, bytes]] = {}
        for site, blob in replies.items():
            try:
                ciphertexts = self._response(site, blob, SHARE).ciphertexts
                if set(ciphertexts) != set(self.u1) - {site}:
                    raise SecAggError(f"ciphertexts for {sorted(ciphertexts)}, expected one for each other site of U1")
                if any(len(c) > MAX_CIPHERTEXT_BYTES for c in ciphertexts.values()):
                    raise SecAggError(f"a ciphertext above {MAX_CIPHERTEXT_BYTES} bytes")
            except SecAggError as exc:
                reject(site, f"share: {exc}")
                continue
            sealed[site] = dict(ciphertexts)
        self.u2 = sorted(sealed)
        self._enough(len(self.u2), "sent their shares")
        self.inbox = {r: {s: sealed[s][r] for s in self.u2 if s != r} for r in self.u2}

    @property
    def total_examples(self) -> int:
        """N: the examples U1 announced; each site weights its update by n_u / N."""
        return sum(self.keys[site].num_examples for site in self.u1)

    def masked(self, site: str) -> bytes:
        """The FIT instruction's secure-aggregation payload for `site`: U2 and the shares sealed for it."""
        request = self._request(MASKED, self.u2)
        request.total_examples = self.total_examples
        for sender, ciphertext in self.inbox[site].items():
            request.ciphertexts[sender] = ciphertext
        return request.SerializeToString()

    def unmask(self, survivors: list[str]) -> dict[str, bytes]:
        """UNMASK requests to the survivors U3 (the sites whose masked upload is in the sum)."""
        self._enough(len(survivors), "delivered an accepted masked update")
        request = self._request(UNMASK, sorted(survivors))
        request.dropped.extend(sorted(set(self.u2) - set(survivors)))
        blob = request.SerializeToString()
        return {site: blob for site in sorted(survivors)}

    def correction(self, replies: Mapping[str, bytes], reject: Reject, survivors: list[str],
                   layout: masking.Layout) -> np.ndarray:
        """The masks left in the sum of the survivors' uploads (uint32 words, `layout.size`), from the shares."""
        dropped = sorted(set(self.u2) - set(survivors))
        seeds: dict[str, list[tuple[int, bytes]]] = {s: [] for s in survivors}
        keys: dict[str, list[tuple[int, bytes]]] = {d: [] for d in dropped}
        responders = 0
        for site, blob in replies.items():
            try:
                response = self._response(site, blob, UNMASK)
                index = 1 + self.u1.index(site)
                for wanted, given, what in ((seeds, response.seed_shares, "self-mask seed"),
                                            (keys, response.key_shares, "mask-key seed")):  # fmt: skip
                    if set(given) != set(wanted):
                        raise SecAggError(f"shares of the {what} of {sorted(given)}, expected {sorted(wanted)}")
                    for share in given.values():
                        if share.index != index or len(share.value) != SEED_BYTES:
                            raise SecAggError(f"a share with index {share.index} and {len(share.value)} bytes, "
                                              f"expected index {index} and {SEED_BYTES} bytes")
            except SecAggError as exc:
                reject(site, f"unmask: {exc}")
                continue
            responders += 1
            for target, share in response.seed_shares.items():
                seeds[target].append((share.index, share.value))
            for target, share in response.key_shares.items():
                keys[target].append((share.index, share.value))
        if responders < self.threshold:
            raise RoundAborted(f"round {self.round}: secure aggregation: {responders} of {len(survivors)} survivors "
                               f"sent their shares, below the threshold {self.threshold}: the masks cannot be "
                               "removed; the round kept the previous model")
        words = np.zeros(layout.size, dtype=np.uint32)
        for site, shares in seeds.items():
            seed = crypto.combine(shares, self.threshold)
            if hashlib.sha256(seed).digest() != self.keys[site].seed_digest:
                raise RoundAborted(f"round {self.round}: secure aggregation: the shares of {site}'s self-mask seed do "
                                   "not reconstruct it (a site sent a wrong share); the round kept the previous model")
            words += masking.self_mask(seed, self.round, layout.size)
        for gone, shares in keys.items():
            private = crypto.private_key(crypto.combine(shares, self.threshold))
            if crypto.public_bytes(private) != self.keys[gone].mask:
                raise RoundAborted(f"round {self.round}: secure aggregation: the shares of dropped site {gone}'s mask "
                                   "key do not reconstruct it (a site sent a wrong share); the round kept the previous "
                                   "model")
            for site in survivors:  # the pairwise masks `site` added for `gone`, who never delivered
                key = crypto.pairwise_key(private, self.keys[site].mask, masking.pair_info(self.round))
                pair = masking.pair_mask(key, layout.size)
                words = words + pair if masking.sign(site, gone) > 0 else words - pair
        return words

    def _response(self, site: str, blob: bytes, phase: str) -> pb.Response:
        response = pb.Response()
        try:
            response.ParseFromString(bytes(blob))
        except Exception:  # protobuf's DecodeError
            raise SecAggError("unreadable reply") from None
        if response.phase != phase or response.round != self.round:
            raise SecAggError(f"a {response.phase or 'blank'} reply for round {response.round}, expected {phase} "
                              f"for round {self.round}")
        return response
