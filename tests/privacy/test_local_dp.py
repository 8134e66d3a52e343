"""Local DP-SGD at each site: the accountant's epsilon, the budget, the site state and the model conversion.

Real parts only: Opacus trains, its accountants count, real Sites answer a real Orchestrator (the
simulator). Fixed noise keeps most tests fast; one test calibrates, at a sample rate where
Opacus' search takes a moment.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from torch import nn

from fedrad.codec import decode, encode
from fedrad.config import ConfigError, JobConfig, load_config
from fedrad.privacy.local import BudgetExceeded, LocalPrivacy, epsilon_of, sample_rate, steps_per_epoch
from fedrad.privacy.summary import privacy_summary
from fedrad.run.simulate import MethodRun, build_sites, build_task, initial_weights
from fedrad.server.ledger import Ledger, Transfer
from fedrad.site.handler import Site
from fedrad.site.state import SiteStateError, SiteStateFile
from fedrad.types import DataKind, FailureKind, Instruction, InstructionKind
from tests.tiny import tiny_job

NOISE = 1.1


def _config(**privacy) -> JobConfig:
    return JobConfig.model_validate(tiny_job(privacy={"mode": "local", **privacy}, train={"rounds": 3}))


def _instruction(config: JobConfig, weights, round: int = 0, site: str = "s1") -> Instruction:
    return Instruction(round, site, InstructionKind.FIT, {DataKind.WEIGHTS: encode(weights)},
                       fit=config.train.fit(), job_hash=config.job_hash(), seed=100 + round)  # fmt: skip


def _site(config: JobConfig, state_file: SiteStateFile | None = None, index: int = 0) -> Site:
    data = build_sites(config)[index]
    return Site(data, build_task(config, [data]), config.job_hash(), state_file)


def test_the_epsilon_a_site_reports_is_opacus_rdp_accountants_for_its_rate_noise_and_steps():
    config = _config(noise_multiplier=NOISE)
    site = _site(config)
    init = initial_weights(site.task, config.seed)
    replies = [site.handle(_instruction(config, init, round)) for round in range(2)]

    n, batch = len(site.data.train), config.train.batch_size
    accountant = RDPAccountant()  # independently: Opacus' accountant, fed the job's numbers
    accountant.history = [(NOISE, 1 / math.ceil(n / batch), 2 * config.train.local_epochs * math.ceil(n / batch))]
    assert replies[1].metrics["epsilon_spent"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)
    accountant.history = [(NOISE, 1 / math.ceil(n / batch), math.ceil(n / batch))]
    assert replies[0].metrics["epsilon_spent"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)
    assert replies[1].metrics["epsilon_round"] == pytest.approx(
        replies[1].metrics["epsilon_spent"] - replies[0].metrics["epsilon_spent"])
    assert site.epsilon_spent == replies[1].metrics["epsilon_spent"]


def test_the_calibrated_noise_makes_the_whole_planned_job_fit_the_budget():
    privacy = LocalPrivacy(epsilon=4.0, delta=1e-5, rounds=3, epochs=2, batch_size=32)
    noise = privacy.noise_for(400)
    accountant = RDPAccountant()
    accountant.history = [(noise, sample_rate(400, 32), 3 * 2 * steps_per_epoch(400, 32))]
    assert 4.0 - 0.02 < accountant.get_epsilon(1e-5) <= 4.0  # Opacus' search stops within its tolerance
    assert sample_rate(400, 32) == 1 / 13 and steps_per_epoch(400, 32) == 13


def test_one_instruction_gives_one_reply_bit_for_bit_and_a_repeated_round_spends_once():
    config = _config(noise_multiplier=NOISE)
    first, second = _site(config), _site(config)
    init = initial_weights(first.task, config.seed)
    a, b = first.handle(_instruction(config, init)), second.handle(_instruction(config, init))
    assert a.payload[DataKind.WEIGHTS] == b.payload[DataKind.WEIGHTS] and a.metrics == b.metrics
    again = first.handle(_instruction(config, init))  # its reply was lost: the same round once more
    assert again.payload[DataKind.WEIGHTS] == a.payload[DataKind.WEIGHTS]
    assert again.metrics["epsilon_spent"] == a.metrics["epsilon_spent"] == first.epsilon_spent


def test_a_site_declines_the_round_that_would_pass_its_budget_with_kind_budget():
    probe = _site(_config(noise_multiplier=NOISE))
    init = initial_weights(probe.task, 3)
    one_round = probe.handle(_instruction(_config(noise_multiplier=NOISE), init)).metrics["epsilon_spent"]
    config = _config(noise_multiplier=NOISE, epsilon=one_round * 1.2)  # the noise fixed, a budget of one round
    site = _site(config)
    site.handle(_instruction(config, init, 0))
    with pytest.raises(BudgetExceeded) as refused:
        site.handle(_instruction(config, init, 1))
    assert refused.value.kind == FailureKind.BUDGET and "site s1: round 1 declined" in str(refused.value)
    assert site.epsilon_spent == pytest.approx(one_round)  # the declined round spent nothing


def _spent(n: int, batch: int, rounds: int) -> float:
    return epsilon_of([(NOISE, sample_rate(n, batch), rounds * steps_per_epoch(n, batch))], 1e-5)


def test_in_a_simulation_the_site_out_of_budget_stops_and_the_others_finish_the_rounds(tmp_path):
    # Fixed noise: the smallest hospital (s3) samples each example most often, so it spends fastest.
    probe = _config(noise_multiplier=NOISE)
    n = {d.site_id: len(d.train) for d in build_sites(probe)}
    batch = probe.train.batch_size
    budget = max(_spent(n["s1"], batch, 3), _spent(n["s2"], batch, 3), _spent(n["s3"], batch, 1)) * 1.001
    assert budget < _spent(n["s3"], batch, 3)  # s3 cannot run all three rounds, s1 and s2 can
    config = _config(noise_multiplier=NOISE, epsilon=budget)
    records = []

    summary = MethodRun(config, "fedavg", tmp_path, build_sites(config), on_round=records.append).run()

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(set(line["train"]) >= {"s1", "s2"} for line in lines)  # the rounds went on
    stopped = [f for line in lines for f in line["failures"] if f["site_id"] == "s3"]
    assert stopped and all(f["kind"] == "budget" for f in stopped)
    assert "s3" in lines[0]["train"] and summary["status"] == "degraded"
    block = privacy_summary(config, records)
    assert summary["privacy"] == json.loads(json.dumps(block))  # summary.json carries the same block
    assert block["mode"] == "local" and block["epsilon"] == budget
    assert block["sites"]["s3"]["stopped"] and not block["sites"]["s1"]["stopped"]
    assert block["sites"]["s3"]["epsilon_spent"] <= budget and block["sites"]["s1"]["epsilon_spent"] <= budget
    assert block["sites"]["s1"]["epsilon_spent"] == lines[-1]["train"]["s1"]["epsilon_spent"]
    assert block["model"] == {"BatchNorm2d": "GroupNorm", "replaced": 2}  # the run records the conversion


def test_the_model_is_converted_alike_at_the_server_and_every_site():
    config = _config(noise_multiplier=NOISE)
    server_task = build_task(config)  # the deployed server: no data
    site = _site(config)
    modules = list(site.model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in modules) and any(isinstance(m, nn.GroupNorm) for m in modules)
    assert initial_weights(server_task, 0).keys() == initial_weights(site.task, 0).keys()
    plain = JobConfig.model_validate(tiny_job())
    assert any(isinstance(m, nn.BatchNorm2d) for m in build_task(plain).build_model().modules())


@pytest.mark.parametrize("strategy", ["fedbn", "ensemble", "cwt"])
def test_a_strategy_local_dp_cannot_run_is_refused_with_one_line_naming_it(strategy, tmp_path):
    path = tmp_path / "job.yaml"
    job = tiny_job(privacy={"mode": "local", "epsilon": 8}, strategy={"name": strategy})
    path.write_text(json.dumps(job))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value) and f"strategy '{strategy}' cannot run with privacy mode 'local'" in str(
        error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedavgm", "fedadam", "scaffold"])
def test_the_averaging_strategies_train_privately(strategy, tmp_path):
    config = JobConfig.model_validate(tiny_job(privacy={"mode": "local", "noise_multiplier": NOISE},
                                               strategy={"name": strategy}, train={"rounds": 1}))  # fmt: skip
    MethodRun(config, strategy, tmp_path, build_sites(config)).run()
    (line,) = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert not line["failures"] and all(m["epsilon_spent"] > 0 for m in line["train"].values())


def test_the_spent_budget_is_in_the_state_file_and_a_restarted_site_continues_from_it(tmp_path):
    config = _config(noise_multiplier=NOISE)
    state_file = SiteStateFile(tmp_path / "s1.safetensors", config.job_hash(), "s1")
    site = _site(config, state_file)
    init = initial_weights(site.task, config.seed)
    site.handle(_instruction(config, init, 0))
    spent = site.epsilon_spent

    restarted = _site(config, SiteStateFile(tmp_path / "s1.safetensors", config.job_hash(), "s1"))
    assert restarted.epsilon_spent == spent and restarted.state.last.privacy_history == site.state.last.privacy_history
    reply = restarted.handle(_instruction(config, init, 1))
    assert reply.metrics["epsilon_spent"] > spent and reply.metrics["epsilon_round"] == pytest.approx(
        reply.metrics["epsilon_spent"] - spent)


def test_a_version_1_state_file_is_refused_by_a_site_with_local_dp_and_read_by_one_without(tmp_path):
    for config, name in [(JobConfig.model_validate(tiny_job()), "plain"), (_config(noise_multiplier=NOISE), "dp")]:
        path = tmp_path / f"{name}.safetensors"
        site = _site(config, SiteStateFile(path, config.job_hash(), "s1"))
        site.handle(_instruction(config, initial_weights(site.task, 0)))
        _rewrite_as_version_1(path)  # as the fedrad before privacy accounting wrote it
    plain = JobConfig.model_validate(tiny_job())
    assert _site(plain, SiteStateFile(tmp_path / "plain.safetensors", plain.job_hash(), "s1")).state.last.round == 0
    private = _config(noise_multiplier=NOISE)
    with pytest.raises(SiteStateError) as error:
        _site(private, SiteStateFile(tmp_path / "dp.safetensors", private.job_hash(), "s1"))
    assert str(tmp_path / "dp.safetensors") in str(error.value) and "state version 1" in str(error.value)


def _rewrite_as_version_1(path) -> None:
    from safetensors.numpy import load, save

    blob = path.read_bytes()
    size = int.from_bytes(blob[:8], "little")
    meta = json.loads(json.loads(blob[8 : 8 + size])["__metadata__"]["fedrad"])
    meta = {k: v for k, v in meta.items() if k not in ("privacy", "before_privacy")} | {"version": 1}
    path.write_bytes(save(load(blob), metadata={"fedrad": json.dumps(meta)}))


def test_the_ledger_books_each_release_in_its_privacy_column_and_restores_old_rows():
    ledger = Ledger()
    ledger.record_message(0, "train", "s1", "sent", {DataKind.WEIGHTS: 100}, epsilon=0.5)
    ledger.record_message(1, "train", "s1", "sent", {DataKind.CONTROL: 10, DataKind.WEIGHTS: 100}, epsilon=0.25)
    ledger.record_message(1, "train", "s1", "received", {DataKind.WEIGHTS: 100})
    assert ledger.epsilon_by_site() == {"s1": 0.75}
    assert [r["epsilon"] for r in ledger.rows()] == [0.5, None, 0.25, None]
    old = {k: v for k, v in ledger.rows()[0].items() if k != "epsilon"}  # a checkpoint of before the column
    assert Transfer(**{**old, "kind": DataKind(old["kind"])}).epsilon is None
    assert decode(encode({"x": np.zeros(1, np.float32)}))  # the codec is untouched by privacy
