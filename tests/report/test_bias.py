from __future__ import annotations

import pytest

from fedrad.report.bias import add_bias, cross_site_matrix, recency_bias, spread, worst_site_gain

M = "balanced_accuracy"
SITES = {"a": {M: 0.9}, "b": {M: 0.6}, "c": {M: 0.75}}


def test_spread_by_hand():
    out = spread(SITES, M)
    assert out["min"] == 0.6 and out["max"] == 0.9 and out["mean"] == pytest.approx(0.75)
    assert out["std"] == pytest.approx((0.045 / 3) ** 0.5)  # deviations 0.15, -0.15, 0


def test_worst_site_gain_is_over_that_sites_local_model():
    out = worst_site_gain(SITES, {"a": {M: 0.8}, "b": {M: 0.5}}, M)
    assert out["site"] == "b" and out["gain"] == pytest.approx(0.1)


def test_recency_is_last_minus_first_visited():
    out = recency_bias(SITES, ["b", "c", "a"], M)
    assert out == {"first": "b", "last": "a", "bias": pytest.approx(0.3)}


def test_add_bias_adds_the_reversed_runs_forward_pair_and_the_cross_site_matrix():
    summaries = [
        {"method": "swt", "sites": SITES, "order": ["b", "c", "a"]},
        {"method": "swt-reversed", "sites": {"a": {M: 0.5}, "b": {M: 0.9}, "c": {M: 0.7}}, "order": ["a", "c", "b"]},
        {"method": "local", "sites": SITES, "cross_site": {"a": {"sites": {"a": {M: 0.9}, "b": {M: 0.5}}}}},
    ]
    out = add_bias(summaries, M)
    assert out[0]["bias"]["recency"]["bias"] == pytest.approx(0.3)
    assert out[1]["bias"]["recency"]["bias"] == pytest.approx(0.4)  # b (last) - a (first)
    assert out[1]["bias"]["recency_on_forward_pair"]["bias"] == pytest.approx(-0.4)  # a - b: the sign flips
    assert out[2]["bias"]["cross_site"] == {"a": {"a": 0.9, "b": 0.5}} == cross_site_matrix(summaries[2], M)
    assert "bias" not in summaries[0]  # pure
