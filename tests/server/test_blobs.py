"""Each model is serialized once: evaluated at the end of a round, sent as is in the next round's FIT."""

from __future__ import annotations

import numpy as np

from fedrad.codec import decode
from fedrad.run.simulate import MethodRun, build_sites
from fedrad.server import blobs as blobs_module
from fedrad.server.blobs import ModelBlobs


def _counting(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = blobs_module.encode

    def encode(weights):
        calls.append(len(weights))
        return real(weights)

    monkeypatch.setattr(blobs_module, "encode", encode)
    return calls


def test_the_same_weights_are_encoded_once_and_share_the_blobs_memory(monkeypatch):
    calls = _counting(monkeypatch)
    cache, weights = ModelBlobs(), {"w": np.arange(4, dtype=np.float32)}
    blob = cache.encode(weights)
    assert cache.encode(weights) is blob and len(calls) == 1
    assert not weights["w"].flags.writeable  # a view into the blob: the model and its wire form are one buffer
    np.testing.assert_array_equal(decode(blob)["w"], np.arange(4, dtype=np.float32))


def test_a_dict_whose_entry_was_replaced_is_encoded_again_and_retain_forgets_the_rest(monkeypatch):
    calls = _counting(monkeypatch)
    cache, weights, other = ModelBlobs(), {"w": np.zeros(2, np.float32)}, {"v": np.ones(2, np.float32)}
    first = cache.encode(weights)
    weights["w"] = np.ones(2, np.float32)  # a new model in the same dict
    assert cache.encode(weights) is not first and len(calls) == 2
    cache.encode(other)
    cache.retain([weights])
    cache.encode(weights), cache.encode(other)
    assert len(calls) == 4  # `weights` kept its blob; `other` was forgotten and encoded again


def test_each_rounds_global_model_is_encoded_once_for_evaluation_and_the_next_rounds_fit(
    tiny_config, tmp_path, monkeypatch
):
    calls = _counting(monkeypatch)
    rounds = tiny_config.train.rounds
    MethodRun(tiny_config, "fedavg", tmp_path, build_sites(tiny_config)).run()
    # the initial model for round 0's FIT, then each round's new model once (evaluated, then sent on);
    # before, the model evaluated in round r was encoded again for round r + 1's FIT: 2 x rounds
    assert len(calls) == rounds + 1
