# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PublicKeys(_message.Message):
    __slots__ = ("cipher", "mask", "seed_digest", "num_examples", "certificate", "signature")
    CIPHER_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    SEED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    cipher: bytes
    mask: bytes
    seed_digest: bytes
    num_examples: int
    certificate: bytes
    signature: bytes
    def __init__(self, cipher: _Optional[bytes] = ..., mask: _Optional[bytes] = ..., seed_digest: _Optional[bytes] = ..., num_examples: _Optional[int] = ..., certificate: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("phase", "round", "threshold", "roster", "keys", "ciphertexts", "dropped", "fraction_bits", "total_examples", "clip_norm")
    class KeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: PublicKeys
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[PublicKeys, _Mapping]] = ...) -> None: ...
    class CiphertextsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    FRACTION_BITS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    phase: str
    round: int
    threshold: int
    roster: _containers.RepeatedScalarFieldContainer[str]
    keys: _containers.MessageMap[str, PublicKeys]
    ciphertexts: _containers.ScalarMap[str, bytes]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    fraction_bits: int
    total_examples: int
    clip_norm: float
    def __init__(self, phase: _Optional[str] = ..., round: _Optional[int] = ..., threshold: _Optional[int] = ..., roster: _Optional[_Iterable[str]] = ..., keys: _Optional[_Mapping[str, PublicKeys]] = ..., ciphertexts: _Optional[_Mapping[str, bytes]] = ..., dropped: _Optional[_Iterable[str]] = ..., fraction_bits: _Optional[int] = ..., total_examples: _Optional[int] = ..., clip_norm: _Optional[float] = ...) -> None: ...

class Share(_message.Message):
    __slots__ = ("index", "value")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    index: int
    value: bytes
    def __init__(self, index: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("phase", "round", "keys", "ciphertexts", "seed_shares", "key_shares")
    class CiphertextsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class SeedSharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Share
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Share, _Mapping]] = ...) -> None: ...
    class KeySharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Share
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Share, _Mapping]] = ...) -> None: ...
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    SEED_SHARES_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    phase: str
    round: int
    keys: PublicKeys
    ciphertexts: _containers.ScalarMap[str, bytes]
    seed_shares: _containers.MessageMap[str, Share]
    key_shares: _containers.MessageMap[str, Share]
    def __init__(self, phase: _Optional[str] = ..., round: _Optional[int] = ..., keys: _Optional[_Union[PublicKeys, _Mapping]] = ..., ciphertexts: _Optional[_Mapping[str, bytes]] = ..., seed_shares: _Optional[_Mapping[str, Share]] = ..., key_shares: _Optional[_Mapping[str, Share]] = ...) -> None: ...

class SharePair(_message.Message):
    __slots__ = ("sender", "receiver", "round", "index", "seed_share", "key_share")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SEED_SHARE_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARE_FIELD_NUMBER: _ClassVar[int]
    sender: str
    receiver: str
    round: int
    index: int
    seed_share: bytes
    key_share: bytes
    def __init__(self, sender: _Optional[str] = ..., receiver: _Optional[str] = ..., round: _Optional[int] = ..., index: _Optional[int] = ..., seed_share: _Optional[bytes] = ..., key_share: _Optional[bytes] = ...) -> None: ...
