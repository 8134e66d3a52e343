"""The simulator with per-site state: sites that have none yet are sent what they need to start."""

from __future__ import annotations

import json
from pathlib import Path

from fedrad.codec import encode
from fedrad.config import JobConfig
from fedrad.run.simulate import MethodRun, build_sites, build_strategy, build_task, initial_weights
from fedrad.server.ledger import Ledger
from fedrad.server.orchestrator import Orchestrator, RoundRecord, RunContext
from fedrad.site.handler import Site
from fedrad.site.state import SiteState
from fedrad.strategies.base import GLOBAL, ServerState
from fedrad.strategies.fedbn import shared_part
from fedrad.transport import InProcessTransport
from fedrad.types import FailureKind
from tests.tiny import tiny_job

SITES = {"s1", "s2", "s3"}


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_fedbn_with_a_fraction_trains_every_sampled_site_and_evaluates_every_site(tmp_path: Path) -> None:
    job = tiny_job(strategy={"name": "fedbn", "fraction": 0.34}, train={"rounds": 4})
    config = JobConfig.model_validate(job)
    summary = MethodRun(config, "fedbn", tmp_path, build_sites(config)).run()

    lines = _lines(tmp_path)
    first_asked = {site: min(line["round"] for line in lines if site in line["asked"]) for site in SITES}
    assert max(first_asked.values()) > 0, first_asked  # the case at hand: a site not sampled in round 0
    assert summary["failures"] == 0
    for line in lines:
        assert line["failures"] == [] and set(line["train"]) == set(line["asked"]), line  # every sampled site trains
        assert set(line["sites"]) == SITES, line  # and every site is evaluated, with or without a fit of its own
    assert set(summary["sites"]) == SITES and summary["pooled"]["num_test"] > 0


def test_fedbn_books_the_initial_batchnorm_it_sends_as_weights(tmp_path: Path) -> None:
    job = tiny_job(strategy={"name": "fedbn"}, train={"rounds": 2})
    config = JobConfig.model_validate(job)
    sites = build_sites(config)
    summary = MethodRun(config, "fedbn", tmp_path, sites).run()
    model = initial_weights(build_task(config, sites), config.seed)
    # Per site and round: the whole model (BatchNorm included) to fit and to evaluate, the shared part back.
    whole, shared = len(encode(model)), len(encode(shared_part(model)))
    for site, booked in summary["ledger"]["by_site"].items():
        assert booked["by_kind"]["weights"] == 2 * (2 * whole + shared), site


def test_simulated_sites_can_keep_their_state_in_files_as_deployed_ones_do(tmp_path: Path) -> None:
    job = tiny_job(strategy={"name": "ensemble"}, train={"rounds": 2})
    config = JobConfig.model_validate(job)
    in_memory = MethodRun(config, "ensemble", tmp_path / "memory", build_sites(config)).run()
    on_disk = MethodRun(config, "ensemble", tmp_path / "disk", build_sites(config), state_dir=tmp_path / "state").run()
    assert on_disk["pooled"] == in_memory["pooled"] and on_disk["ledger"] == in_memory["ledger"]
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [f"{s}.safetensors" for s in sorted(SITES)]


def test_an_ensemble_site_that_lost_its_state_refuses_once_then_starts_over_from_the_initialisation() -> None:
    config = JobConfig.model_validate(tiny_job(strategy={"name": "ensemble"}, train={"rounds": 3}))
    data, job_hash = build_sites(config), config.job_hash()
    task, strategy = build_task(config, data), build_strategy(config, "ensemble")
    sites = {d.site_id: Site(d, task, job_hash) for d in data}
    records: list[RoundRecord] = []

    def on_round(record: RoundRecord, state: ServerState) -> None:
        records.append(record)
        if record.round == 0:
            sites["s3"].state = SiteState()  # its client restarted without the state file

    ctx = RunContext(InProcessTransport(sites), Ledger(), task, job_hash, config.seed)
    orchestrator = Orchestrator(strategy, ctx, list(sites), list(sites), 3, 1, on_round)
    orchestrator.run(strategy.initial_state(initial_weights(task, config.seed), list(sites)))

    failures = [(f.phase, f.site_id, f.kind) for f in records[1].failures]
    assert ("train", "s3", FailureKind.REFUSED) in failures, records[1].failures  # no member: a typed refusal
    assert {site for _, site, _ in failures} == {"s3"} and all("state" in f.reason for f in records[1].failures)
    assert records[2].failures == [] and set(records[2].train_metrics) == SITES  # sent the init again: it trains
    assert set(records[2].evaluations[GLOBAL].sites) == SITES
