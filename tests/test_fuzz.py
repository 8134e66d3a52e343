"""Fuzzing the parsers of site-supplied bytes: only the module's own error, or a site's failure, comes out.

A hospital controls every byte of its replies. Four parsers meet them, and each is fed generated
hostile input here (seeded and counted, so a run is the same every time and its size is visible):
a) `codec.views` / `codec.decode`: mutated safetensors blobs -> arrays, or CodecError;
b) `wire.read_reply`: mutated message streams, with and without per-kind limits -> a Reply, or WireError;
c) `site_stats.read_stats`: mutated METRICS against real tasks' `empty_stats()` -> stats, or a SiteFailure;
d) `Orchestrator._accept` with a real FedAvg: mutated training replies -> a FitResult, or None and a failure.
The mutations start from valid inputs (so they reach the deep checks) and then flip bits, truncate,
rewrite the safetensors header JSON with hostile shapes, offsets and dtypes, reorder, drop,
duplicate and oversize chunks, and announce absurd sizes.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save

from fedrad.codec import CodecError, decode, encode, views
from fedrad.server.ledger import Ledger
from fedrad.server.orchestrator import Orchestrator, RunContext
from fedrad.server.site_stats import pooled_metrics, read_stats
from fedrad.strategies.base import FitResult
from fedrad.strategies.fedavg import FedAvg
from fedrad.tasks.classification import ClassificationTask
from fedrad.tasks.segmentation import SegmentationTask
from fedrad.transport import fedrad_pb2 as pb
from fedrad.transport import wire
from fedrad.transport.inprocess import InProcessTransport
from fedrad.types import DataKind, FailureKind, InstructionKind, Reply, SiteFailure

CODEC_BLOBS, CODEC_HEADERS, WIRE_STREAMS, STATS_BLOBS, FIT_REPLIES = 7000, 400, 2500, 1500, 1000  # 12,400 in all
HOSTILE_NUMBERS = [-1, 2**31, 2**32 + 1, 2**63, 2**64, 2**70, 10**30, 1e300, 1e400, float("nan"), 0.5, True, None]
HOSTILE_VALUES = HOSTILE_NUMBERS + ["4", [], [[1]], {"a": 1}, [1] * 70]


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def _samples() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.arange(4, dtype=np.float64)},
        {"n": np.array(7, np.int64), "e": np.zeros((0, 3), np.float16), "f": np.array([True, False])},
        {f"t{k}": rng.integers(0, 255, size=k + 1, dtype=np.uint8) for k in range(6)},
        {"x": rng.integers(-9, 9, size=(2, 2, 2), dtype=np.int16), "u": np.arange(3, dtype=np.uint32)},
    ]


def _split(blob: bytes) -> tuple[dict, bytes]:
    size = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + size]), blob[8 + size :]


def _join(header: str, data: bytes) -> bytes:
    raw = header.encode()
    return len(raw).to_bytes(8, "little") + raw + data


def _rewrite_header(rng: np.random.Generator, blob: bytes) -> bytes:
    """The header JSON of a valid blob, one field of one entry replaced by something hostile."""
    header, data = _split(blob)
    names = [n for n in header if n != "__metadata__"] or ["w"]
    name = names[int(rng.integers(len(names)))]
    entry = dict(header.get(name) or {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]})
    value = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
    field = ["dtype", "shape", "data_offsets", "shape[0]", "data_offsets[1]", "entry", "metadata", "twin"][
        int(rng.integers(8))
    ]
    if field in ("shape[0]", "data_offsets[1]"):
        key, index = field.split("[")[0], 0 if field == "shape[0]" else 1
        entry[key] = list(entry[key]) or [0]
        entry[key][min(index, len(entry[key]) - 1)] = value
    elif field == "entry":
        entry = value
    elif field == "metadata":
        header["__metadata__"] = value if rng.random() < 0.7 else {"format": value}
    elif field == "twin":  # another tensor on the same bytes, or a name twice in the text
        header[name + "_twin"] = entry
    else:
        entry[field] = value if field != "dtype" or rng.random() < 0.5 else _pick(rng, ["BF16", "F8", "f32"])
    header[name] = entry
    text = json.dumps(header, allow_nan=True).replace("1e+400", "1e400")
    if field == "twin" and rng.random() < 0.5:
        text = text.replace(f'"{name}_twin"', f'"{name}"')
    return _join(text, data)


def _mutate_blob(rng: np.random.Generator, blob: bytes) -> bytes:
    """One of: bit flips, a truncation, appended bytes, a forged length, a rewritten header, random bytes."""
    choice = int(rng.integers(7))
    raw = bytearray(blob)
    if choice == 0:
        for _ in range(int(rng.integers(1, 9))):
            position = int(rng.integers(len(raw)))
            raw[position] ^= 1 << int(rng.integers(8))
    elif choice == 1:
        raw = raw[: int(rng.integers(len(raw)))]
    elif choice == 2:
        raw += rng.bytes(int(rng.integers(1, 64)))
    elif choice == 3:
        raw[:8] = _pick(rng, [0, 1, 7, len(raw) - 8, len(raw), 2**32, 2**63, 2**64 - 1]).to_bytes(8, "little")
    elif choice in (4, 5):
        return _rewrite_header(rng, blob)
    else:
        raw = bytearray(rng.bytes(int(rng.integers(0, 200))))
        if rng.random() < 0.5 and len(raw) >= 8:
            raw[:8] = (len(raw) - 8).to_bytes(8, "little")
    return bytes(raw)


def _parse_both(blob: bytes) -> dict[str, np.ndarray] | None:
    """views (of bytes and of a bytearray) and decode agree: the same arrays, or CodecError from each."""
    outcomes = []
    for parse, source in ((views, blob), (views, bytearray(blob)), (decode, blob)):
        try:
            outcomes.append(parse(source))
        except CodecError:
            outcomes.append(None)
    viewed, writable, copied = outcomes
    assert (viewed is None) == (writable is None) == (copied is None)
    if viewed is None:
        return None
    _, data = _split(blob)
    assert sum(a.nbytes for a in viewed.values()) == len(data)  # the tensors tile the data exactly
    for name, array in viewed.items():
        assert writable[name].flags.writeable and not array.flags.writeable and copied[name].flags.owndata
        assert array.tobytes() == writable[name].tobytes() == copied[name].tobytes()
    return viewed


def test_codec_refuses_mutated_blobs_with_codec_error_only():
    rng, bases = np.random.default_rng(1), [encode(s) for s in _samples()]
    bases.append(save({"w": np.ones(2, np.float32)}, metadata={"format": "np"}))
    parsed = 0
    for number in range(CODEC_BLOBS):
        blob = _mutate_blob(rng, bases[number % len(bases)])
        parsed += _parse_both(blob) is not None
    assert number + 1 == CODEC_BLOBS and 0 < parsed < CODEC_BLOBS  # some mutations stay valid (a flipped value)


def _json_values():
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.text(max_size=4)
    )
    nested = lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2)  # noqa: E731
    return st.recursive(scalars, nested, max_leaves=4)


def test_codec_refuses_generated_headers_with_codec_error_only():
    seen = []

    @settings(derandomize=True, max_examples=CODEC_HEADERS, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(
        dtype=st.sampled_from(["F32", "I64", "U8", "BOOL", "BF16", ""]) | _json_values(),
        shape=st.lists(st.integers(min_value=-3, max_value=2**64) | _json_values(), max_size=4) | _json_values(),
        offsets=st.lists(st.integers(min_value=-3, max_value=2**64), min_size=2, max_size=2) | _json_values(),
        data=st.binary(max_size=64),
    )
    def parse(dtype, shape, offsets, data):
        seen.append(1)
        header = json.dumps({"w": {"dtype": dtype, "shape": shape, "data_offsets": offsets}})
        _parse_both(_join(header, data))

    parse()
    assert len(seen) >= CODEC_HEADERS


# b) the wire --------------------------------------------------------------------------------------


def _stream(rng: np.random.Generator) -> tuple[Reply, list[pb.ClientMessage]]:
    kinds = [k for k in DataKind if rng.random() < 0.4] or [DataKind.WEIGHTS]
    payload = {k: rng.bytes(int(rng.integers(0, 3000))) for k in kinds}
    reply = Reply(int(rng.integers(0, 9)), "site-a", InstructionKind.FIT, payload, num_examples=int(rng.integers(99)),
                  metrics={"loss": _pick(rng, [0.5, np.nan, np.inf])})  # fmt: skip
    return reply, list(wire.reply_messages(reply, "t", chunk_size=int(rng.integers(1, 1024))))


def _mutate_stream(rng: np.random.Generator, messages: list[pb.ClientMessage]) -> list[pb.ClientMessage]:
    messages = [type(m).FromString(m.SerializeToString()) for m in messages]  # deep copies
    header, chunks = messages[0].reply, len(messages) - 1
    choice = int(rng.integers(12))
    pick = int(rng.integers(1, chunks + 1)) if chunks else 0
    if choice == 0 and chunks >= 2:  # reordered
        other = int(rng.integers(1, chunks + 1))
        messages[pick], messages[other] = messages[other], messages[pick]
    elif choice == 1 and chunks:  # duplicated
        messages.insert(pick, messages[pick])
    elif choice == 2 and chunks:  # missing
        del messages[pick]
    elif choice == 3 and chunks:  # oversized, or emptied
        messages[pick].chunk.data = messages[pick].chunk.data + rng.bytes(int(rng.integers(0, 5000))) if (
            rng.random() < 0.7) else b""  # fmt: skip
    elif choice == 4 and chunks:  # renumbered, up to uint32's end
        field = "payload" if rng.random() < 0.5 else "index"
        setattr(messages[pick].chunk, field, _pick(rng, [1, 2, 7, 2**31, 2**32 - 1]))
    elif choice == 5 and header.payloads:  # an absurd announcement
        announced = header.payloads[int(rng.integers(len(header.payloads)))]
        field = ["size", "num_chunks", "sha256", "kind"][int(rng.integers(4))]
        value = {
            "size": _pick(rng, [0, 1, 2**30, 2**31, 2**64 - 1]),
            "num_chunks": _pick(rng, [0, 1, 2**32 - 1]),
            "sha256": rng.bytes(int(rng.integers(0, 40))),
            "kind": _pick(rng, ["", "patients", "weights", "x" * 999]),
        }
        setattr(announced, field, value[field])
    elif choice == 6:  # a repeated announcement
        header.payloads.append(header.payloads[0] if header.payloads else pb.PayloadHeader(kind="weights"))
    elif choice == 7:  # the reply's own fields
        header.kind = _pick(rng, ["", "fit", "train", "\x00"])
        header.error_kind = _pick(rng, ["", "timeout", "mischief"])
        if rng.random() < 0.5:
            header.error = "site says no"
        header.metrics["odd"] = _pick(rng, [np.nan, -np.inf, 1e308])
    elif choice == 8:  # another message where a chunk belongs
        messages.insert(pick or 1, pb.ClientMessage(reply=header) if rng.random() < 0.5 else pb.ClientMessage())
    elif choice == 9:  # cut short
        messages = messages[: int(rng.integers(0, len(messages) + 1))]
    elif choice == 10 and chunks:  # a flipped byte: the digest must catch it
        data = bytearray(messages[pick].chunk.data)
        data[int(rng.integers(len(data)))] ^= 0xFF
        messages[pick].chunk.data = bytes(data)
    return messages


def _limits(rng: np.random.Generator, reply: Reply) -> dict[str, int] | None:
    if rng.random() < 0.4:
        return None
    return {k.value: len(blob) + int(rng.integers(-2, 3)) for k, blob in reply.payload.items() if rng.random() < 0.9}


def test_wire_refuses_mutated_streams_with_wire_error_only():
    rng, read, refused = np.random.default_rng(2), 0, 0
    for number in range(WIRE_STREAMS):
        reply, messages = _stream(rng)
        mutated = _mutate_stream(rng, messages) if number % 10 else messages
        limits = _limits(rng, reply)
        max_bytes = _pick(rng, [wire.MAX_PAYLOAD_BYTES, 2000, 0])
        try:
            task_id, back = wire.read_reply(iter(mutated), max_bytes, limits=limits)
        except wire.WireError:
            refused += 1
            continue
        read += 1
        assert task_id == "t" and all(type(blob) is bytearray for blob in back.payload.values())
        within = limits is None or all(len(b) <= limits.get(k.value, -1) for k, b in reply.payload.items())
        if mutated is messages and within and sum(map(len, reply.payload.values())) <= max_bytes:
            assert dataclasses.replace(back, metrics={}) == dataclasses.replace(reply, metrics={})
    assert read + refused == number + 1 == WIRE_STREAMS and read > 0 and refused > 0


# c) evaluation statistics -------------------------------------------------------------------------

TASKS = [ClassificationTask(num_classes=2), ClassificationTask(num_classes=3), SegmentationTask()]
DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int8, np.uint64, np.uint8, np.bool_]


def _valid_stats(rng: np.random.Generator, task) -> dict[str, np.ndarray]:
    if isinstance(task, SegmentationTask):
        masks = (rng.random((3, 1, 4, 4)) > 0.5).astype(np.float32)
        return task.stats(rng.random((3, 1, 4, 4)).astype(np.float32), masks)
    probs = rng.dirichlet(np.ones(task.num_classes), size=6).astype(np.float32)
    return task.stats(probs, rng.integers(0, task.num_classes, size=6))


def _mutate_stats(rng: np.random.Generator, stats: dict[str, np.ndarray]) -> bytes:
    stats = dict(stats)
    name = sorted(stats)[int(rng.integers(len(stats)))]
    choice = int(rng.integers(6))
    if choice == 0:
        stats[name] = stats[name].astype(DTYPES[int(rng.integers(len(DTYPES)))])
    elif choice == 1:
        stats[name] = np.zeros(tuple(int(n) for n in rng.integers(0, 4, size=int(rng.integers(0, 4)))), np.int64)
    elif choice == 2:
        stats.pop(name) if rng.random() < 0.5 else stats.update(extra=np.zeros(1, np.int64))
    elif choice == 3:
        value = _pick(rng, [np.nan, np.inf, -1.0, 2.0**48 + 1, 2.0**63, 1e308])
        stats[name] = np.full(stats[name].shape, value, np.float64)
    elif choice == 4:
        stats[name] = np.full(stats[name].shape, np.iinfo(np.uint64).max, np.uint64)
    else:
        return _mutate_blob(rng, encode(stats))
    return encode(stats)


def test_read_stats_turns_every_hostile_metrics_blob_into_stats_or_a_rejection():
    rng, accepted = np.random.default_rng(3), 0
    for number in range(STATS_BLOBS):
        task = TASKS[number % len(TASKS)]
        blob = _mutate_stats(rng, _valid_stats(rng, task)) if number % 8 else encode(_valid_stats(rng, task))
        site = "s1" if rng.random() < 0.95 else "s2"
        payload = {DataKind.METRICS: blob} if rng.random() < 0.97 else {DataKind.OUTPUTS: blob}
        result = read_stats(Reply(0, site, InstructionKind.EVALUATE, payload), "s1", task)
        if isinstance(result, SiteFailure):
            assert (result.kind, result.phase) == (FailureKind.REJECTED, "evaluate") and "site s1" in result.reason
            continue
        accepted += 1
        with np.errstate(all="ignore"):  # the metrics of any accepted statistics are numbers, never an exception
            task.metrics(result)
            pooled_metrics(task, [result, result])
    assert number + 1 == STATS_BLOBS and 0 < accepted < STATS_BLOBS


# d) the orchestrator's training-reply path --------------------------------------------------------


def _fit_reply(rng: np.random.Generator, model: dict[str, np.ndarray]) -> Reply:
    noise = {n: rng.normal(size=a.shape).astype(a.dtype) for n, a in model.items() if a.dtype.kind == "f"}
    weights = {n: a + noise[n] if n in noise else a for n, a in model.items()}
    choice = int(rng.integers(8))
    if choice == 1:
        weights["w"] = np.full_like(weights["w"], _pick(rng, [np.nan, np.inf, 3e38]))
    elif choice == 2:
        weights["w"] = weights["w"].astype(DTYPES[int(rng.integers(len(DTYPES)))])
    elif choice == 3:
        weights.pop("b") if rng.random() < 0.5 else weights.update(extra=np.zeros(2, np.float32))
    elif choice == 4:
        weights["b"] = np.zeros(int(rng.integers(0, 9)), np.float32)
    blob = encode(weights)
    payload: dict[DataKind, bytes | bytearray] = {DataKind.WEIGHTS: blob}
    if choice == 5:
        payload[DataKind.WEIGHTS] = _mutate_blob(rng, blob)
    elif choice == 6:
        payload = {DataKind.CONTROL: blob} if rng.random() < 0.5 else {DataKind.WEIGHTS: blob, DataKind.CONTROL: blob}
    if rng.random() < 0.5:
        payload = {k: bytearray(v) for k, v in payload.items()}  # as the gRPC reassembler hands them over
    num_examples = _pick(rng, [10, 0, -1, 10_000_001, 2**63, 2**100]) if choice == 7 else 10
    metrics = {"train_loss": _pick(rng, [0.3, np.nan, -np.inf, 1e308])}
    return Reply(0, "a", InstructionKind.FIT, payload, num_examples=num_examples, metrics=metrics)


def test_the_orchestrator_accepts_or_rejects_every_hostile_training_reply(caplog):
    # Prepare: a real FedAvg and orchestrator, the round's FIT task and instruction for site "a"
    model = {"w": np.ones((3, 4), np.float32), "b": np.zeros(4, np.float32), "n": np.array(5, np.int64)}
    strategy = FedAvg()
    ctx = RunContext(InProcessTransport({}), Ledger(), task=None)
    orchestrator = Orchestrator(strategy, ctx, ["a"], [], rounds=1)
    state = strategy.initial_state(model, ["a"])
    (task,) = strategy.configure(0, state, ["a"])
    (instruction,) = orchestrator._instructions(0, [task])
    rng, tried, accepted, failures = np.random.default_rng(4), 0, 0, []

    # Execute and Assert: a FitResult, or None with exactly one REJECTED failure more
    for _ in range(FIT_REPLIES):
        tried, before = tried + 1, len(failures)
        result = orchestrator._accept(0, task, instruction, _fit_reply(rng, model), failures)
        if result is None:
            assert len(failures) == before + 1 and failures[-1].kind == FailureKind.REJECTED
            continue
        assert isinstance(result, FitResult) and len(failures) == before
        assert set(result.weights) == set(model) and all(np.isfinite(result.weights[n]).all() for n in ("w", "b"))
        accepted += 1
    assert tried == FIT_REPLIES and 0 < accepted < FIT_REPLIES
    # and never by the orchestrator's last resort (an exception caught and logged with its traceback):
    # the codec and the validator judged every reply themselves
    assert not [record.getMessage() for record in caplog.records if record.exc_info]


def test_the_fuzz_runs_at_least_ten_thousand_payloads_in_all():
    assert CODEC_BLOBS + CODEC_HEADERS + WIRE_STREAMS + STATS_BLOBS + FIT_REPLIES >= 10_000  # each test counts its own
