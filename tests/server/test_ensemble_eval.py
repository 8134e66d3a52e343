from __future__ import annotations

from tests.tiny import TABULAR, tabular_sites

from fedrad.config import JobConfig
from fedrad.run.simulate import MethodRun, build_sites


def test_ensemble_evaluation_moves_the_query_images_and_outputs(tiny_config, tmp_path):
    sites = build_sites(tiny_config)
    summary = MethodRun(tiny_config, "ensemble", tmp_path, sites).run()
    ledger, rounds = summary["ledger"], tiny_config.train.rounds
    # each round, each site's test images leave it (sent) and reach the two other sites (received)
    for s in sites:
        by_site = ledger["by_site"][s.site_id]["by_kind"]
        test_bytes = s.test.inputs.nbytes
        others = sum(o.test.inputs.nbytes for o in sites if o is not s)
        assert by_site["raw_data"] >= rounds * (test_bytes + others)
    assert ledger["by_kind"]["outputs"] > 0
    assert ledger["by_phase"]["evaluate"] > 0 and set(summary["sites"]) == {"s1", "s2", "s3"}
    # training shares nothing but the initialisation (round 0) and empty models afterwards
    assert ledger["by_kind"]["weights"] < 2 * 3 * 10_000 + rounds * 3 * 200


def test_an_ensemble_on_a_tabular_job_reports_a_pooled_metric(tmp_path):
    config = JobConfig.model_validate(TABULAR | {"strategy": {"name": "ensemble"}})
    summary = MethodRun(config, "ensemble", tmp_path, tabular_sites()).run()
    assert summary["metric"] == "balanced_accuracy" and 0.0 <= summary["pooled"]["balanced_accuracy"] <= 1.0
    assert summary["pooled"]["num_test"] == 3 * 10 and set(summary["sites"]) == {"t1", "t2", "t3"}
    assert summary["ledger"]["by_kind"]["outputs"] > 0  # the members' probabilities on the query features
