"""Weights on the wire: safetensors bytes in, named numpy arrays out. Never pickle.

`decode` copies (the library's reader); `views` reads the same format without copying, for the
server, which folds large updates into a running sum and must not hold two copies of each.
`share_storage` lets a model and its encoded form share memory (see its docstring).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, MutableMapping

import numpy as np
from safetensors.numpy import load, save

from fedrad.types import Weights

Buffer = bytes | bytearray | memoryview
# safetensors dtype codes that numpy can hold (BF16 has no numpy dtype and is refused)
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip


class CodecError(ValueError):
    """A payload that is not a valid safetensors blob."""


def encode(weights: Mapping[str, np.ndarray]) -> bytes:
    """Serialize named arrays to safetensors bytes (contiguous copies where needed; 0-d stays 0-d)."""
    return save({name: np.require(np.asarray(array), requirements="C") for name, array in weights.items()})


def decode(blob: Buffer) -> Weights:
    """Parse safetensors bytes back to named arrays (copies; keyed by name, order not meaningful)."""
    try:
        return dict(load(bytes(blob)))
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise CodecError(f"payload is not valid safetensors: {exc}") from exc


def views(blob: Buffer) -> Weights:
    """Parse safetensors bytes into arrays that view `blob` without copying.

    The arrays are writable when `blob` is a bytearray (the gRPC reassembler's buffer), so the
    server can scale an update in place; read-only for bytes. The blob stays alive as long as
    any of its arrays does. Offsets and sizes are checked like the library checks them.
    """
    buffer = memoryview(blob).cast("B")
    if len(buffer) < 8:
        raise CodecError(f"payload is not valid safetensors: {len(buffer)} bytes, too short for a header")
    size = int.from_bytes(buffer[:8], "little")
    if 8 + size > len(buffer):
        raise CodecError(f"payload is not valid safetensors: header of {size} bytes in a {len(buffer)}-byte blob")
    try:
        header = json.loads(bytes(buffer[8 : 8 + size]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CodecError(f"payload is not valid safetensors: header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise CodecError("payload is not valid safetensors: header is not a JSON object")
    data, out = buffer[8 + size :], {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(int(n) for n in info["shape"])
            begin, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CodecError(f"payload is not valid safetensors: tensor {name!r}: bad entry {info!r}") from exc
        count = math.prod(shape)
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= len(data) or end - begin != count * dtype.itemsize:
            raise CodecError(f"payload is not valid safetensors: tensor {name!r}: offsets {begin}..{end} do not fit")
        out[name] = np.frombuffer(data, dtype=dtype, count=count, offset=begin).reshape(shape)
    return out


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
