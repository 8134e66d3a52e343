from __future__ import annotations

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
