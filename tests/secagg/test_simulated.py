"""Secure aggregation through the unchanged orchestrator and the simulator's real sites (training included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedrad.config import JobConfig
from fedrad.run.federation import FederationError
from fedrad.run.simulate import MethodRun, build_sites, build_strategy, build_task, initial_weights, wrapped
from fedrad.server.ledger import Ledger
from fedrad.server.orchestrator import Orchestrator, RunContext
from fedrad.site.handler import Site
from fedrad.strategies.base import GLOBAL
from fedrad.transport import InProcessTransport
from fedrad.types import FailureKind, InstructionKind, Reply
from tests.tiny import tiny_job

SECURE = {"secure_aggregation": {"enabled": True}}


def run(tmp_path: Path, name: str, **changes) -> tuple[dict, dict]:
    job = JobConfig.model_validate(tiny_job(**changes))
    summary = MethodRun(job, job.strategy.name, tmp_path / name, build_sites(job)).run()
    return summary, load_file(tmp_path / name / "model.safetensors")


def assert_same_floats(a: dict, b: dict, atol: float) -> None:
    assert set(a) == set(b)
    for name in a:
        if a[name].dtype.kind == "f":
            assert np.max(np.abs(a[name].astype(np.float64) - b[name])) <= atol, name


def test_a_secure_fedavg_run_gives_plain_fedavgs_model_and_books_the_protocols_bytes(tmp_path: Path):
    plain, plain_model = run(tmp_path, "plain")
    secure, secure_model = run(tmp_path, "secure", **SECURE)
    # 2 rounds, each within 3 * 2^-24 * N / W of the plain mean (W = N: nobody dropped), plus float32 rounding
    assert_same_floats(secure_model, plain_model, atol=2e-6)
    assert secure["failures"] == 0 and secure["pooled"] == plain["pooled"]
    kinds = secure["ledger"]["by_kind"]
    assert kinds["secagg"] > 0 and plain["ledger"]["by_kind"]["secagg"] == 0
    lines = [json.loads(line) for line in (tmp_path / "secure" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["secagg_clipped"] == 0.0 for line in lines for m in line["train"].values())


def test_secure_aggregation_composes_with_local_dp(tmp_path: Path):
    privacy = {"privacy": {"mode": "local", "noise_multiplier": 1.0, "max_grad_norm": 1.0}}
    summary, model = run(tmp_path, "dp", **SECURE, **privacy)
    assert summary["failures"] == 0 and all(np.isfinite(a).all() for a in model.values())
    assert all(site["epsilon_spent"] > 0 for site in summary["privacy"]["sites"].values())


class Dropping:
    """The simulator's transport, with `site`'s fit lost after the key exchange (its client died)."""

    def __init__(self, inner: InProcessTransport, site: str):
        self.inner, self.site = inner, site

    def dispatch(self, instructions):
        return [reply for _, reply in self.stream(instructions)]

    def stream(self, instructions):
        for number, reply in self.inner.stream(instructions):
            instruction = instructions[number]
            if instruction.site_id == self.site and instruction.kind == InstructionKind.FIT:
                reply = Reply(instruction.round, self.site, instruction.kind, error=f"site {self.site} hung up",
                              error_kind=FailureKind.DROPPED)  # fmt: skip
            yield number, reply


def orchestrate(config: JobConfig, drop: str) -> tuple[dict, list]:
    sites = build_sites(config)
    task, job_hash = build_task(config, sites), config.job_hash()
    settings = config.secure_aggregation.settings()
    transport = Dropping(InProcessTransport({d.site_id: Site(d, task, job_hash, None, settings) for d in sites}), drop)
    names = [d.site_id for d in sites]
    strategy = wrapped(config, build_strategy(config), names, config.seed)
    records = []
    ctx = RunContext(transport, Ledger(), task, job_hash, config.seed, declared=transport.inner.declared_examples)
    orchestrator = Orchestrator(strategy, ctx, names, names, config.train.rounds, 1, lambda r, s: records.append(r))
    state = orchestrator.run(strategy.initial_state(initial_weights(task, config.seed), names))
    return state.models[GLOBAL], records


def test_a_site_lost_after_the_key_exchange_is_recovered_and_the_mean_is_the_others(tmp_path: Path):
    plain_model, _ = orchestrate(JobConfig.model_validate(tiny_job()), drop="s3")
    secure_model, records = orchestrate(JobConfig.model_validate(tiny_job(**SECURE)), drop="s3")
    assert_same_floats(secure_model, plain_model, atol=4e-6)  # N / W = 90 / 70 enlarges the rounding
    for record in records:
        assert not record.notes and set(record.train_metrics) == {"s1", "s2"}
        assert [(f.site_id, f.kind) for f in record.failures] == [("s3", FailureKind.DROPPED)]


def test_below_the_threshold_the_round_keeps_the_model_and_says_why(tmp_path: Path):
    config = JobConfig.model_validate(tiny_job(secure_aggregation={"enabled": True, "threshold": 3}))
    model, records = orchestrate(config, drop="s3")
    task = build_task(config, build_sites(config))
    start = initial_weights(task, config.seed)
    assert all(np.array_equal(model[n], start[n]) for n in start)
    assert records[0].notes == ["round 0: secure aggregation: 2 of 3 sites delivered an accepted masked update, "
                                "below the threshold 3; the round kept the previous model"]


@pytest.mark.parametrize(("changes", "message"), [
    ({"privacy": {"mode": "central", "epsilon": 8}}, "cannot run with privacy.mode central"),
    ({"strategy": {"name": "scaffold"}}, "cannot wrap strategy 'scaffold'"),
    ({"secure_aggregation": {"enabled": True, "threshold": 4}}, "threshold 4 must be a majority of the 3 sites"),
    ({"data": {"num_sites": 4}, "secure_aggregation": {"enabled": True, "threshold": 2}},
     "threshold 2 must be a majority of the 4 sites"),
])  # fmt: skip
def test_what_secure_aggregation_cannot_compose_with_is_refused_in_one_line(changes, message):
    job = tiny_job(**({"secure_aggregation": {"enabled": True}} | changes))
    if "num_sites" in job["data"]:
        job["data"].pop("hospitals")
        job["data"]["num_sites"] = 4
    config = JobConfig.model_validate(job)
    with pytest.raises(FederationError, match=message):
        wrapped(config, build_strategy(config), [f"s{i}" for i in range(len(build_sites(config)))], 0)


def test_a_site_whose_trained_model_is_not_finite_sends_no_masked_upload():
    from fedrad.site.training import SiteError

    config = JobConfig.model_validate(tiny_job(**SECURE))
    data = build_sites(config)[0]
    site = Site(data, build_task(config, [data]), config.job_hash(), None, config.secure_aggregation.settings())
    sent = initial_weights(site.task, 0)
    diverged = {n: (np.full_like(a, np.nan) if a.dtype.kind == "f" else a) for n, a in sent.items()}
    with pytest.raises(SiteError, match="its trained model is not finite") as raised:
        site._masked(None, b"", sent, diverged)
    assert raised.value.kind == FailureKind.ERROR
