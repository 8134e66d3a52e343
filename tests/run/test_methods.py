from __future__ import annotations

import pytest

from fedrad.config import METHODS, JobConfig
from fedrad.run.methods import FEDERATED, build_federated, planned_rounds
from fedrad.run.simulate import MethodRun, build_sites


@pytest.mark.parametrize("method", FEDERATED)
def test_every_method_is_built_with_the_shared_budget(tiny_config, method):
    strategy = build_federated(tiny_config, method)
    train = tiny_config.train
    if method.startswith("swt"):
        assert strategy.config.fit.epochs == train.rounds * train.local_epochs
        assert strategy.config.fit.patience == tiny_config.strategy.patience
        assert planned_rounds(tiny_config, method, 3) == 3
    elif method == "cwt":
        assert strategy.config.cycles == train.rounds and planned_rounds(tiny_config, method, 3) == 3 * train.rounds
    assert method in METHODS or method == "swt-reversed"


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
