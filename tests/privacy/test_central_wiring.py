"""Central DP through the simulator: the job's `privacy: {mode: central}` wraps the strategy, the server's
relative norm bound steps aside for the wrapper's clipping, and summary.json reports the epsilon spent."""

from __future__ import annotations

import pytest

from fedrad.config import JobConfig
from fedrad.run.federation import FederationError
from fedrad.run.simulate import MethodRun, build_sites, update_validator
from fedrad.strategies import central_dp
from tests.tiny import tiny_job


def _config(**privacy) -> JobConfig:
    return JobConfig.model_validate(tiny_job(privacy={"mode": "central", "max_grad_norm": 0.5, **privacy}))


def test_a_central_dp_job_reports_the_federations_epsilon_per_round(tmp_path):
    config = _config(noise_multiplier=2.0)
    summary = MethodRun(config, "fedavg", tmp_path, build_sites(config)).run()
    block = summary["privacy"]
    assert block["mode"] == "central" and block["noise_multiplier"] == 2.0 and block["clip_norm"] == 0.5
    expected = [central_dp.epsilon_of(2.0, r + 1, config.privacy.delta) for r in range(config.train.rounds)]
    assert block["epsilon_spent"] == pytest.approx(expected)  # every site asked every round (fraction 1)
    assert set(block["sites"]) == {"s1", "s2", "s3"}
    assert summary["pooled"]  # the noisy model was still evaluated


def test_central_dp_turns_the_relative_norm_bound_off_and_local_keeps_it():
    assert update_validator(_config(epsilon=4.0)).norm_multiplier is None
    local = JobConfig.model_validate(tiny_job(privacy={"mode": "local", "epsilon": 4.0}))
    assert update_validator(local).norm_multiplier == local.validation.norm_multiplier is not None


def test_a_strategy_central_dp_cannot_wrap_is_refused_in_one_line(tmp_path):
    config = _config(epsilon=4.0)
    with pytest.raises(FederationError, match="strategy 'cwt' cannot run with privacy mode 'central'"):
        MethodRun(config, "cwt", tmp_path, build_sites(config)).run()
