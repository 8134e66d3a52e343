from __future__ import annotations

import dataclasses
import hashlib

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
