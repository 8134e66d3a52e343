"""Weights on the wire: safetensors bytes in, named numpy arrays out. Never pickle.

A blob comes from a site, so it is parsed as hostile bytes: whatever it holds, `views` and `decode`
return arrays or raise `CodecError`, never anything else. The rules (those of the safetensors
library, checked here in Python so that no parser of another language meets a site's bytes):
1) an 8-byte little-endian header length, a header of at most 100 MB that fits the blob;
2) the header is a JSON object (no NaN or Infinity, nesting Python can parse) of tensor names to
   {"dtype", "shape", "data_offsets"}, plus an optional "__metadata__" of strings to strings;
   a name may appear once;
3) a dtype numpy can hold; a shape of at most 64 non-negative integers (not booleans, not floats)
   whose elements numpy can address;
4) offsets are integers, and the tensors tile the data exactly: sorted by offset, each begins
   where the one before ends, the last ends at the blob's end, and each spans its shape's bytes.
   So no two tensors share memory (the server scales an update in place: aliased tensors would be
   scaled twice) and no byte is unaccounted for.

`views` reads without copying, for the server, which folds large updates into a running sum and
must not hold two copies of each; `decode` is the same parse, then copies. `share_storage` lets a
model and its encoded form share memory (see its docstring).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping

import numpy as np
from safetensors.numpy import save

from fedrad.types import Weights

Buffer = bytes | bytearray | memoryview
# safetensors dtype codes that numpy can hold, little-endian (BF16 has no numpy dtype and is refused)
_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}  # fmt: skip
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own bound
_MAX_DIMS = 64  # numpy's
_MAX_ELEMENT_BYTES = 2**63 - 1  # numpy cannot address an array larger than this, even an empty one


class CodecError(ValueError):
    """A payload that is not a valid safetensors blob."""


def encode(weights: Mapping[str, np.ndarray]) -> bytes:
    """Serialize named arrays to safetensors bytes (contiguous copies where needed; 0-d stays 0-d)."""
    return save({name: np.require(np.asarray(array), requirements="C") for name, array in weights.items()})


def decode(blob: Buffer) -> Weights:
    """Parse safetensors bytes to named arrays that own their memory (copies; keyed by name, order not meaningful)."""
    return {name: array.copy() for name, array in views(blob).items()}


def views(blob: Buffer) -> Weights:
    """Parse safetensors bytes into arrays that view `blob` without copying.

    The arrays are writable when `blob` is a bytearray (the gRPC reassembler's buffer), so the
    server can scale an update in place; read-only for bytes. The blob stays alive as long as
    any of its arrays does. Anything but a valid blob (the module docstring's rules) is a CodecError.
    """
    try:
        buffer = memoryview(blob).cast("B")
    except (TypeError, ValueError) as exc:
        raise CodecError(f"payload is not valid safetensors: not a contiguous byte buffer: {exc}") from exc
    header, data = _header(buffer)
    entries = [(name, *_entry(name, info)) for name, info in header.items() if name != "__metadata__"]
    _check_tiling(entries, len(data))
    out = {}
    for name, dtype, shape, (begin, end) in entries:
        try:  # the checks above make this safe; numpy's own refusal is still the module's error
            out[name] = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin)
            out[name] = out[name].reshape(shape)
        except (ValueError, OverflowError, TypeError, MemoryError) as exc:
            raise CodecError(f"payload is not valid safetensors: tensor {name!r}: {exc}") from exc
    return out


def _fail(reason: str) -> CodecError:
    return CodecError(f"payload is not valid safetensors: {reason}")


def _header(buffer: memoryview) -> tuple[dict, memoryview]:
    """Rules 1) and 2): the header as a dict of names to entries, and the data after it."""
    if len(buffer) < 8:
        raise _fail(f"{len(buffer)} bytes, too short for a header")
    size = int.from_bytes(buffer[:8], "little")
    if size > MAX_HEADER_BYTES or 8 + size > len(buffer):
        raise _fail(f"header of {size} bytes in a {len(buffer)}-byte blob")
    try:
        header = json.loads(bytes(buffer[8 : 8 + size]), object_pairs_hook=_unique, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, a name twice, 5000-digit integers
        raise _fail(f"header is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(header, dict):
        raise _fail("header is not a JSON object")
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise _fail("__metadata__ is not a map of strings to strings")
    return header, buffer[8 + size :]


def _unique(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"the name {name[:100]!r} appears twice in one object")
        out[name] = value
    return out


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _entry(name: str, info: object) -> tuple[np.dtype, tuple[int, ...], tuple[int, int]]:
    """Rule 3): one tensor's dtype, shape and (begin, end), each checked for its type and range."""
    bad = _fail(f"tensor {name!r}: bad entry {str(info)[:200]}")
    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str) or info["dtype"] not in _DTYPES:
        raise bad
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(_is_count(n) for n in shape):
        raise bad
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets):
        raise bad
    dtype = np.dtype(_DTYPES[info["dtype"]])
    addressed = dtype.itemsize
    for n in shape:
        addressed *= max(n, 1)  # zeros aside: numpy refuses (0, 2**62, 2**62) too
        if addressed > _MAX_ELEMENT_BYTES:
            raise _fail(f"tensor {name!r}: shape {str(shape)[:200]} is too large for any array")
    count = 1
    for n in shape:
        count *= n
    begin, end = offsets
    if end < begin or end - begin != count * dtype.itemsize:
        raise _fail(f"tensor {name!r}: offsets {begin}..{end} do not hold shape {shape} of {info['dtype']}")
    return dtype, tuple(shape), (begin, end)


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value < 2**63  # bool is not an int here; neither is 2.0


def _check_tiling(entries: list[tuple[str, np.dtype, tuple[int, ...], tuple[int, int]]], size: int) -> None:
    """Rule 4): the tensors cover the data exactly, end to end, without sharing a byte."""
    position = 0
    for name, _, _, (begin, end) in sorted(entries, key=lambda e: e[3]):
        if begin != position:
            what = "overlaps the tensor before it" if begin < position else f"leaves bytes {position}..{begin} unused"
            raise _fail(f"tensor {name!r}: offsets {begin}..{end} {what}")
        if end > size:
            raise _fail(f"tensor {name!r}: offsets {begin}..{end} run past the {size} bytes of data")
        position = end
    if position != size:
        raise _fail(f"the tensors end at byte {position} of {size} bytes of data")


def share_storage(weights: MutableMapping[str, np.ndarray], blob: bytes) -> None:
    """Rebind each array of `weights` to the equal, read-only view of it inside `blob` (= encode(weights)).

    The orchestrator keeps the global model and its encoded form for the whole round (the form
    is re-sent to a site that reconnects). Sharing one buffer halves that: for a 200 MB model the
    server holds 200 MB, not 400. Values are unchanged; an in-place write to the model now fails
    loudly instead of silently diverging from what was sent.
    """
    shared = views(blob)
    if set(shared) != set(weights):
        raise ValueError("share_storage: the blob does not encode these weights")
    for name in list(weights):
        weights[name] = shared[name]
