from __future__ import annotations

import pickle

import numpy as np
import pytest

from fedrad.codec import CodecError, decode, encode, share_storage, views


def test_round_trip_keeps_names_dtypes_and_values():
    weights = {"conv.weight": np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32),
               "bn.num_batches_tracked": np.array(7, dtype=np.int64)}
    back = decode(encode(weights))
    assert set(back) == set(weights)
    for name, array in weights.items():
        assert back[name].dtype == array.dtype
        np.testing.assert_array_equal(back[name], array)


@pytest.mark.parametrize("blob", [b"", b"garbage bytes", pickle.dumps({"w": np.zeros(2)})])
def test_anything_but_safetensors_is_refused(blob):
    with pytest.raises(CodecError):
        decode(blob)


def _sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"conv.weight": rng.normal(size=(4, 3, 2)).astype(np.float32), "fc.bias": np.arange(3, dtype=np.float64),
            "half": np.ones((2, 2), np.float16), "bn.num_batches_tracked": np.array(9, dtype=np.int64),
            "flags": np.array([True, False]), "empty": np.zeros((0, 3), np.float32)}


def test_views_read_what_the_library_reads_without_copying():
    blob = bytearray(encode(_sample()))
    copied, viewed = decode(blob), views(blob)
    assert set(viewed) == set(copied)
    for name, array in copied.items():
        assert viewed[name].dtype == array.dtype and viewed[name].shape == array.shape
        np.testing.assert_array_equal(viewed[name], array)
    viewed["conv.weight"][0, 0, 0] = 123.0  # writable, and it is the blob's memory
    assert decode(blob)["conv.weight"][0, 0, 0] == 123.0


def test_views_of_bytes_are_read_only():
    viewed = views(encode(_sample()))
    with pytest.raises(ValueError):
        viewed["fc.bias"][0] = 1.0


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x01", (10**6).to_bytes(8, "little") + b"{}", (2).to_bytes(8, "little") + b"[]",
     (4).to_bytes(8, "little") + b"nope", pickle.dumps({"w": np.zeros(2)})],
)
def test_views_refuse_what_is_not_safetensors(blob):
    with pytest.raises(CodecError):
        views(blob)


def test_views_refuse_offsets_outside_the_data():
    header = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
    with pytest.raises(CodecError, match="'w'"):
        views(len(header).to_bytes(8, "little") + header + b"\x00" * 8)  # 8 of 16 bytes present


def test_share_storage_keeps_values_and_makes_the_model_read_only():
    weights = _sample()
    before = {name: array.copy() for name, array in weights.items()}
    blob = encode(weights)
    share_storage(weights, blob)
    for name, array in before.items():
        np.testing.assert_array_equal(weights[name], array)
        assert weights[name].shape == array.shape
    with pytest.raises(ValueError):
        weights["conv.weight"] += 1.0


def test_a_0d_array_keeps_its_shape():
    assert decode(encode({"n": np.array(3, np.int64)}))["n"].shape == ()
