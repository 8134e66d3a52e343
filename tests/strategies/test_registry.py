from __future__ import annotations

from typing import Literal

import pytest

from fedrad.cli.run import _with_companions
from fedrad.config import ConfigError, JobConfig, for_strategy, load_config
from fedrad.run.simulate import build_context, build_strategy
from fedrad.strategies import FedAvg, registry
from fedrad.strategies.base import Strategy
from fedrad.strategies.registry import StrategySection, StrategySpec, UnknownStrategyError
from fedrad.types import DataKind

SITES = ["s1", "s2", "s3"]


def test_an_unknown_name_lists_every_registered_one():
    with pytest.raises(UnknownStrategyError) as error:
        registry.get("fedmagic")
    message = str(error.value)
    assert "'fedmagic'" in message and all(name in message for name in registry.names())


def test_an_unknown_strategy_name_in_a_job_yaml_is_one_line_listing_the_registered_names(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("strategy:\n  name: fedmagic\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "key 'strategy.name'" in message and "registered: cds, cwt" in message and "\n" not in message


def test_every_strategy_of_the_review_is_registered_once():
    assert set(registry.names()) == {"fedavg", "fedprox", "fedbn", "fedavgm", "fedadam", "scaffold", "swt",
                                     "swt-reversed", "cwt", "ensemble", "cds", "local"}  # fmt: skip
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(registry.get("fedprox"))


@pytest.mark.parametrize("name", registry.names())
def test_every_registered_name_validates_and_builds_what_its_spec_declares(tiny_config, name):
    spec = registry.get(name)
    config = JobConfig.model_validate(tiny_config.model_dump() | {"strategy": {"name": name}})
    strategy = build_strategy(config)

    assert isinstance(config.strategy, spec.section) and isinstance(strategy, Strategy)
    assert strategy.name == name and strategy.simulation_only == spec.simulation_only
    rounds = config.train.rounds
    assert strategy.num_rounds(rounds, SITES) == spec.rounds(rounds, len(SITES), config.strategy)
    assert all(isinstance(kind, DataKind) for kind in spec.exchanges)
    assert all(registry.get(companion) for companion in spec.companions)


def test_a_key_of_another_strategy_is_an_unknown_key(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("strategy:\n  name: fedavg\n  prox_mu: 0.1\n")
    with pytest.raises(ConfigError, match=r"key 'strategy.prox_mu': unknown key$"):
        load_config(path)


def test_a_job_without_a_strategy_name_is_fedavg_with_its_keys():
    config = JobConfig.model_validate({"strategy": {"fraction": 0.5}})
    assert config.strategy.model_dump() == {"name": "fedavg", "fraction": 0.5, "min_sites": 1}


def test_the_job_hash_covers_only_the_chosen_strategys_settings():
    fedavg = JobConfig()
    for patience in (3, 7):  # SWT's setting: not part of a FedAvg job, whatever it was in the job compared
        swt = JobConfig.model_validate({"strategy": {"name": "swt", "patience": patience}})
        assert for_strategy(swt, "fedavg").job_hash() == fedavg.job_hash()
    first, second = (JobConfig.model_validate({"strategy": {"name": "swt", "patience": p}}) for p in (3, 7))
    assert first.job_hash() != second.job_hash()  # the chosen strategy's own settings are hashed


def test_a_method_compared_on_a_job_keeps_the_settings_the_two_share():
    job = JobConfig.model_validate({"strategy": {"name": "swt", "order": ["s2", "s1", "s3"], "patience": 5}})
    assert for_strategy(job, "cwt").strategy.model_dump() == {"name": "cwt", "order": ["s2", "s1", "s3"],
                                                              "reshuffle": False}  # fmt: skip
    assert for_strategy(job, "swt-reversed").strategy.patience == 5
    sampled = JobConfig.model_validate({"strategy": {"fraction": 0.5, "min_sites": 2}})
    assert for_strategy(sampled, "fedprox").strategy.model_dump() == {
        "name": "fedprox", "fraction": 0.5, "min_sites": 2, "prox_mu": 0.01}  # fmt: skip


def test_the_server_quorum_defaults_to_min_sites_and_to_one_without_sampling():
    assert JobConfig.model_validate({"strategy": {"name": "fedprox", "min_sites": 3}}).strategy.default_quorum() == 3
    assert JobConfig.model_validate({"strategy": {"name": "cwt"}}).strategy.default_quorum() == 1


def test_compare_runs_swt_reversed_right_after_swt_once():
    assert registry.get("swt").companions == ("swt-reversed",) and registry.companion_of("swt-reversed") == "swt"
    assert _with_companions(["fedavg", "swt", "cds"]) == ["fedavg", "swt", "swt-reversed", "cds"]
    assert _with_companions(["swt-reversed", "swt", "swt"]) == ["swt-reversed", "swt"]


def test_a_new_strategy_is_one_section_one_class_and_one_registration(tiny_config):
    class HalfSection(StrategySection):
        name: Literal["half-fedavg"] = "half-fedavg"

    class HalfFedAvg(FedAvg):
        name = "half-fedavg"

    spec = StrategySpec("half-fedavg", HalfSection, lambda s, ctx: HalfFedAvg(), exchanges=(DataKind.WEIGHTS,))
    registry.register(spec)
    try:
        config = JobConfig.model_validate({"strategy": {"name": "half-fedavg"}})
        assert build_strategy(config).name == "half-fedavg" and "half-fedavg" in registry.names()
        assert spec.build(config.strategy, build_context(config)).simulation_only is False
    finally:
        registry._SPECS.pop("half-fedavg")
