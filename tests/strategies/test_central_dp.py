from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from fedrad.config import PrivacyConfig
from fedrad.strategies import FedAvg, FedAvgConfig, FedBN, FedOpt, FedOptConfig, FitResult, registry
from fedrad.strategies.base import GLOBAL, fold_all
from fedrad.strategies.central_dp import (
    calibrate,
    central_privacy_summary,
    epsilon_of,
    noise_std,
    refusal,
    server_noise_seed,
    wrap,
)

SITES = ["h1", "h2", "h3", "h4", "h5", "h6"]
DELTA = 1e-5


def _central(**changes) -> PrivacyConfig:
    return PrivacyConfig(**({"mode": "central", "noise_multiplier": 1.3, "max_grad_norm": 1.0} | changes))


def _unchanged(state, sites=SITES):
    """Every site replies with the model it was sent: every update is zero."""
    return [FitResult(s, {n: a.copy() for n, a in state.models[GLOBAL].items()}, 10) for s in sites]


def _std_matches(samples: np.ndarray, expected: float, z_score: float = 5.0) -> bool:
    """The empirical std is within `z_score` standard errors of `expected` (SE of a std: std / sqrt(2N))."""
    se = expected / math.sqrt(2 * samples.size)
    return bool(expected > 0 and abs(samples.std() - expected) < z_score * se and abs(samples.mean()) < 5 * expected
                / math.sqrt(samples.size))


def test_the_noise_on_the_mean_of_zero_updates_has_std_z_times_clip_norm_over_the_sites_asked():
    # Prepare: six hospitals, every update zero, 200,000 coordinates
    strategy = wrap(FedAvg(), _central(max_grad_norm=2.0), SITES, rounds=3, seed=4)
    state = strategy.initial_state({"w": np.zeros(200_000, np.float32)}, SITES)
    # Execute
    new = strategy.aggregate(0, state, _unchanged(state))
    # Assert: z S / n = 1.3 * 2 / 6
    noise = new.models[GLOBAL]["w"].astype(np.float64)
    assert noise_std(strategy, 0) == pytest.approx(1.3 * 2.0 / 6)
    assert _std_matches(noise, 1.3 * 2.0 / 6)


def test_the_std_check_rejects_no_noise_and_the_wrong_scale():
    rng = np.random.default_rng(0)
    right = 1.3 / 6
    assert _std_matches(rng.standard_normal(200_000) * right, right)
    assert not _std_matches(np.zeros(200_000), right)  # no noise
    assert not _std_matches(rng.standard_normal(200_000) * right * 1.02, right)  # 2% too much
    assert not _std_matches(rng.standard_normal(200_000) * 1.3 / math.sqrt(6), right)  # S / sqrt(n)
    assert not _std_matches(rng.standard_normal(200_000) * 1.3, right)  # not divided by n


def test_an_update_of_norm_100_is_clipped_to_max_grad_norm_and_a_small_one_is_kept():
    strategy = wrap(FedAvg(), _central(max_grad_norm=1.5), ["a"], rounds=2, seed=0)
    state = strategy.initial_state({"w": np.zeros(4), "b": np.zeros(2)}, ["a"])
    for norm, kept in ((100.0, 1.5), (0.5, 0.5)):
        # Prepare: an update of the given norm along one direction
        direction = np.array([1.0, 2.0, 2.0, 0.0, 4.0, 0.0]) / 5.0  # unit norm over both entries
        update = {"w": direction[:4] * norm, "b": direction[4:] * norm}
        fold = strategy.begin(0, state)
        # Execute
        fold.add(FitResult("a", update, 1000))
        new = fold.finish()
        # Assert: with the seeded noise taken away, the mean update is the clipped one (n = 1)
        std = noise_std(strategy, 0)
        clean = {n: new.models[GLOBAL][n] - strategy.noise(0, n, a.shape, std) for n, a in update.items()}
        assert math.sqrt(sum(np.sum(c**2) for c in clean.values())) == pytest.approx(kept)
        np.testing.assert_allclose(clean["w"] / kept, direction[:4], atol=1e-12)


def test_each_site_weighs_the_same_whatever_its_number_of_examples():
    strategy = wrap(FedAvg(), _central(), ["a", "b"], rounds=1, seed=0)
    state = strategy.initial_state({"w": np.zeros(1)}, ["a", "b"])
    results = [FitResult("a", {"w": np.array([0.2])}, 1), FitResult("b", {"w": np.array([0.6])}, 1000)]
    new = strategy.aggregate(0, state, results)
    noise = strategy.noise(0, "w", (1,), noise_std(strategy, 0))
    np.testing.assert_allclose(new.models[GLOBAL]["w"] - noise, [0.4])  # (0.2 + 0.6) / 2, not sample-weighted


def test_the_denominator_is_the_sites_asked_even_when_some_fail():
    strategy = wrap(FedAvg(), _central(), ["a", "b", "c", "d"], rounds=1, seed=0)
    state = strategy.initial_state({"w": np.zeros(1)}, ["a", "b", "c", "d"])
    new = strategy.aggregate(0, state, [FitResult("a", {"w": np.array([0.8])}, 5)])  # three sites failed
    noise = strategy.noise(0, "w", (1,), 1.3 / 4)
    np.testing.assert_allclose(new.models[GLOBAL]["w"] - noise, [0.2])
    nobody = strategy.aggregate(0, state, [])  # every site failed: still noised, not the model kept
    assert nobody is not state and nobody.models[GLOBAL]["w"][0] == pytest.approx(noise[0])


def test_the_reported_epsilon_is_dp_accountings_for_the_same_rounds_and_noise():
    strategy = wrap(FedAvg(), _central(noise_multiplier=1.1), SITES, rounds=12, seed=0)
    summary = central_privacy_summary(strategy, rounds_done=12)
    for done in (1, 5, 12):
        ledger = rdp.RdpAccountant()
        ledger.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.1), done))
        assert summary["epsilon_spent"][done - 1] == pytest.approx(ledger.get_epsilon(DELTA), rel=1e-12)
    sites = [site["epsilon_spent"] for site in summary["sites"].values()]
    assert summary["epsilon_final"] == summary["epsilon_spent"][-1] == max(sites) and summary["epsilon"] is None
    assert summary["noise_multiplier"] == 1.1 and summary["clip_norm"] == 1.0 and summary["delta"] == DELTA
    assert summary["epsilon_spent"] == sorted(summary["epsilon_spent"])  # spending only grows


def test_with_a_fraction_each_site_is_charged_for_the_rounds_it_is_asked():
    inner = FedAvg(FedAvgConfig(fraction=0.5, seed=3))
    strategy = wrap(inner, _central(), SITES, rounds=10, seed=0)
    counts = {s: sum(s in inner.sample(r, SITES) for r in range(10)) for s in SITES}
    sites = central_privacy_summary(strategy, rounds_done=10)["sites"]
    for site, k in counts.items():
        ledger = rdp.RdpAccountant()
        ledger.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.3), k))
        assert sites[site]["epsilon_spent"] == pytest.approx(ledger.get_epsilon(DELTA), rel=1e-12)
    assert len(set(counts.values())) > 1  # the check above saw sites asked a different number of times


@pytest.mark.parametrize("target", [1.0, 4.0, 8.0])
def test_the_calibrated_noise_spends_the_target_epsilon_within_the_librarys_tolerance(target):
    strategy = wrap(FedAvg(), PrivacyConfig(mode="central", epsilon=target), SITES, rounds=12, seed=0)
    z = strategy.noise_multiplier
    assert z == pytest.approx(calibrate(target, DELTA, 12))
    assert epsilon_of(z, 12, DELTA) <= target  # within the budget ...
    assert epsilon_of(z - 2e-6, 12, DELTA) > target  # ... and no more noise than the tolerance (1e-6) allows
    summary = central_privacy_summary(strategy, 12)
    assert summary["epsilon"] == target and summary["epsilon_final"] == pytest.approx(target, abs=1e-4)


def test_the_same_seed_and_round_give_the_same_noise_bit_for_bit_and_others_differ():
    def run(seed, round):
        strategy = wrap(FedAvg(), _central(), SITES, rounds=3, seed=seed)
        state = strategy.initial_state({"w": np.zeros(1000, np.float32), "v": np.ones(7)}, SITES)
        return strategy.aggregate(round, state, _unchanged(state)).models[GLOBAL]

    first, again = run(7, 1), run(7, 1)
    assert all(np.array_equal(first[n], again[n]) for n in first)  # a resumed round re-adds this noise
    assert not np.array_equal(first["w"], run(7, 2)["w"]) and not np.array_equal(first["w"], run(8, 1)["w"])


def test_the_fold_taking_owned_updates_one_at_a_time_equals_the_list_path():
    strategy = wrap(FedAvg(), _central(), SITES[:3], rounds=1, seed=2)
    state = strategy.initial_state({"w": np.zeros(5, np.float32)}, SITES[:3])
    rng = np.random.default_rng(0)
    results = [FitResult(s, {"w": rng.normal(size=5).astype(np.float32)}, 3) for s in SITES[:3]]
    listed = strategy.aggregate(0, state, results)
    fold = strategy.begin(0, state)
    for result in results:
        fold.add(FitResult(result.site_id, {"w": result.weights["w"].copy()}, 3), owned=True)
    assert np.array_equal(fold.finish().models[GLOBAL]["w"], listed.models[GLOBAL]["w"])


def test_integer_counters_stay_the_global_models_and_a_noisy_variance_is_never_negative():
    model = {"bn.running_mean": np.zeros(500, np.float32), "bn.running_var": np.full(500, 0.01, np.float32),
             "bn.num_batches_tracked": np.array(3, np.int64)}
    strategy = wrap(FedAvg(), _central(noise_multiplier=5.0), ["a"], rounds=1, seed=0)
    state = strategy.initial_state(model, ["a"])
    reply = {**model, "bn.num_batches_tracked": np.array(999, np.int64)}  # gives away its size: not used
    new = strategy.aggregate(0, state, [FitResult("a", reply, 10)]).models[GLOBAL]
    assert int(new["bn.num_batches_tracked"]) == 3 and new["bn.num_batches_tracked"].dtype == np.int64
    assert new["bn.running_var"].min() >= 0 and new["bn.running_var"].dtype == np.float32
    assert new["bn.running_mean"].std() > 1.0  # the statistics are noised like any update


def test_fedadam_steps_along_the_noisy_mean_and_keeps_its_moments():
    strategy = wrap(FedOpt(FedOptConfig(optimizer="adam", server_lr=0.1)), _central(), SITES, rounds=1, seed=0)
    state = strategy.initial_state({"w": np.zeros(3, np.float32)}, SITES)
    new = strategy.aggregate(0, state, _unchanged(state))
    assert set(new.extra) == {"m/w", "v/w"} and np.abs(new.models[GLOBAL]["w"]).max() <= 0.1 + 1e-6


def test_fedbn_keeps_the_initial_batchnorm_and_clips_only_what_sites_send():
    model = {"conv.weight": np.zeros(3, np.float32), "bn.running_mean": np.zeros(2, np.float32),
             "bn.weight": np.ones(2, np.float32)}
    strategy = wrap(FedBN(), _central(), ["a"], rounds=1, seed=0)
    state = strategy.initial_state(model, ["a"])
    new = strategy.aggregate(0, state, [FitResult("a", {"conv.weight": np.full(3, 0.1, np.float32)}, 5)])
    assert np.array_equal(new.models[GLOBAL]["bn.weight"], model["bn.weight"])
    assert not np.array_equal(new.models[GLOBAL]["conv.weight"], model["conv.weight"])


@pytest.mark.parametrize("name", ["cds", "local", "ensemble", "swt", "cwt", "scaffold", "swt-reversed"])
def test_strategies_that_do_not_average_are_refused_with_one_line_naming_them(name):
    spec = registry.get(name)
    strategy = spec.build(spec.section(), registry.BuildContext(seed=0))
    with pytest.raises(ValueError, match=f"privacy.mode central cannot wrap strategy '{name}'") as caught:
        wrap(strategy, _central(), SITES, rounds=2, seed=0)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedavgm", "fedadam", "fedbn"])
def test_every_averaging_strategy_is_wrapped(name):
    assert refusal(name) is None


def test_a_round_past_the_planned_ones_is_refused():
    strategy = wrap(FedAvg(), _central(), SITES, rounds=2, seed=0)
    state = strategy.initial_state({"w": np.zeros(1)}, SITES)
    assert len(strategy.configure(1, state, SITES)) == 6
    with pytest.raises(ValueError, match="past the 2 rounds"):
        strategy.configure(2, state, SITES)


def test_an_update_with_other_names_than_the_model_is_a_fold_error():
    strategy = wrap(FedAvg(), _central(), ["a"], rounds=1, seed=0)
    state = strategy.initial_state({"w": np.zeros(1)}, ["a"])
    with pytest.raises(ValueError, match="site a: update names differ"):
        fold_all(strategy.begin(0, state), [FitResult("a", {"x": np.zeros(1)}, 1)])


def test_the_servers_noise_seed_is_made_once_and_read_back(tmp_path):
    seed = server_noise_seed(tmp_path / "server")
    assert seed == server_noise_seed(tmp_path / "server") and 0 <= seed < 2**63
    assert (tmp_path / "server" / "dp_noise_seed").stat().st_mode & 0o077 == 0
