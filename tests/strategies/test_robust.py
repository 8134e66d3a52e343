"""Robust aggregation: the pure functions on hand-worked numbers, then the wrapper around the averaging strategies."""

from __future__ import annotations

import numpy as np
import pytest

from fedrad.codec import decode, encode
from fedrad.config import ConfigError, JobConfig, load_config
from fedrad.server.ledger import Ledger
from fedrad.server.orchestrator import Orchestrator, RunContext
from fedrad.strategies import FedAvg, FedBN, FedOpt, FedOptConfig, Scaffold
from fedrad.strategies.aggregate import (
    krum,
    krum_scores,
    median,
    multi_krum,
    norm_bounded_mean,
    pairwise_sq_distances,
    trimmed_mean,
)
from fedrad.strategies.base import GLOBAL, FitResult, ServerState
from fedrad.strategies.fedavg import FedAvgSection
from fedrad.strategies.robust import RobustAggregation, wrap
from fedrad.transport.inprocess import InProcessTransport
from fedrad.types import DataKind, Reply


def _ups(values, counts=None, name="w"):
    """One update per value list, {name: float32 array}, with its example count (default 1 each)."""
    counts = counts or [1] * len(values)
    return [({name: np.array(v, np.float32)}, n) for v, n in zip(values, counts, strict=True)]


# --- median -------------------------------------------------------------------------------------------------


def test_median_of_three_is_the_middle_value_at_each_coordinate_whatever_the_example_counts():
    # coordinate 0: 1, 2, 9 -> 2; coordinate 1: 10, -4, 0 -> 0. The 1000 examples buy no vote.
    out = median(_ups([[1, 10], [2, -4], [9, 0]], counts=[1, 1, 1000]))
    np.testing.assert_array_equal(out["w"], [2.0, 0.0])
    assert out["w"].dtype == np.float32


def test_median_of_four_averages_the_two_middle_values_and_integers_take_the_lower_median():
    # coordinate 0 sorted: 1, 2, 4, 9 -> (2 + 4) / 2 = 3; coordinate 1: -4, 0, 5, 10 -> 2.5
    # counters 2, 5, 7, 100: the lower median is the 2nd smallest, 5 (an actual site's count)
    updates = [({"w": np.array([1.0, 10.0], np.float32), "n": np.array(2, np.int64)}, 1),
               ({"w": np.array([2.0, -4.0], np.float32), "n": np.array(100, np.int64)}, 1),
               ({"w": np.array([9.0, 0.0], np.float32), "n": np.array(7, np.int64)}, 1),
               ({"w": np.array([4.0, 5.0], np.float32), "n": np.array(5, np.int64)}, 1)]  # fmt: skip
    out = median(updates)
    np.testing.assert_array_equal(out["w"], [3.0, 2.5])
    assert out["n"] == 5 and out["n"].dtype == np.int64


# --- trimmed mean -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("beta", "expected"), [
    (0.0, 22.0),  # k = 0: (1 + 2 + 3 + 4 + 100) / 5
    (0.1, 22.0),  # k = floor(0.5) = 0: nothing trimmed
    (0.2, 3.0),  # k = 1: drop 1 and 100, (2 + 3 + 4) / 3
    (0.4, 3.0),  # k = 2: only the middle value, 3
])  # fmt: skip
def test_trimmed_mean_drops_floor_beta_n_values_at_each_end(beta, expected):
    out = trimmed_mean(_ups([[4], [100], [1], [3], [2]]), beta)
    np.testing.assert_allclose(out["w"], [expected])


def test_trimmed_mean_trims_each_coordinate_on_its_own():
    # coordinate 0: 0, 1, 2, -50 -> k = 1 drops -50 and 2: (0 + 1) / 2 = 0.5
    # coordinate 1: 7, 8, 9, 50 -> drops 7 and 50: (8 + 9) / 2 = 8.5
    out = trimmed_mean(_ups([[0, 7], [1, 50], [2, 8], [-50, 9]]), 0.25)
    np.testing.assert_allclose(out["w"], [0.5, 8.5])


def test_trimmed_mean_refuses_a_beta_that_would_leave_nothing():
    with pytest.raises(ValueError, match=r"beta must be in \[0, 0.5\)"):
        trimmed_mean(_ups([[1], [2]]), 0.5)


# --- Krum and Multi-Krum ------------------------------------------------------------------------------------


def test_distances_are_over_every_float_entry_flattened():
    # (0, 0 | 0) to (1, 2 | 2): 1 + 4 + 4 = 9; the integer counter does not count
    a = {"w": np.array([0.0, 0.0], np.float32), "b": np.array([0.0]), "n": np.array(1)}
    b = {"w": np.array([1.0, 2.0], np.float32), "b": np.array([2.0]), "n": np.array(900)}
    np.testing.assert_allclose(pairwise_sq_distances([(a, 1), (b, 1)]), [[0, 9], [9, 0]])


# Five sites at 0, 1, 2, 3 and 100, f = 1: each update's n - f - 2 = 2 nearest others.
#   0: to 1 and 2 -> 1 + 4 = 5;      1: to 0 and 2 -> 1 + 1 = 2;      2: to 1 and 3 -> 1 + 1 = 2
#   3: to 2 and 1 -> 1 + 4 = 5;      100: to 3 and 2 -> 97^2 + 98^2 = 9409 + 9604 = 19013
FIVE = [[0.0], [1.0], [2.0], [3.0], [100.0]]


def test_krum_scores_are_the_sums_of_squared_distances_to_the_n_minus_f_minus_2_nearest():
    np.testing.assert_allclose(krum_scores(_ups(FIVE), f=1), [5, 2, 2, 5, 19013])


def test_krum_picks_the_lowest_score_the_lower_index_on_a_tie():
    np.testing.assert_array_equal(krum(_ups(FIVE), f=1)["w"], [1.0])  # 1 and 2 tie at 2: site 1


def test_multi_krum_averages_the_m_best_by_their_example_counts():
    # m = 3: scores 2 (1.0), 2 (2.0), then 5 (0.0, the lower index of the two 5s); counts 3, 1, 4
    # (0 * 3 + 1 * 1 + 2 * 4) / 8 = 9 / 8
    out = multi_krum(_ups(FIVE, counts=[3, 1, 4, 1, 1]), f=1, m=3)
    np.testing.assert_allclose(out["w"], [9 / 8])
    # m = None: n - f = 4, leaving out 100: (0 * 3 + 1 + 2 * 4 + 3) / 9 = 12 / 9
    np.testing.assert_allclose(multi_krum(_ups(FIVE, counts=[3, 1, 4, 1, 1]), f=1)["w"], [12 / 9], rtol=1e-6)


def test_krum_with_too_few_updates_is_one_line():
    with pytest.raises(ValueError, match=r"^krum with f=1 needs more than 2f\+2 = 4 updates, got 4$"):
        krum(_ups(FIVE[:4]), f=1)


# --- norm bounding ------------------------------------------------------------------------------------------


def test_norm_bounding_clips_to_the_median_norm_then_averages():
    # from 0: (3, 4) has norm 5, (0, 1) norm 1, (0, -2) norm 2 -> median 2: (3, 4) becomes (1.2, 1.6)
    # mean of (1.2, 1.6), (0, 1), (0, -2) = (0.4, 0.2)
    start = {"w": np.zeros(2, np.float32)}
    out, bound = norm_bounded_mean(_ups([[3, 4], [0, 1], [0, -2]]), start)
    assert bound == 2.0
    np.testing.assert_allclose(out["w"], [0.4, 0.2], rtol=1e-6)
    # bound 1: (0.6, 0.8), (0, 1), (0, -1) -> (0.2, 0.8 / 3)
    out, _ = norm_bounded_mean(_ups([[3, 4], [0, 1], [0, -2]]), start, bound=1.0)
    np.testing.assert_allclose(out["w"], [0.2, 0.8 / 3], rtol=1e-6)


# --- the wrapper, through the unchanged orchestrator ---------------------------------------------------------


class _FixedSite:
    """Replies to a fit with `value` in every float entry (integers: the value, rounded), from `n` examples."""

    def __init__(self, site_id: str, value: float, n: int = 4):
        self.site_id, self.value, self.n = site_id, value, n

    def handle(self, instruction):
        sent = decode(instruction.payload[DataKind.WEIGHTS])
        weights = {k: np.full_like(a, self.value) for k, a in sent.items() if k not in instruction.keep_local}
        return Reply(instruction.round, self.site_id, instruction.kind, {DataKind.WEIGHTS: encode(weights)}, self.n)


def _round(strategy, values, init=None):
    sites = {f"s{k}": _FixedSite(f"s{k}", v) for k, v in enumerate(values)}
    orchestrator = Orchestrator(strategy, RunContext(InProcessTransport(sites), Ledger(), None, validator=None),
                                list(sites), [], rounds=2, eval_every=100)  # fmt: skip
    notes = []
    orchestrator.on_round = lambda record, state: notes.extend(record.notes)
    init = init or {"w": np.zeros(3, np.float32)}
    return orchestrator.round(0, strategy.initial_state(init, list(sites))).models[GLOBAL], notes


# Five sites at 1, 2, 3, 4 and 90 in every coordinate (squared distances 3x the 1-D ones, the same order).
# Krum, f = 1, the 2 nearest: 1 -> 1 + 4 = 5, 2 -> 1 + 1 = 2, 3 -> 1 + 1 = 2, 4 -> 1 + 4 = 5, 90 -> large;
# 2 and 3 tie: the lower index, 2. Multi-Krum with m = 2: the mean of 2 and 3.
@pytest.mark.parametrize(("section", "expected"), [
    (FedAvgSection(aggregator="median"), 3.0),  # 1, 2, 3, 4, 90 -> 3
    (FedAvgSection(aggregator="trimmed_mean", trimmed_beta=0.2), 3.0),  # drop 1 and 90: (2 + 3 + 4) / 3
    (FedAvgSection(aggregator="krum", krum_f=1), 2.0),
    (FedAvgSection(aggregator="multi_krum", krum_f=1, multikrum_m=2), 2.5),
])  # fmt: skip
def test_each_aggregator_replaces_fedavgs_mean_through_the_unchanged_orchestrator(section, expected):
    model, notes = _round(wrap(FedAvg(), section), [1.0, 2.0, 3.0, 4.0, 90.0])
    np.testing.assert_allclose(model["w"], [expected] * 3)
    assert notes == []


def test_fedavgm_steps_along_the_robust_aggregate():
    # server_lr 1, momentum 0: FedAvgM's step x - (x - agg) lands on the aggregate, here the median 2
    inner = FedOpt(FedOptConfig(optimizer="momentum", server_lr=1.0, beta1=0.0))
    model, _ = _round(RobustAggregation(inner, "median"), [1.0, 2.0, 90.0])
    np.testing.assert_allclose(model["w"], [2.0] * 3)
    # server_lr 0.5: half way from 0 to the median
    inner = FedOpt(FedOptConfig(optimizer="momentum", server_lr=0.5, beta1=0.0))
    model, _ = _round(RobustAggregation(inner, "median"), [1.0, 2.0, 90.0])
    np.testing.assert_allclose(model["w"], [1.0] * 3)


def test_fedbn_keeps_its_initial_batchnorm_under_a_robust_aggregator():
    init = {"w": np.zeros(2, np.float32), "bn.weight": np.ones(2, np.float32), "bn.running_mean": np.zeros(2),
            "bn.running_var": np.ones(2), "bn.num_batches_tracked": np.array(0)}  # fmt: skip
    model, _ = _round(RobustAggregation(FedBN(), "median"), [1.0, 5.0, 90.0], init=init)
    np.testing.assert_allclose(model["w"], [5.0, 5.0])
    np.testing.assert_array_equal(model["bn.weight"], [1.0, 1.0])
    np.testing.assert_array_equal(model["bn.running_var"], [1.0, 1.0])


def test_a_round_krum_cannot_serve_keeps_the_model_with_a_one_line_note():
    model, notes = _round(wrap(FedAvg(), FedAvgSection(aggregator="krum", krum_f=1)), [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(model["w"], [0.0] * 3)
    assert notes == ["round 0: aggregation failed (ValueError: krum with f=1 needs more than 2f+2 = 4 updates, "
                     "got 4); the round kept the previous model"]  # fmt: skip


def test_norm_bounding_to_a_fixed_bound_streams_and_agrees_with_the_list_path():
    strategy = wrap(FedAvg(), FedAvgSection(aggregator="norm_bound", norm_bound=1.0))
    state = strategy.initial_state({"w": np.zeros(2, np.float32)}, ["a", "b"])
    assert strategy.begin(0, state) is not None  # a Fold: one update at a time
    results = [FitResult("a", {"w": np.array([3.0, 4.0], np.float32)}, 1),
               FitResult("b", {"w": np.array([0.0, 0.5], np.float32)}, 3)]  # fmt: skip
    streamed = strategy.aggregate(0, state, results).models[GLOBAL]["w"]
    # (0.6, 0.8) x 1 + (0, 0.5) x 3, over 4 examples: (0.15, 0.575)
    np.testing.assert_allclose(streamed, [0.15, 0.575], rtol=1e-6)
    listed, _ = norm_bounded_mean([(r.weights, r.num_examples) for r in results], state.models[GLOBAL], 1.0)
    np.testing.assert_allclose(streamed, listed["w"], rtol=1e-6)
    assert strategy.rounds[-1]["clipped"] == ["a"]


def test_the_median_norm_bound_is_a_list_aggregation_that_records_its_bound():
    strategy = wrap(FedAvg(), FedAvgSection(aggregator="norm_bound"))
    model, _ = _round(strategy, [0.0, 1.0, 2.0])  # norms 0, sqrt(3), 2 sqrt(3): bound sqrt(3), mean (0 + 1 + 1) / 3
    assert strategy.begin(0, ServerState({GLOBAL: {}})) is None
    np.testing.assert_allclose(model["w"], [2 / 3] * 3, rtol=1e-6)
    assert strategy.rounds[0]["bound"] == pytest.approx(np.sqrt(3)) and strategy.rounds[0]["clipped"] == ["s2"]


def test_more_updates_per_round_than_the_memory_bound_is_refused_in_one_line():
    strategy = wrap(FedAvg(), FedAvgSection(aggregator="median", robust_max_mb=1))
    weights = {"w": np.zeros(2**17, np.float32)}  # 0.5 MB a site
    strategy.initial_state(weights, ["a", "b"])  # 1 MB: at the bound
    with pytest.raises(ValueError, match=r"^strategy.aggregator median holds every update of a round: 3 sites x "
                                         r"0.5 MB = 2 MB exceeds strategy.robust_max_mb 1 "):  # fmt: skip
        strategy.initial_state(weights, ["a", "b", "c"])


def test_mean_is_no_wrapper_and_strategies_without_a_mean_of_updates_are_refused():
    fedavg = FedAvg()
    assert wrap(fedavg, FedAvgSection()) is fedavg
    with pytest.raises(ValueError, match=r"^strategy.aggregator median cannot wrap strategy 'scaffold': it also"):
        RobustAggregation(Scaffold(), "median")


def test_a_scaffold_job_with_a_robust_aggregator_is_one_line_naming_the_key(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("strategy: {name: scaffold, aggregator: median}\n")
    with pytest.raises(ConfigError, match=r"key 'strategy': Value error, aggregator 'median' cannot wrap scaffold"):
        load_config(path)
    assert JobConfig.model_validate({"strategy": {"name": "scaffold"}}).strategy.aggregator == "mean"


def test_a_job_without_robust_aggregation_dumps_no_robust_keys_and_every_set_one_is_hashed():
    plain = JobConfig()
    assert JobConfig.model_validate({"strategy": {"aggregator": "mean", "krum_f": 1}}).job_hash() == plain.job_hash()
    assert "aggregator" not in plain.to_yaml() and "krum_f" not in plain.to_yaml()
    kept = JobConfig.model_validate({"strategy": {"krum_f": 3}})  # set, though mean does not read it: kept
    assert kept.model_dump()["strategy"] == {"name": "fedavg", "fraction": 1.0, "min_sites": 1, "krum_f": 3}
    krum1, krum2 = (JobConfig.model_validate({"strategy": {"aggregator": "krum", "krum_f": f}}) for f in (1, 2))
    assert len({plain.job_hash(), kept.job_hash(), krum1.job_hash(), krum2.job_hash()}) == 4
    assert "robust_max_mb: 4096.0" in krum1.to_yaml()  # every key, defaults included, once it acts
