from __future__ import annotations

import pickle

import numpy as np
import pytest

from fedrad.codec import CodecError, decode, encode


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
