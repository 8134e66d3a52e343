from __future__ import annotations

import numpy as np
import pytest

from fedrad.codec import decode, encode
from fedrad.run.simulate import build_sites, build_task, initial_weights
from fedrad.site.handler import MissingState, Site, SiteError
from fedrad.site.state import SiteStateFile
from fedrad.strategies.fedbn import shared_part
from fedrad.types import DataKind, FailureKind, FitConfig, Instruction, InstructionKind, failure_kind


@pytest.fixture
def site(tiny_config):
    data = build_sites(tiny_config)[0]
    return Site(data, build_task(tiny_config, [data]))


@pytest.fixture
def init(tiny_config, site):
    return initial_weights(site.task, tiny_config.seed)


def _fit(weights, round=0, keep_local=frozenset(), **payload):
    return Instruction(round, "s1", InstructionKind.FIT, {DataKind.WEIGHTS: encode(weights), **payload},
                       fit=FitConfig(epochs=1, batch_size=8), keep_local=keep_local)  # fmt: skip


def test_a_site_uses_its_own_values_for_what_it_keeps_and_returns_only_the_rest(site, init):
    keep = frozenset(init) - frozenset(shared_part(init))  # BatchNorm
    site.handle(_fit(init, keep_local=keep))
    local_bn = {n: a.copy() for n, a in site.local.items() if n in keep}
    reply = site.handle(_fit(init, round=1, keep_local=keep))  # the initial BatchNorm again: not used
    assert set(decode(reply.payload[DataKind.WEIGHTS])) == set(shared_part(init))  # BatchNorm never leaves
    assert any(not np.array_equal(site.local[n], local_bn[n]) for n in local_bn if "running" in n)  # BN kept training
    assert not any(np.array_equal(site.local[n], init[n]) for n in keep if "running_mean" in n)


def test_a_site_without_state_starts_from_the_sent_values_of_what_it_keeps(site, init):
    keep = frozenset(init) - frozenset(shared_part(init))
    twin = Site(site.data, site.task)
    site.handle(_fit(init, keep_local=keep))
    twin.handle(_fit(init))  # the same start, nothing kept: the same training
    for name in init:
        np.testing.assert_array_equal(site.local[name], twin.local[name], err_msg=name)


def test_partial_weights_before_any_fit_are_refused(site, init):
    with pytest.raises(SiteError, match="missing"):
        site.handle(_fit(shared_part(init)))


def test_an_empty_model_to_a_site_without_state_is_a_refusal_of_missing_state(site, init):
    with pytest.raises(MissingState, match="state") as raised:
        site.handle(_fit({}, keep_local=frozenset(init)))
    assert failure_kind(raised.value) == FailureKind.REFUSED  # the transport's reply says so
    site.handle(_fit(init, keep_local=frozenset(init)))  # sent the start again, it trains
    reply = site.handle(_fit({}, round=1, keep_local=frozenset(init)))  # and then continues its own member
    assert reply.ok and decode(reply.payload[DataKind.WEIGHTS]) == {}


def test_a_repeated_round_gives_the_same_reply_bit_for_bit(site, init):
    control = {n: np.zeros_like(a) for n, a in init.items() if n.endswith(("weight", "bias"))}
    first = site.handle(_fit(init, **{DataKind.CONTROL: encode(control)}))
    again = site.handle(_fit(init, **{DataKind.CONTROL: encode(control)}))  # its reply was lost: asked again
    assert again.payload == first.payload and site.state.before.round == -1  # c_i did not move twice


def test_a_site_restarted_from_its_state_file_continues_its_model_and_control(site, init, tmp_path):
    path = tmp_path / ".fedrad-state" / "s1.safetensors"
    first = Site(site.data, site.task, "", SiteStateFile(path, "", "s1"))
    control = {n: np.zeros_like(a) for n, a in init.items() if n.endswith(("weight", "bias"))}
    first.handle(_fit(init, **{DataKind.CONTROL: encode(control)}))
    restarted = Site(site.data, site.task, "", SiteStateFile(path, "", "s1"))
    assert restarted.state.last.round == 0
    for name in init:
        np.testing.assert_array_equal(restarted.local[name], first.local[name], err_msg=name)
    for name in control:
        np.testing.assert_array_equal(restarted.control[name], first.control[name], err_msg=name)
    assert not all(np.array_equal(first.control[n], control[n]) for n in control)  # c_i moved: a real check


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
