"""Instructions and Replies on the wire: a protobuf header, then each payload in chunks. No pickle.

A message stream is `header, chunk, chunk, ...`: the header lists every payload's kind, size,
chunk count and sha256; the chunks follow payload by payload, in order. Chunks are 1 MiB by
default, so no single gRPC message comes near gRPC's 4 MB limit whatever the model's size.
The reader treats every message as hostile bytes: whatever a stream holds, `read_instruction` and
`read_reply` return or raise WireError (StreamEnded when the stream stops early), nothing else.
It checks each header before a byte is buffered (known kinds, each once; sizes within the bound
for all payloads, `max_bytes`, and, when `limits` is given, within each kind's own limit; chunk
counts that can carry the sizes; 32-byte digests), then the chunks' order and sizes, then the
digests. A buffer grows only as its chunks arrive, never to what was merely announced: two
150-byte headers announcing 1 GiB each cost nothing until a gigabyte actually comes.

    messages = list(instruction_messages(instruction, task_id="t1"))
    task_id, same = read_instruction(iter(messages))
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, fields
from typing import TypeVar

from fedrad.transport import fedrad_pb2 as pb
from fedrad.types import DataKind, FailureKind, FitConfig, Instruction, InstructionKind, Reply

SERVICE = "fedrad.transport.v1.Federation"  # as declared in fedrad.proto
WORK_METHOD = f"/{SERVICE}/Work"
SUBMIT_METHOD = f"/{SERVICE}/Submit"
CHUNK_SIZE = 1 << 20  # 1 MiB
MAX_PAYLOAD_BYTES = 2 << 30  # per message; the reader refuses a header that announces more
Message = TypeVar("Message", pb.ServerMessage, pb.ClientMessage)


class WireError(ValueError):
    """A message stream that does not decode to an Instruction or Reply (order, size, digest, kind)."""


class StreamEnded(WireError):
    """The stream stopped before every chunk its header announced: the sender went away mid-upload."""


# 1) converting the control fields --------------------------------------------------------------


def instruction_header(
    instruction: Instruction, task_id: str, chunk_size: int = CHUNK_SIZE, digests: Digests | None = None
) -> pb.InstructionHeader:
    """The header of one instruction; `digests` shared between headers hashes each blob once."""
    try:
        return pb.InstructionHeader(
            task_id=task_id,
            round=instruction.round,
            site_id=instruction.site_id,
            kind=InstructionKind(instruction.kind).value,
            fit=pb.FitConfig(**{k: v for k, v in asdict(instruction.fit).items() if v is not None}),
            job_hash=instruction.job_hash,
            seed=instruction.seed,
            payloads=_payload_headers(instruction.payload, chunk_size, digests),
            keep_local=sorted(instruction.keep_local),
        )
    except (TypeError, ValueError) as exc:  # an int out of int64 range, a FitConfig field unknown here
        raise WireError(f"site {instruction.site_id}: instruction cannot be encoded: {exc}") from exc


def reply_header(reply: Reply, task_id: str, chunk_size: int = CHUNK_SIZE) -> pb.ReplyHeader:
    try:
        return pb.ReplyHeader(
            task_id=task_id,
            round=reply.round,
            site_id=reply.site_id,
            kind=InstructionKind(reply.kind).value,
            num_examples=reply.num_examples,
            metrics={name: float(value) for name, value in reply.metrics.items()},
            error=reply.error,
            error_kind=FailureKind(reply.error_kind).value if reply.error_kind is not None else "",
            payloads=_payload_headers(reply.payload, chunk_size),
        )
    except (TypeError, ValueError) as exc:
        raise WireError(f"site {reply.site_id}: reply cannot be encoded: {exc}") from exc


def instruction_from_header(header: pb.InstructionHeader, payload: Mapping[DataKind, bytes]) -> Instruction:
    return Instruction(
        round=header.round,
        site_id=header.site_id,
        kind=_kind(header.kind),
        payload=dict(payload),
        fit=_fit_config(header.fit),
        job_hash=header.job_hash,
        seed=header.seed,
        keep_local=frozenset(header.keep_local),
    )


def reply_from_header(header: pb.ReplyHeader, payload: Mapping[DataKind, bytes]) -> Reply:
    return Reply(
        round=header.round,
        site_id=header.site_id,
        kind=_kind(header.kind),
        payload=dict(payload),
        num_examples=header.num_examples,
        metrics=dict(header.metrics),
        error=header.error if header.HasField("error") else None,
        error_kind=_failure_kind(header.error_kind) if header.HasField("error") else None,
    )


def _failure_kind(text: str) -> FailureKind:
    """A site's own word for why it failed; anything this server does not know reads as ERROR."""
    try:
        return FailureKind(text)
    except ValueError:
        return FailureKind.ERROR


# 2) streaming: header first, then the chunks ---------------------------------------------------


def instruction_messages(
    instruction: Instruction, task_id: str, chunk_size: int = CHUNK_SIZE
) -> Iterator[pb.ServerMessage]:
    """The stream the server sends for one instruction (the header is built eagerly, so it can fail early)."""
    header = instruction_header(instruction, task_id, chunk_size)
    return stream(pb.ServerMessage, "instruction", header, instruction.payload, chunk_size)


def reply_messages(reply: Reply, task_id: str, chunk_size: int = CHUNK_SIZE) -> Iterator[pb.ClientMessage]:
    header = reply_header(reply, task_id, chunk_size)
    return stream(pb.ClientMessage, "reply", header, reply.payload, chunk_size)


def read_instruction(
    messages: Iterator[pb.ServerMessage], max_bytes: int = MAX_PAYLOAD_BYTES, limits: Mapping[str, int] | None = None
) -> tuple[str, Instruction] | None:
    """(task_id, Instruction) from a stream; None for an empty stream (no work); `limits` as in Reassembler."""
    first = next(messages, None)
    if first is None:
        return None
    if first.WhichOneof("body") != "instruction":
        raise WireError("instruction stream does not start with an instruction header")
    header = first.instruction
    _kind(header.kind)  # refused before a byte is buffered
    payload = Reassembler(header.payloads, max_bytes, limits, what="instruction").read(messages)
    return header.task_id, instruction_from_header(header, payload)


def read_reply(
    messages: Iterator[pb.ClientMessage], max_bytes: int = MAX_PAYLOAD_BYTES, limits: Mapping[str, int] | None = None
) -> tuple[str, Reply]:
    """(task_id, Reply) from a stream whose first message is the reply header; `limits` as in Reassembler.

    The reply's metrics come as sent (NaN included: judging them is the orchestrator's business).
    """
    first = next(messages, None)
    if first is None or first.WhichOneof("body") != "reply":
        raise WireError("reply stream does not start with a reply header")
    header = first.reply
    _kind(header.kind)  # refused before a byte is buffered
    payload = Reassembler(header.payloads, max_bytes, limits).read(messages)
    return header.task_id, reply_from_header(header, payload)


class Reassembler:
    """Rebuilds the payloads a header announced from chunks that must arrive in order.

    `max_bytes` bounds all payloads together; `limits`, when given, maps each DataKind value this
    message may carry to the most bytes it may announce (a kind not in it is refused). Both are
    checked before anything is buffered. Each buffer grows only as chunks arrive, doubling up to
    the announced size (so it never holds more than about twice what came, and ends exactly the
    payload's size, without the slack a bytearray keeps when it grows by appending).

        Reassembler(header.payloads, limits={"weights": 10 << 20}).read(messages)
    """

    def __init__(
        self,
        headers: Iterable[pb.PayloadHeader],
        max_bytes: int = MAX_PAYLOAD_BYTES,
        limits: Mapping[str, int] | None = None,
        *,
        what: str = "reply",  # the message, for the refusal of an unexpected kind
    ):
        self.headers = list(headers)
        if len(self.headers) > len(DataKind):
            raise WireError(f"{len(self.headers)} payloads in the header, more than the {len(DataKind)} kinds")
        kinds = [_data_kind(h.kind) for h in self.headers]
        if len(set(kinds)) != len(kinds):
            raise WireError(f"payload kinds repeat in the header: {[k.value for k in kinds]}")
        for kind, h in zip(kinds, self.headers, strict=True):
            _check_announcement(kind, h, limits, what)
        total = sum(h.size for h in self.headers)
        if total > max_bytes:
            raise WireError(f"payloads announce {total} bytes, above the limit of {max_bytes}")
        self.kinds = kinds
        self.buffers = [bytearray() for _ in self.headers]  # grown as chunks arrive (see _make_room)
        self.filled = [0 for _ in self.headers]
        self.position = (0, 0)  # (payload, chunk) expected next
        self._skip_complete()

    def add(self, chunk: pb.Chunk) -> None:
        payload, index = self.position
        if payload >= len(self.headers):
            raise WireError(f"unexpected chunk {chunk.payload}/{chunk.index}: all payloads are complete")
        if (chunk.payload, chunk.index) != (payload, index):
            raise WireError(f"chunk {chunk.payload}/{chunk.index} out of order, expected {payload}/{index}")
        header, start = self.headers[payload], self.filled[payload]
        last = index + 1 == header.num_chunks
        end = start + len(chunk.data)
        if not chunk.data or end > header.size or (last and end != header.size):
            raise WireError(f"payload {header.kind!r}: chunk {index} leaves {end} of {header.size} bytes")
        self._make_room(payload, end)
        self.buffers[payload][start:end] = chunk.data
        self.filled[payload] = end
        self.position = (payload + 1, 0) if last else (payload, index + 1)
        self._skip_complete()

    def finish(self) -> dict[DataKind, bytearray]:
        payload, index = self.position
        if payload < len(self.headers):
            kind = self.headers[payload].kind
            raise StreamEnded(f"stream ended before chunk {payload}/{index}: payload {kind!r} is incomplete")
        for header, buffer in zip(self.headers, self.buffers, strict=True):
            if hashlib.sha256(buffer).digest() != header.sha256:
                raise WireError(f"payload {header.kind!r}: sha256 does not match the header")
        # The buffers themselves, not copies: the server reads updates as writable views of them.
        return dict(zip(self.kinds, self.buffers, strict=True))

    def read(self, messages: Iterator[pb.ServerMessage] | Iterator[pb.ClientMessage]) -> dict[DataKind, bytearray]:
        for message in messages:
            if message.WhichOneof("body") != "chunk":
                raise WireError(f"expected a chunk, got {message.WhichOneof('body')!r}")
            self.add(message.chunk)
        return self.finish()

    def _make_room(self, payload: int, end: int) -> None:
        """Grow payload's buffer to hold `end` bytes: to the smallest size >> k that does.

        Each step about doubles the buffer, which a bytearray resizes to exactly the size asked
        (it over-allocates only small steps), and the last step is the announced size itself.
        """
        buffer, size = self.buffers[payload], self.headers[payload].size
        if end <= len(buffer):
            return
        target = size
        while target >> 1 >= end:
            target >>= 1
        buffer.extend(bytes(target - len(buffer)))  # bytes(n) is calloc'd: no page is touched twice

    def _skip_complete(self) -> None:  # empty payloads have no chunks to wait for
        payload, index = self.position
        while payload < len(self.headers) and self.headers[payload].num_chunks == 0:
            payload, index = payload + 1, 0
        self.position = (payload, index)


def _check_announcement(kind: DataKind, h: pb.PayloadHeader, limits: Mapping[str, int] | None, what: str) -> None:
    """One payload header, before anything is buffered: expected, within its limit, chunks that fit, a digest."""
    if limits is not None and kind.value not in limits:
        raise WireError(f"payload {kind.value!r} is not expected in this {what}")
    if limits is not None and h.size > limits[kind.value]:
        raise WireError(f"payload {kind.value!r} announces {h.size} bytes, above its limit of {limits[kind.value]}")
    if (h.size == 0) != (h.num_chunks == 0) or h.num_chunks > h.size:
        raise WireError(f"payload {kind.value!r}: {h.num_chunks} chunks cannot carry {h.size} bytes")
    if len(h.sha256) != hashlib.sha256().digest_size:
        raise WireError(f"payload {kind.value!r}: a sha256 of {len(h.sha256)} bytes, not 32")


class Digests:
    """sha256 of payload blobs, each distinct blob hashed once however many headers carry it.

    The orchestrator hands every site of a round the same encoded model (one `bytes` object), so
    the board building a round's headers shares one Digests and hashes that model once, not once
    per site. Blobs are known by identity; each is held while it is known, so its id cannot pass
    to another object. Only immutable `bytes` are remembered (a bytearray may change).
    """

    def __init__(self) -> None:
        self._known: dict[int, tuple[bytes, bytes]] = {}  # id(blob) -> (blob, digest)
        self.computed = 0  # blobs hashed so far

    def __call__(self, blob: bytes) -> bytes:
        known = self._known.get(id(blob)) if type(blob) is bytes else None
        if known is not None:
            return known[1]
        self.computed += 1
        digest = hashlib.sha256(blob).digest()
        if type(blob) is bytes:
            self._known[id(blob)] = (blob, digest)
        return digest


def _payload_headers(
    payload: Mapping[DataKind, bytes], chunk_size: int, digests: Digests | None = None
) -> list[pb.PayloadHeader]:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    digest = digests if digests is not None else Digests()
    return [
        pb.PayloadHeader(
            kind=DataKind(kind).value,
            size=len(blob),
            num_chunks=-(-len(blob) // chunk_size),
            sha256=digest(blob),
        )
        for kind, blob in payload.items()
    ]


def stream(
    message_type: type[Message],
    field: str,
    header: pb.InstructionHeader | pb.ReplyHeader,
    payload: Mapping[DataKind, bytes],
    chunk_size: int,
) -> Iterator[Message]:
    """`message_type(field=header)`, then each payload's chunks in header order."""
    yield message_type(**{field: header})
    for number, blob in enumerate(payload.values()):
        view = memoryview(blob)
        for index, start in enumerate(range(0, len(view), chunk_size)):
            chunk = pb.Chunk(payload=number, index=index, data=bytes(view[start : start + chunk_size]))
            yield message_type(chunk=chunk)


def _fit_config(fit: pb.FitConfig) -> FitConfig:
    """A FitConfig from its wire form; an optional field that is unset is None."""
    values = {}
    for f in fields(FitConfig):
        descriptor = pb.FitConfig.DESCRIPTOR.fields_by_name[f.name]
        unset = descriptor.has_presence and not fit.HasField(f.name)
        values[f.name] = None if unset else getattr(fit, f.name)
    return FitConfig(**values)


def _kind(value: str) -> InstructionKind:
    try:
        return InstructionKind(value)
    except ValueError:
        raise WireError(f"unknown instruction kind {value[:64]!r}") from None


def _data_kind(value: str) -> DataKind:
    try:
        return DataKind(value)
    except ValueError:
        raise WireError(f"unknown payload kind {value[:64]!r}") from None
