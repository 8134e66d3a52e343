from __future__ import annotations

import dataclasses
import hashlib
import tracemalloc

import numpy as np
import pytest

from fedrad.codec import decode, encode
from fedrad.transport import fedrad_pb2 as pb
from fedrad.transport import wire
from fedrad.types import DataKind, FailureKind, FitConfig, Instruction, InstructionKind, Reply

GRPC_DEFAULT_LIMIT = 4 * 1024 * 1024


def _instruction(payload: dict[DataKind, bytes]) -> Instruction:
    # Every field off its default, so a field the wire forgets shows up as a difference.
    fit = FitConfig(epochs=3, batch_size=16, lr=0.01, momentum=0.5, weight_decay=1e-4, prox_mu=0.1, lr_decay=0.9)
    return Instruction(
        round=7,
        site_id="hospital-a",
        kind=InstructionKind.EVALUATE,
        payload=payload,
        fit=fit,
        job_hash="ab" * 32,
        seed=2**32 - 1,
        keep_local=frozenset({"bn.weight", "bn.running_mean"}),
    )


def test_instruction_larger_than_grpc_limit_is_chunked_and_reassembled() -> None:
    weights = {"w": np.arange(1_500_000, dtype=np.float32), "b": np.ones((3, 4), dtype=np.float64)}
    blob = encode(weights)
    assert len(blob) > GRPC_DEFAULT_LIMIT
    instruction = _instruction({DataKind.WEIGHTS: blob, DataKind.METRICS: b""})

    messages = list(wire.instruction_messages(instruction, task_id="t-1"))

    assert [m.WhichOneof("body") for m in messages] == ["instruction"] + ["chunk"] * 6  # 5.7 MiB: 6 chunks
    assert max(m.ByteSize() for m in messages) < GRPC_DEFAULT_LIMIT / 3
    task_id, received = wire.read_instruction(iter(messages))
    assert task_id == "t-1" and received == instruction
    np.testing.assert_array_equal(decode(received.payload[DataKind.WEIGHTS])["w"], weights["w"])


@pytest.mark.parametrize("error", [None, "", "RuntimeError: out of memory"])
def test_reply_round_trip_keeps_every_field(error: str | None) -> None:
    reply = Reply(
        round=3,
        site_id="hospital-b",
        kind=InstructionKind.FIT,
        payload={DataKind.WEIGHTS: b"\x00\x01" * 1000, DataKind.OUTPUTS: b"xyz"},
        num_examples=123,
        metrics={"train_loss": 0.125, "auc": 0.75},
        error=error,
        error_kind=None if error is None else FailureKind.BUDGET,
    )
    messages = list(wire.reply_messages(reply, task_id="t-2", chunk_size=512))
    assert sum(m.WhichOneof("body") == "chunk" for m in messages) == 4 + 1
    assert wire.read_reply(iter(messages)) == ("t-2", reply)


def test_a_failure_kind_this_server_does_not_know_reads_as_error() -> None:
    reply = Reply(round=0, site_id="hospital-b", kind=InstructionKind.FIT, error="no", error_kind=FailureKind.BUDGET)
    messages = list(wire.reply_messages(reply, task_id="t-3"))
    messages[0].reply.error_kind = "mischief"
    assert wire.read_reply(iter(messages))[1].error_kind == FailureKind.ERROR


def test_every_dataclass_field_has_a_wire_field() -> None:
    assert {f.name for f in dataclasses.fields(FitConfig)} <= set(pb.FitConfig.DESCRIPTOR.fields_by_name)
    instruction_fields = {f.name for f in dataclasses.fields(Instruction)} - {"payload"}
    assert instruction_fields <= set(pb.InstructionHeader.DESCRIPTOR.fields_by_name)
    assert {f.name for f in dataclasses.fields(Reply)} - {"payload"} <= set(pb.ReplyHeader.DESCRIPTOR.fields_by_name)


def test_an_empty_stream_means_no_work() -> None:
    assert wire.read_instruction(iter([])) is None


def _messages(size: int = 10_000, chunk_size: int = 1000) -> list[pb.ServerMessage]:
    instruction = _instruction({DataKind.WEIGHTS: bytes(range(256)) * (size // 256) + b"x" * (size % 256)})
    return list(wire.instruction_messages(instruction, "t", chunk_size=chunk_size))


def test_out_of_order_chunks_are_refused() -> None:
    messages = _messages()
    messages[2], messages[3] = messages[3], messages[2]
    with pytest.raises(wire.WireError, match="out of order"):
        wire.read_instruction(iter(messages))


def test_a_truncated_stream_is_refused_as_one_that_ended_early() -> None:
    with pytest.raises(wire.StreamEnded, match="incomplete"):  # a WireError: the sender went away
        wire.read_instruction(iter(_messages()[:-1]))


def test_an_extra_chunk_is_refused() -> None:
    messages = _messages()
    with pytest.raises(wire.WireError, match="complete"):
        wire.read_instruction(iter([*messages, messages[-1]]))


def test_altered_bytes_fail_the_digest() -> None:
    messages = _messages()
    messages[1].chunk.data = b"\xff" + messages[1].chunk.data[1:]
    with pytest.raises(wire.WireError, match="sha256"):
        wire.read_instruction(iter(messages))


def test_a_chunk_overrunning_its_payload_is_refused() -> None:
    messages = _messages()
    messages[1].chunk.data += b"extra"
    with pytest.raises(wire.WireError, match="leaves"):
        wire.read_instruction(iter(messages))


def test_payloads_above_the_bound_are_refused_before_buffering() -> None:
    with pytest.raises(wire.WireError, match="above the limit"):
        wire.read_instruction(iter(_messages(size=10_000)), max_bytes=9_999)


def test_unknown_kinds_are_refused() -> None:
    messages = _messages()
    messages[0].instruction.payloads[0].kind = "patient_names"
    with pytest.raises(wire.WireError, match="unknown payload kind 'patient_names'"):
        wire.read_instruction(iter(messages))
    messages = _messages()
    messages[0].instruction.kind = "train_forever"
    with pytest.raises(wire.WireError, match="unknown instruction kind"):
        wire.read_instruction(iter(messages))


def test_values_outside_the_wire_range_fail_at_encoding() -> None:
    instruction = dataclasses.replace(_instruction({}), seed=2**70)
    with pytest.raises(wire.WireError, match="hospital-a"):
        wire.instruction_header(instruction, "t")


def test_a_blob_in_many_headers_is_hashed_once_and_a_changeable_one_each_time() -> None:
    # Prepare: one encoded model for three sites (as the orchestrator sends it), plus a control each.
    model = encode({"w": np.arange(1000, dtype=np.float32)})
    controls = [bytes([site]) * 64 for site in range(3)]
    digests = wire.Digests()

    # Execute
    headers = [
        wire.instruction_header(
            dataclasses.replace(_instruction({DataKind.WEIGHTS: model, DataKind.CONTROL: control}), site_id=f"s{n}"),
            f"t{n}", digests=digests,
        )
        for n, control in enumerate(controls)
    ]

    # Assert: four distinct blobs, four hashes; every header carries the model's true digest
    assert digests.computed == 1 + len(controls)
    assert [h.payloads[0].sha256 for h in headers] == [hashlib.sha256(model).digest()] * 3
    assert [h.payloads[1].sha256 for h in headers] == [hashlib.sha256(c).digest() for c in controls]
    changeable = bytearray(b"abc")
    first = digests(changeable)
    changeable[0] = ord("x")
    assert digests(changeable) == hashlib.sha256(b"xbc").digest() != first
    assert digests.computed == 1 + len(controls) + 2


def _announcement(size: int, kind: str = "weights", num_chunks: int | None = None) -> pb.PayloadHeader:
    chunks = -(-size // wire.CHUNK_SIZE) if num_chunks is None else num_chunks
    return pb.PayloadHeader(kind=kind, size=size, num_chunks=chunks, sha256=b"\x00" * 32)


def _held_while(build) -> int:
    """The most bytes Python allocated while `build()` ran (tracemalloc: deterministic, no RSS)."""
    tracemalloc.start()
    try:
        kept = build()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del kept
    return peak


def test_a_gigabyte_announced_with_no_chunks_costs_under_a_mebibyte() -> None:
    def announce_and_stop() -> wire.Reassembler:
        reassembler = wire.Reassembler([_announcement(1 << 30)])
        with pytest.raises(wire.StreamEnded):
            reassembler.read(iter([]))
        return reassembler

    assert _held_while(announce_and_stop) < 1 << 20


def test_a_buffer_grows_with_its_chunks_and_ends_exactly_its_size() -> None:
    # Prepare: a 10,000-byte payload in 1,000-byte chunks
    messages = _messages(size=10_000, chunk_size=1000)
    reassembler = wire.Reassembler(messages[0].instruction.payloads)

    # Execute, and Assert: never more than twice what arrived; exactly the payload at the end
    for arrived, message in enumerate(messages[1:], start=1):
        reassembler.add(message.chunk)
        assert arrived * 1000 <= len(reassembler.buffers[0]) <= 2 * arrived * 1000
    (payload,) = reassembler.finish().values()
    assert type(payload) is bytearray and len(payload) == 10_000


def test_an_announcement_above_its_kinds_limit_is_refused_before_anything_is_held() -> None:
    def refuse() -> None:
        refusal = "payload 'weights' announces 1073741824 bytes, above its limit of 1000"
        with pytest.raises(wire.WireError, match=refusal):
            wire.Reassembler([_announcement(1 << 30)], limits={"weights": 1000})

    assert _held_while(refuse) < 1 << 20


def _reply_messages(payload: dict[DataKind, bytes]) -> list[pb.ClientMessage]:
    reply = Reply(round=1, site_id="hospital-b", kind=InstructionKind.FIT, payload=payload, num_examples=4)
    return list(wire.reply_messages(reply, task_id="t-4", chunk_size=100))


def test_a_kind_the_limits_do_not_name_is_not_expected_in_this_reply() -> None:
    messages = _reply_messages({DataKind.WEIGHTS: b"w" * 300, DataKind.OUTPUTS: b"o" * 10})
    with pytest.raises(wire.WireError, match="payload 'outputs' is not expected in this reply"):
        wire.read_reply(iter(messages), limits={DataKind.WEIGHTS: 1000})


def test_a_reply_within_its_limits_reads_back_whole() -> None:
    messages = _reply_messages({DataKind.WEIGHTS: b"w" * 300, DataKind.CONTROL: b"c" * 10})
    _, reply = wire.read_reply(iter(messages), limits={"weights": 300, "control_variates": 10})
    assert reply.payload == {DataKind.WEIGHTS: b"w" * 300, DataKind.CONTROL: b"c" * 10}
    assert all(type(blob) is bytearray for blob in reply.payload.values())  # writable views for the server
    with pytest.raises(wire.WireError, match="payload 'weights' announces 300 bytes, above its limit of 299"):
        wire.read_reply(iter(messages), limits={"weights": 299, "control_variates": 10})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda h: setattr(h.payloads[0], "sha256", b"short"), "a sha256 of 5 bytes"),
        (lambda h: setattr(h.payloads[0], "num_chunks", 2**32 - 1), "chunks cannot carry 300 bytes"),
        (lambda h: setattr(h.payloads[0], "size", 2**64 - 1), "above the limit"),
        (lambda h: setattr(h.payloads[0], "kind", "x" * 10_000), "unknown payload kind 'xxxx"),
        (lambda h: setattr(h, "kind", "\x00"), "unknown instruction kind"),
        (lambda h: h.payloads.extend([h.payloads[0]] * 7), "7 payloads|8 payloads"),
    ],
)
def test_a_hostile_reply_header_is_refused_before_any_chunk(change, reason) -> None:
    messages = _reply_messages({DataKind.WEIGHTS: b"w" * 300})
    change(messages[0].reply)
    with pytest.raises(wire.WireError, match=reason):
        wire.read_reply(iter(messages[:1]))  # no chunk read: refused from the header alone


@pytest.mark.parametrize(
    "message",
    [pb.ClientMessage(), pb.ClientMessage(chunk=pb.Chunk(payload=2**32 - 1, index=2**32 - 1, data=b"x"))],
)
def test_an_empty_message_or_a_chunk_of_no_payload_is_a_wire_error(message) -> None:
    messages = _reply_messages({DataKind.WEIGHTS: b"w" * 300})
    with pytest.raises(wire.WireError):
        wire.read_reply(iter([messages[0], message, *messages[1:]]))
    with pytest.raises(wire.WireError):
        wire.read_reply(iter([message, *messages]))


def test_odd_metrics_and_an_unknown_error_kind_pass_the_wire_for_the_orchestrator_to_judge() -> None:
    messages = _reply_messages({})
    messages[0].reply.metrics["loss"] = float("nan")
    messages[0].reply.error_kind = "\xff" * 100  # without an error: ignored
    _, reply = wire.read_reply(iter(messages))
    assert np.isnan(reply.metrics["loss"]) and reply.error is None and reply.error_kind is None
