"""Secure aggregation's protocol, end to end between real participants and the server's side.

The sites here are `fedrad.secagg.participant.Participant`s, the server is the strategy wrapper's
`RoundProtocol` and `SecureSum`, and `Relay` hands each request to its participant, as the
transport does: every key, share, ciphertext and mask is the real one. The updates are synthetic
(no training), so the expected sum is known exactly.

Tolerance of the fixed point: each site rounds every coordinate of (n_u / N) * d_u to a multiple of
2^-f (error at most 2^-(f+1)), the sum is exact mod 2^32, and the server multiplies it by N / W
(W: the survivors' examples). So a coordinate of the mean update is off by at most
n * 2^-(f+1) * N / W, plus the float32 rounding of the model entry; f = 23 for clip_norm 100.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import stats

from fedrad.secagg import crypto, masking
from fedrad.secagg import secagg_pb2 as pb
from fedrad.secagg.crypto import SecAggError
from fedrad.secagg.participant import Participant, SecAggSettings
from fedrad.strategies.aggregate import WeightedSum
from fedrad.strategies.base import GLOBAL, FitResult, FitTask, ServerState
from fedrad.strategies.fedavg import FedAvg
from fedrad.strategies.secure_agg import SecureAggregation
from fedrad.types import FitConfig, RoundAborted

SITES = ["a", "b", "c", "d", "e"]
EXAMPLES = {"a": 40, "b": 25, "c": 60, "d": 10, "e": 33}


@pytest.fixture
def seeded_keys(monkeypatch):
    """Key and seed generation from a seeded RNG, so every statistic in these tests is fixed."""
    rng = np.random.default_rng(7)
    monkeypatch.setattr(crypto, "new_seed", lambda: rng.bytes(crypto.SEED_BYTES))
    real = crypto.private_key
    monkeypatch.setattr(crypto, "private_key", lambda seed=None: real(seed if seed is not None else rng.bytes(16)))


def model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "conv.weight": rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32),
        "bn.weight": rng.normal(1, 0.1, 4).astype(np.float32),
        "bn.running_mean": rng.normal(0, 1, 4).astype(np.float32),
        "bn.running_var": rng.uniform(0.5, 2, 4).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "head.bias": rng.normal(0, 0.1, 2).astype(np.float32),
    }


def trained(sent: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {n: (a + rng.normal(0, 0.05, a.shape)).astype(a.dtype) if a.dtype.kind == "f" else a + 3
           for n, a in sent.items()}
    out["bn.running_var"] = np.abs(out["bn.running_var"]) + 0.1
    return out


class Relay:
    """The channel: each site's request to its participant, as the transport would; `drop` sites never answer."""

    def __init__(self, participants: dict[str, Participant], round: int):
        self.participants, self.round = participants, round
        self.drop: set[str] = set()
        self.rejected: dict[str, str] = {}

    def ask(self, phase: str, requests):
        return {site: self.participants[site].respond(self.round, blob, EXAMPLES[site])
                for site, blob in requests.items() if site not in self.drop}  # fmt: skip

    def reject(self, site_id: str, reason: str) -> None:
        self.rejected[site_id] = reason


def run_round(settings: SecAggSettings, drop_before_mask=(), drop_after_mask=(), round: int = 4):
    """One secure round over SITES; the new global model, the plain weighted mean of the survivors, and f."""
    rng = np.random.default_rng(11)
    sent = model(rng)
    updates = {site: trained(sent, rng) for site in SITES}
    participants = {site: Participant(site, settings) for site in SITES}
    wrapper = SecureAggregation(FedAvg(), settings)
    state = ServerState({GLOBAL: sent})
    relay = Relay(participants, round)
    tasks = wrapper.prepare(round, state, [FitTask(s, sent, FitConfig()) for s in SITES], relay)
    relay.drop |= set(drop_before_mask)
    fold = wrapper.begin(round, state)
    for task in tasks:
        if task.site_id in relay.drop:
            continue
        masked, _ = participants[task.site_id].mask(round, task.masked.request, sent, updates[task.site_id],
                                                    frozenset(), EXAMPLES[task.site_id])  # fmt: skip
        if task.site_id in drop_after_mask:  # masked, then gone before its upload arrived
            relay.drop.add(task.site_id)
            continue
        fold.add(FitResult(task.site_id, masked, EXAMPLES[task.site_id]))
    wrapper.settle(round, fold, relay)
    new = fold.finish().models[GLOBAL]
    plain = WeightedSum(pool_batchnorm=True)
    for site in SITES:
        if site not in relay.drop:
            plain.add(updates[site], EXAMPLES[site])
    survivors = [s for s in SITES if s not in relay.drop]
    return new, plain.mean(), survivors, masked, sent


def assert_close(new, plain, survivors, settings: SecAggSettings):
    bits = settings.fraction_bits
    total = sum(EXAMPLES.values())
    bound = len(survivors) * 2.0 ** -(bits + 1) * total / sum(EXAMPLES[s] for s in survivors)
    for name, value in plain.items():
        if value.dtype.kind != "f":
            continue
        slack = bound * (4 if name.endswith("running_var") else 1) + np.spacing(np.abs(value).max()) * 2
        assert np.max(np.abs(new[name].astype(np.float64) - value)) <= slack, name


def test_the_securely_aggregated_mean_equals_the_plain_weighted_mean_within_the_fixed_point_tolerance(seeded_keys):
    settings = SecAggSettings(threshold=3, clip_norm=100.0)
    new, plain, survivors, _, sent = run_round(settings)
    assert survivors == SITES and settings.fraction_bits == 23
    assert_close(new, plain, survivors, settings)
    assert new["bn.num_batches_tracked"] == sent["bn.num_batches_tracked"]  # counters are the global model's


def test_with_one_of_five_sites_dropping_after_masking_the_sum_of_the_other_four_is_exact(seeded_keys):
    settings = SecAggSettings(threshold=3)
    new, plain, survivors, _, _ = run_round(settings, drop_after_mask=["c"])
    assert survivors == ["a", "b", "d", "e"]
    assert_close(new, plain, survivors, settings)


def test_sites_dropping_after_the_key_exchange_and_after_masking_are_both_recovered(seeded_keys):
    settings = SecAggSettings(threshold=3)
    new, plain, survivors, _, _ = run_round(settings, drop_before_mask=["a"], drop_after_mask=["e"])
    assert survivors == ["b", "c", "d"]
    assert_close(new, plain, survivors, settings)


def test_below_the_threshold_the_round_fails_with_a_clear_reason(seeded_keys):
    with pytest.raises(RoundAborted, match=r"round 4: secure aggregation: 2 of 5 sites delivered an accepted masked "
                                           r"update, below the threshold 3; the round kept the previous model"):
        run_round(SecAggSettings(threshold=3), drop_before_mask=["a", "b"], drop_after_mask=["c"])


def test_a_masked_upload_is_indistinguishable_from_uniform_and_the_unmasked_one_is_not(seeded_keys):
    settings = SecAggSettings(threshold=3)
    rng = np.random.default_rng(5)
    sent = {"w": np.zeros(20_000, dtype=np.float32)}
    update = {"w": rng.normal(0, 0.01, 20_000).astype(np.float32)}
    participants = {site: Participant(site, settings) for site in SITES}
    wrapper, relay = SecureAggregation(FedAvg(), settings), Relay(participants, 0)
    tasks = wrapper.prepare(0, ServerState({GLOBAL: sent}), [FitTask(s, sent, FitConfig()) for s in SITES], relay)
    masked, _ = participants["a"].mask(0, tasks[0].masked.request, sent, update, frozenset(), EXAMPLES["a"])
    plain = crypto.to_fixed(update["w"].astype(np.float64) * EXAMPLES["a"] / sum(EXAMPLES.values()), 23)
    uniform = stats.uniform(loc=0, scale=2.0**32).cdf
    assert stats.kstest(masked["w"].astype(np.float64), uniform).pvalue > 0.01
    assert stats.kstest(plain.astype(np.float64), uniform).pvalue < 1e-12
    # and bytewise: each of the 4 byte positions of the masked words is uniform over 256 values
    for byte in masked["w"].view(np.uint8).reshape(-1, 4).T:
        assert stats.chisquare(np.bincount(byte, minlength=256)).pvalue > 0.001


def test_fixed_point_sums_wrap_exactly_and_cannot_overflow_at_the_clip_bound():
    bits = crypto.fraction_bits(100.0)
    assert bits == 23 and 100.0 * 2**bits <= 2**30
    values = np.array([100.0, -100.0, 1e-7, -3.25])
    words = [crypto.to_fixed(values * w, bits) for w in (0.25, 0.5, 0.25)]  # weights summing to 1
    total = words[0] + words[1] + words[2]
    assert np.allclose(crypto.from_fixed(total, bits), values, atol=3 * 2.0 ** -(bits + 1))
    with pytest.raises(ValueError, match="no fraction bits"):
        crypto.fraction_bits(2.0**31)


def test_shamir_shares_reconstruct_with_t_and_not_with_fewer():
    secret = bytes(range(16))
    shares = crypto.split(secret, 3, 5)
    assert crypto.combine(shares[1:4], 3) == secret == crypto.combine([shares[0], shares[2], shares[4]], 3)
    assert crypto.combine(shares[:2], 2) != secret  # two shares read as a line: another polynomial's value
    with pytest.raises(SecAggError, match="2 share"):
        crypto.combine(shares[:2], 3)


def _advertised(settings: SecAggSettings):
    participants = {site: Participant(site, settings) for site in SITES[:3]}
    request = pb.Request(phase="advertise", round=1, threshold=2, roster=SITES[:3],
                         fraction_bits=settings.fraction_bits, clip_norm=settings.clip_norm)  # fmt: skip
    blob = request.SerializeToString()
    replies = {s: pb.Response.FromString(p.respond(1, blob, 10)) for s, p in participants.items()}
    return participants, request, replies


def test_a_site_refuses_a_threshold_its_job_does_not_give_and_a_non_majority_one():
    settings = SecAggSettings()
    site = Participant("a", settings)
    request = pb.Request(phase="advertise", round=1, threshold=1, roster=SITES[:3],
                         fraction_bits=settings.fraction_bits, clip_norm=settings.clip_norm)  # fmt: skip
    with pytest.raises(SecAggError, match="threshold 1 stated, this site's job gives 2 for 3 sites"):
        site.respond(1, request.SerializeToString(), 10)
    with pytest.raises(SecAggError, match="must be a majority"):
        Participant("a", SecAggSettings(threshold=2)).respond(1, pb.Request(
            phase="advertise", round=1, threshold=2, roster=SITES[:4], fraction_bits=settings.fraction_bits,
            clip_norm=settings.clip_norm).SerializeToString(), 10)  # fmt: skip


def test_a_site_never_reveals_both_secrets_of_one_site_and_detects_a_substituted_key(seeded_keys):
    settings = SecAggSettings()
    participants, request, replies = _advertised(settings)
    share = pb.Request(phase="share", round=1, threshold=2, roster=SITES[:3], fraction_bits=settings.fraction_bits,
                       clip_norm=settings.clip_norm)  # fmt: skip
    for site, reply in replies.items():
        share.keys[site].CopyFrom(reply.keys)
    forged = pb.Request.FromString(share.SerializeToString())
    forged.keys["a"].mask = replies["b"].keys.cipher
    with pytest.raises(SecAggError, match="relays other keys than this site advertised"):
        participants["a"].respond(1, forged.SerializeToString(), 10)
    sealed = {s: pb.Response.FromString(p.respond(1, share.SerializeToString(), 10)) for s, p in participants.items()}
    sent = {"w": np.zeros(8, dtype=np.float32)}
    masked = pb.Request(phase="masked", round=1, threshold=2, roster=SITES[:3], total_examples=30,
                        fraction_bits=settings.fraction_bits, clip_norm=settings.clip_norm)  # fmt: skip
    for sender in ("b", "c"):
        masked.ciphertexts[sender] = sealed[sender].ciphertexts["a"]
    participants["a"].mask(1, masked.SerializeToString(), sent, {"w": np.ones(8, dtype=np.float32)}, frozenset(), 10)
    unmask = pb.Request(phase="unmask", round=1, threshold=2, roster=["a", "b"], dropped=["c"],
                        fraction_bits=settings.fraction_bits, clip_norm=settings.clip_norm)  # fmt: skip
    first = pb.Response.FromString(participants["a"].respond(1, unmask.SerializeToString(), 10))
    assert set(first.seed_shares) == {"a", "b"} and set(first.key_shares) == {"c"}
    swapped = pb.Request.FromString(unmask.SerializeToString())
    del swapped.roster[:]
    swapped.roster.extend(["a", "c"])
    del swapped.dropped[:]
    swapped.dropped.append("b")
    with pytest.raises(SecAggError, match=r"other secret of \['b', 'c'\]"):
        participants["a"].respond(1, swapped.SerializeToString(), 10)
    assert hashlib.sha256(participants["b"].sessions[1].self_seed).digest() == replies["b"].keys.seed_digest


def test_a_tampered_ciphertext_does_not_authenticate(seeded_keys):
    key = crypto.hkdf(b"x" * 32, b"info")
    sealed = crypto.seal(key, b"share pair", b"round|a|b")
    assert crypto.open_sealed(key, sealed, b"round|a|b", "a's shares") == b"share pair"
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SecAggError, match="does not authenticate"):
        crypto.open_sealed(key, tampered, b"round|a|b", "a's shares")
    with pytest.raises(SecAggError, match="does not authenticate"):  # sealed for another pair
        crypto.open_sealed(key, sealed, b"round|a|c", "a's shares")


def test_the_server_rejects_a_malformed_advertisement_and_goes_on_with_the_others(seeded_keys):
    settings = SecAggSettings(threshold=3)
    participants = {site: Participant(site, settings) for site in SITES}
    relay = Relay(participants, 0)
    real_ask = relay.ask

    def hostile_ask(phase, requests):
        answers = real_ask(phase, requests)
        if phase == "advertise":
            answers["b"] = b"\xff\x00garbage"
            bad = pb.Response.FromString(answers["d"])
            bad.keys.cipher = b"short"
            answers["d"] = bad.SerializeToString()
        return answers

    relay.ask = hostile_ask
    sent = {"w": np.zeros(4, dtype=np.float32)}
    wrapper = SecureAggregation(FedAvg(), settings)
    tasks = wrapper.prepare(0, ServerState({GLOBAL: sent}), [FitTask(s, sent, FitConfig()) for s in SITES], relay)
    assert [t.site_id for t in tasks] == ["a", "c", "e"]
    assert "unreadable reply" in relay.rejected["b"] and "cipher key has 5 bytes" in relay.rejected["d"]
    assert masking.Layout.of(sent).size == 4
