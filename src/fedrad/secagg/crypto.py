"""Secure aggregation's primitives, each from a maintained library: X25519 key agreement, HKDF and
AES (`cryptography`), Shamir secret sharing over GF(2^128) (`pycryptodome`), and the fixed point.

- `pairwise_key(private, public, info)`: HKDF-SHA256 over the X25519 shared secret, 32 bytes. The
  same for (a_sk, b_pk) and (b_sk, a_pk): both ends derive it, the relaying server cannot.
- `expand(seed, count)`: `count` uint32 words of AES-256-CTR keystream under `seed` (a
  cryptographic PRG: without the seed the words are indistinguishable from uniform).
- `seal` / `open_sealed`: AES-256-GCM with a random 96-bit nonce (prepended) and associated data.
- `split` / `combine`: Shamir t-of-n sharing of a 16-byte secret (pycryptodome's `Shamir`).
- `to_fixed` / `from_fixed`: reals as int32 multiples of 2^-f, held mod 2^32 as uint32, so sums
  wrap exactly like the masks do.
"""

from __future__ import annotations

import os

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SEED_BYTES = 16  # self-mask seeds and mask-key seeds: what Shamir over GF(2^128) shares in one piece
KEY_BYTES = 32
NONCE_BYTES = 12
WORD_BITS = 32  # k: uploads and sums are uint32, the size of the float32 they replace
HEADROOM_BITS = 1  # |sum| <= clip_norm * 2^f <= 2^30: the other 2^30 absorbs rounding of up to 2^30 sites


class SecAggError(ValueError):
    """A secure-aggregation message or secret that does not check out (one line)."""


def new_seed() -> bytes:
    return os.urandom(SEED_BYTES)


def hkdf(material: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(material)


def private_key(seed: bytes | None = None) -> X25519PrivateKey:
    """An X25519 key: fresh, or derived from a 16-byte seed (so that sharing the seed shares the key)."""
    if seed is None:
        return X25519PrivateKey.generate()
    return X25519PrivateKey.from_private_bytes(hkdf(seed, b"fedrad secagg mask key"))


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def load_public(data: bytes, what: str) -> X25519PublicKey:
    if len(data) != KEY_BYTES:
        raise SecAggError(f"{what}: an X25519 public key has {KEY_BYTES} bytes, got {len(data)}")
    return X25519PublicKey.from_public_bytes(data)


def pairwise_key(private: X25519PrivateKey, public: bytes, info: bytes, what: str = "public key") -> bytes:
    """HKDF-SHA256(X25519(private, public), info): the key both ends of a pair derive alike."""
    try:
        shared = private.exchange(load_public(public, what))
    except ValueError as exc:  # the all-zero shared secret of a low-order point
        raise SecAggError(f"{what}: unusable X25519 public key ({exc})") from None
    return hkdf(shared, info)


def expand(seed: bytes, count: int) -> np.ndarray:
    """`count` pseudo-random uint32 words: AES-256-CTR's keystream under `seed` (32 bytes), nonce 0."""
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(4 * count)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u4").copy()


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes, what: str) -> bytes:
    if len(sealed) < NONCE_BYTES + 16:
        raise SecAggError(f"{what}: ciphertext of {len(sealed)} bytes is too short")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except Exception:  # cryptography's InvalidTag: tampered, or sealed for another pair or round
        raise SecAggError(f"{what}: ciphertext does not authenticate") from None


def split(secret: bytes, threshold: int, holders: int) -> list[tuple[int, bytes]]:
    """Shamir shares (index 1..holders, 16 bytes each) of which any `threshold` give back `secret`."""
    if len(secret) != SEED_BYTES:
        raise ValueError(f"a shared secret has {SEED_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= holders:
        raise ValueError(f"threshold {threshold} must be between 1 and the {holders} holders")
    if threshold == 1:  # pycryptodome wants k > 1; a degree-0 polynomial is the secret itself
        return [(i, secret) for i in range(1, holders + 1)]
    return Shamir.split(threshold, holders, secret)


def combine(shares: list[tuple[int, bytes]], threshold: int) -> bytes:
    """The secret of `threshold` (or more) shares; SecAggError with fewer."""
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} share(s), {threshold} needed")
    if threshold == 1:
        return shares[0][1]
    return Shamir.combine(sorted(shares)[:threshold])


def fraction_bits(clip_norm: float) -> int:
    """f such that clip_norm * 2^f <= 2^(31 - HEADROOM_BITS): the finest fixed point whose sum cannot overflow.

    Every coordinate of a site's weighted update is at most clip_norm * (its share of the weights) in
    magnitude, and the shares sum to at most 1, so the sum of any number of sites is at most
    clip_norm * 2^f; the headroom bit takes the rounding (half a unit per site) of up to 2^30 sites.
    """
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    bits = WORD_BITS - 1 - HEADROOM_BITS - int(np.ceil(np.log2(clip_norm)))
    if bits < 1:
        raise ValueError(f"clip_norm {clip_norm:g} leaves no fraction bits in {WORD_BITS}-bit words")
    return bits


def to_fixed(values: np.ndarray, bits: int) -> np.ndarray:
    """round(values * 2^bits) as int32, held as uint32 (two's complement: the sum wraps mod 2^32)."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * 2.0**bits)
    return scaled.astype(np.int64).astype(np.uint32)


def from_fixed(words: np.ndarray, bits: int) -> np.ndarray:
    """The uint32 words read as int32 multiples of 2^-bits, in float64."""
    return np.asarray(words, dtype=np.uint32).view(np.int32).astype(np.float64) / 2.0**bits
