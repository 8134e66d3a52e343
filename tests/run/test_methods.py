from __future__ import annotations

import pytest

from fedrad.config import JobConfig, for_strategy
from fedrad.run.simulate import MethodRun, build_sites, build_strategy
from fedrad.strategies import registry


@pytest.mark.parametrize("method", ["swt", "swt-reversed", "cwt"])
def test_sequential_methods_are_built_with_the_shared_budget(tiny_config, method):
    strategy = build_strategy(tiny_config, method)
    train, spec = tiny_config.train, registry.get(method)
    section = for_strategy(tiny_config, method).strategy
    if method.startswith("swt"):
        assert strategy.config.fit.epochs == train.rounds * train.local_epochs
        assert strategy.config.fit.patience == section.patience
        assert spec.rounds(train.rounds, 3, section) == 3
    else:
        assert strategy.config.cycles == train.rounds and spec.rounds(train.rounds, 3, section) == 3 * train.rounds
    assert strategy.name == method and strategy.config.reverse == (method == "swt-reversed")


def test_swt_records_its_order_and_the_reversed_run_visits_it_backwards(tiny_config, tmp_path):
    sites = build_sites(tiny_config)
    forward = MethodRun(tiny_config, "swt", tmp_path / "f", sites).run()
    backward = MethodRun(tiny_config, "swt-reversed", tmp_path / "b", sites).run()
    assert sorted(forward["order"]) == ["s1", "s2", "s3"] and backward["order"] == forward["order"][::-1]
    assert forward["rounds"] == 3 and set(forward["local_epochs"]) == {"s1", "s2", "s3"}
    assert forward["ledger"]["by_kind"]["raw_data"] == 0


def test_a_configured_order_is_followed(tiny_config, tmp_path):
    config = JobConfig.model_validate(
        tiny_config.model_dump() | {"strategy": {"name": "cwt", "order": ["s2", "s3", "s1"]}}
    )
    summary = MethodRun(config, "cwt", tmp_path, build_sites(config)).run()
    assert summary["order"] == ["s2", "s3", "s1"] * config.train.rounds


def test_scaffold_books_its_control_variates(tiny_config, tmp_path):
    summary = MethodRun(tiny_config, "scaffold", tmp_path, build_sites(tiny_config)).run()
    assert summary["ledger"]["by_kind"]["control_variates"] > 0 and summary["failures"] == 0


def test_a_partitioned_federation_comes_from_the_config(tiny_config):
    config = JobConfig.model_validate(
        tiny_config.model_dump(exclude={"data"})
        | {"data": {"image_size": 16, "partition": {"kind": "dirichlet", "num_sites": 4, "num_patients": 80}}}
    )
    sites = build_sites(config)
    assert [s.site_id for s in sites] == ["site-0", "site-1", "site-2", "site-3"]
    assert sum(len(s.train) + len(s.val) + len(s.test) for s in sites) == 80


@pytest.mark.parametrize("method", registry.names())
def test_every_strategy_moves_what_its_registration_declares(tiny_config, tmp_path, method):
    spec = registry.get(method)
    summary = MethodRun(tiny_config, method, tmp_path, build_sites(tiny_config)).run()
    moved = {kind for kind, nbytes in summary["ledger"]["by_kind"].items() if nbytes > 0}
    declared = {kind.value for kind in spec.exchanges}
    evaluation = set() if spec.simulation_only else {"weights", "metrics"}  # models out, statistics back
    assert declared <= moved <= declared | evaluation
    assert summary["method"] == method and summary["simulation_only"] == spec.simulation_only
