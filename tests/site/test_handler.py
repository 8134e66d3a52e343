from __future__ import annotations

import numpy as np
import pytest

from fedrad.codec import decode, encode
from fedrad.run.simulate import build_sites, build_task, initial_weights
from fedrad.site.handler import Site, SiteError
from fedrad.strategies.fedbn import shared_part
from fedrad.types import DataKind, FitConfig, Instruction, InstructionKind


@pytest.fixture
def site(tiny_config):
    data = build_sites(tiny_config)[0]
    return Site(data, build_task(tiny_config, [data]))


@pytest.fixture
def init(tiny_config, site):
    return initial_weights(site.task, tiny_config.seed)


def _fit(weights, **payload):
    return Instruction(0, "s1", InstructionKind.FIT, {DataKind.WEIGHTS: encode(weights), **payload},
                       fit=FitConfig(epochs=1, batch_size=8))  # fmt: skip


def test_a_site_returns_only_what_it_was_sent_and_keeps_the_rest(site, init):
    site.handle(_fit(init))  # the shared initialisation, once
    local_bn = {n: a.copy() for n, a in site.local.items() if n not in shared_part(init)}
    reply = site.handle(_fit(shared_part(init)))
    assert set(decode(reply.payload[DataKind.WEIGHTS])) == set(shared_part(init))  # BatchNorm never leaves
    assert any(not np.array_equal(site.local[n], local_bn[n]) for n in local_bn if "running" in n)  # BN kept training


def test_partial_weights_before_any_fit_are_refused(site, init):
    with pytest.raises(SiteError, match="missing"):
        site.handle(_fit(shared_part(init)))


def test_predict_hands_over_the_query_or_answers_one(site, init):
    site.handle(_fit(init))
    own = site.handle(Instruction(0, "s1", InstructionKind.PREDICT, {}))
    images = decode(own.payload[DataKind.RAW_DATA])["inputs"]
    assert images.shape == site.data.test.inputs.shape
    query = {DataKind.RAW_DATA: encode({"inputs": images[:3]})}
    answer = site.handle(Instruction(0, "s1", InstructionKind.PREDICT, query))
    probs = decode(answer.payload[DataKind.OUTPUTS])["probs"]
    assert probs.shape == (3, 2) and np.allclose(probs.sum(axis=1), 1.0) and DataKind.RAW_DATA not in answer.payload


def test_evaluate_given_outputs_scores_them_against_the_sites_labels(site):
    targets = site.data.test.targets
    perfect = np.eye(2, dtype=np.float32)[targets]
    reply = site.handle(Instruction(0, "s1", InstructionKind.EVALUATE, {DataKind.OUTPUTS: encode({"probs": perfect})}))
    assert reply.metrics["accuracy"] == 1.0 and DataKind.METRICS in reply.payload


def test_scaffold_control_travels_back_as_a_delta(site, init):
    control = {n: np.zeros_like(a) for n, a in init.items() if n.endswith(("weight", "bias"))}
    reply = site.handle(_fit(init, **{DataKind.CONTROL: encode(control)}))
    delta = decode(reply.payload[DataKind.CONTROL])
    assert set(delta) == set(control) and all(np.isfinite(d).all() for d in delta.values())
    assert site.control is not None and any(np.abs(d).sum() > 0 for d in delta.values())
