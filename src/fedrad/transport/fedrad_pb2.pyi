# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkRequest(_message.Message):
    __slots__ = ("site_id", "num_train")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_TRAIN_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    num_train: int
    def __init__(self, site_id: _Optional[str] = ..., num_train: _Optional[int] = ...) -> None: ...

class FitConfig(_message.Message):
    __slots__ = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "prox_mu", "lr_decay", "patience")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    PROX_MU_FIELD_NUMBER: _ClassVar[int]
    LR_DECAY_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    prox_mu: float
    lr_decay: float
    patience: int
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ..., prox_mu: _Optional[float] = ..., lr_decay: _Optional[float] = ..., patience: _Optional[int] = ...) -> None: ...

class PayloadHeader(_message.Message):
    __slots__ = ("kind", "size", "num_chunks", "sha256")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    kind: str
    size: int
    num_chunks: int
    sha256: bytes
    def __init__(self, kind: _Optional[str] = ..., size: _Optional[int] = ..., num_chunks: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class InstructionHeader(_message.Message):
    __slots__ = ("task_id", "round", "site_id", "kind", "fit", "job_hash", "seed", "payloads", "keep_local")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    JOB_HASH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    KEEP_LOCAL_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    round: int
    site_id: str
    kind: str
    fit: FitConfig
    job_hash: str
    seed: int
    payloads: _containers.RepeatedCompositeFieldContainer[PayloadHeader]
    keep_local: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_id: _Optional[str] = ..., round: _Optional[int] = ..., site_id: _Optional[str] = ..., kind: _Optional[str] = ..., fit: _Optional[_Union[FitConfig, _Mapping]] = ..., job_hash: _Optional[str] = ..., seed: _Optional[int] = ..., payloads: _Optional[_Iterable[_Union[PayloadHeader, _Mapping]]] = ..., keep_local: _Optional[_Iterable[str]] = ...) -> None: ...

class ReplyHeader(_message.Message):
    __slots__ = ("task_id", "round", "site_id", "kind", "num_examples", "metrics", "error", "payloads", "error_kind")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    round: int
    site_id: str
    kind: str
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    error: str
    payloads: _containers.RepeatedCompositeFieldContainer[PayloadHeader]
    error_kind: str
    def __init__(self, task_id: _Optional[str] = ..., round: _Optional[int] = ..., site_id: _Optional[str] = ..., kind: _Optional[str] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., error: _Optional[str] = ..., payloads: _Optional[_Iterable[_Union[PayloadHeader, _Mapping]]] = ..., error_kind: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("payload", "index", "data")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    payload: int
    index: int
    data: bytes
    def __init__(self, payload: _Optional[int] = ..., index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("instruction", "chunk", "done")
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    instruction: InstructionHeader
    chunk: Chunk
    done: JobDone
    def __init__(self, instruction: _Optional[_Union[InstructionHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., done: _Optional[_Union[JobDone, _Mapping]] = ...) -> None: ...

class JobDone(_message.Message):
    __slots__ = ("job_hash", "reason", "failed")
    JOB_HASH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    job_hash: str
    reason: str
    failed: bool
    def __init__(self, job_hash: _Optional[str] = ..., reason: _Optional[str] = ..., failed: _Optional[bool] = ...) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("reply", "chunk")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    reply: ReplyHeader
    chunk: Chunk
    def __init__(self, reply: _Optional[_Union[ReplyHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class SubmitAck(_message.Message):
    __slots__ = ("status", "reason")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[SubmitAck.Status]
        ACCEPTED: _ClassVar[SubmitAck.Status]
        DUPLICATE: _ClassVar[SubmitAck.Status]
        REJECTED: _ClassVar[SubmitAck.Status]
        PROCEED: _ClassVar[SubmitAck.Status]
    STATUS_UNSPECIFIED: SubmitAck.Status
    ACCEPTED: SubmitAck.Status
    DUPLICATE: SubmitAck.Status
    REJECTED: SubmitAck.Status
    PROCEED: SubmitAck.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    status: SubmitAck.Status
    reason: str
    def __init__(self, status: _Optional[_Union[SubmitAck.Status, str]] = ..., reason: _Optional[str] = ...) -> None: ...
