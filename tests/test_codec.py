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


def _blob(header: str | bytes, data: bytes = b"") -> bytes:
    header = header.encode() if isinstance(header, str) else header
    return len(header).to_bytes(8, "little") + header + data


def _tensor(shape: str, offsets: str = "[0,16]", dtype: str = '"F32"') -> str:
    return f'{{"w":{{"dtype":{dtype},"shape":{shape},"data_offsets":{offsets}}}}}'


@pytest.mark.parametrize(
    "shape",
    ["[1e400]", "[1e300]", "[4.0]", "[Infinity]", "[NaN]", "[true, 4]", '["4"]', "[[4]]", "4", "null", "[-4]",
     f"[{2**70}]", f"[{2**64}, 0]", f"[0, {2**62}, {2**62}]", f"[{2**63}, 0]", "[" + "1," * 65 + "1]"],
)  # fmt: skip
def test_a_shape_of_huge_floats_ints_or_not_counts_is_a_codec_error(shape):
    blob = _blob(_tensor(shape), b"\x00" * 16)
    for parse in (views, decode):
        with pytest.raises(CodecError, match="'w'|not JSON"):
            parse(blob)


@pytest.mark.parametrize(
    ("offsets", "reason"),
    [("[-16, 0]", "bad entry"), (f"[0, {2**64}]", "bad entry"), ("[16, 0]", "do not hold"), ("[0.0, 16]", "bad entry"),
     ("[0, 16, 32]", "bad entry"), ('"0..16"', "bad entry"), ("[4, 20]", "unused"), ("[0, 1e400]", "bad entry")],
)  # fmt: skip
def test_offsets_out_of_range_or_not_integers_are_codec_errors(offsets, reason):
    with pytest.raises(CodecError, match=reason):
        views(_blob(_tensor("[4]", offsets), b"\x00" * 20))


def test_two_tensors_on_the_same_bytes_are_refused_so_no_update_is_scaled_twice():
    header = ('{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
              '"b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}')  # fmt: skip
    with pytest.raises(CodecError, match="overlaps"):
        views(bytearray(_blob(header, b"\x00" * 16)))


@pytest.mark.parametrize(
    ("header", "reason"),
    [('{"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}',
      "appears twice"),
     ('{"__metadata__":{"format":1}}', "__metadata__"), ('{"__metadata__":["pt"]}', "__metadata__"),
     ('{"w":' + "[" * 100_000 + "]" * 100_000 + "}", "not JSON"), ('{"w":{"dtype":["F32"]}}', "bad entry"),
     ('{"w":{"dtype":"BF16","shape":[0],"data_offsets":[0,0]}}', "bad entry"), ('{"w":7}', "bad entry"),
     (b'{"\xff":1}', "not JSON"),
     ('{"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' + " " * 8, "end at byte 0 of 4")],
)  # fmt: skip
def test_nested_garbage_repeated_names_and_bad_metadata_are_codec_errors(header, reason):
    blob = _blob(header, b"\x00" * 4)  # the last case: a valid header, then 4 bytes no tensor holds
    for parse in (views, decode):
        with pytest.raises(CodecError, match=reason):
            parse(blob)


def test_a_header_announced_larger_than_the_library_allows_is_refused_without_reading_it():
    with pytest.raises(CodecError, match="header of"):
        views((100_000_001).to_bytes(8, "little") + b"{" + b" " * 100_000_001)


def test_string_metadata_is_allowed_and_not_a_tensor():
    from safetensors.numpy import save

    blob = save({"w": np.arange(3, dtype=np.int32)}, metadata={"format": "np"})
    assert set(views(blob)) == set(decode(blob)) == {"w"}


def test_decode_owns_its_arrays_and_views_share_the_blob():
    blob = bytearray(encode(_sample()))
    copied = decode(blob)
    blob[-1] ^= 0xFF  # a byte of the last tensor's data
    assert all(array.flags.owndata and array.flags.writeable for array in copied.values())
    assert any(not np.array_equal(copied[n], v) for n, v in views(blob).items() if v.size)
