"""Simulated attacks (`attack:`): each does what it says, is recorded, and stays in the simulator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fedrad.cli import app
from fedrad.codec import decode, encode, views
from fedrad.config import ConfigError, JobConfig, load_config
from fedrad.pki.provision import ProjectSpec, ServerSpec, provision
from fedrad.run.attack import AttackTransport, attackers, little_is_enough_z, poisoned
from fedrad.run.federation import FederationError
from fedrad.run.simulate import MethodRun, build_sites, build_task, initial_weights
from fedrad.site.handler import Site
from fedrad.transport.inprocess import InProcessTransport
from fedrad.types import DataKind, Instruction, InstructionKind, Reply
from tests.tiny import tiny_job

SENT = {"conv.weight": np.ones(4, np.float32), "bn.running_mean": np.zeros(2, np.float32),
        "bn.running_var": np.ones(2, np.float32), "bn.num_batches_tracked": np.array(0)}  # fmt: skip


class _Trained:
    """A site whose training adds `step` to every float entry of what it was sent (counters: + 1)."""

    def __init__(self, site_id: str, step: float):
        self.site_id, self.step = site_id, step

    def handle(self, instruction):
        sent = decode(instruction.payload[DataKind.WEIGHTS])
        out = {n: a + (self.step if a.dtype.kind == "f" else 1) for n, a in sent.items()}
        return Reply(instruction.round, self.site_id, instruction.kind, {DataKind.WEIGHTS: encode(out)}, 10)


def _fit(site: str, weights=SENT, round: int = 0) -> Instruction:
    return Instruction(round, site, InstructionKind.FIT, {DataKind.WEIGHTS: encode(weights)})


def _attacked(kind: str, scale: float | None, steps=(1.0, 3.0, 2.0)) -> dict[str, dict[str, np.ndarray]]:
    """The replies of sites a, b (honest) and c (the attacker) after the attack, by site."""
    sites = {name: _Trained(name, step) for name, step in zip("abc", steps, strict=True)}
    attack = JobConfig.model_validate(tiny_job(attack={"kind": kind, "sites": 1, "scale": scale})).attack
    transport = AttackTransport(InProcessTransport(sites), attack, ["c"], seed=5)
    return {r.site_id: decode(r.payload[DataKind.WEIGHTS]) for _, r in transport.stream([_fit(s) for s in "abc"])}


def test_sign_flip_sends_minus_scale_times_the_update_and_leaves_batchnorm_statistics_as_trained():
    replies = _attacked("sign_flip", 5.0)  # c trained +2 from 1: sends 1 - 5 * 2 = -9
    np.testing.assert_array_equal(replies["c"]["conv.weight"], [-9.0] * 4)
    np.testing.assert_array_equal(replies["c"]["bn.running_var"], [3.0, 3.0])  # 1 + 2: as trained
    assert replies["c"]["bn.num_batches_tracked"] == 1
    np.testing.assert_array_equal(replies["a"]["conv.weight"], [2.0] * 4)  # the honest pass as they are


def test_boost_sends_scale_times_the_update_and_defaults_to_the_number_of_sites_asked():
    np.testing.assert_array_equal(_attacked("boost", 4.0)["c"]["conv.weight"], [9.0] * 4)  # 1 + 4 * 2
    np.testing.assert_array_equal(_attacked("boost", None)["c"]["conv.weight"], [7.0] * 4)  # 1 + 3 * 2


def test_noise_replaces_the_update_by_seeded_gaussian_noise_of_std_scale():
    big = {"conv.weight": np.zeros(20000, np.float32)}
    sites = {"a": _Trained("a", 1.0), "c": _Trained("c", 1.0)}
    attack = JobConfig.model_validate(tiny_job(attack={"kind": "noise", "sites": 1, "scale": 0.5})).attack

    def once():
        transport = AttackTransport(InProcessTransport(sites), attack, ["c"], seed=5)
        return decode(transport.dispatch([_fit("a", big), _fit("c", big)])[1].payload[DataKind.WEIGHTS])["conv.weight"]

    noise = once()
    assert abs(noise.mean()) < 0.02 and noise.std() == pytest.approx(0.5, rel=0.03)
    np.testing.assert_array_equal(noise, once())  # seeded by (seed, round, site)


def test_little_is_enough_sends_the_honest_mean_minus_z_honest_stds():
    # honest a, b send 2 and 4: mean 3, std 1; z = 1.5 -> 1.5 everywhere the attacker trains
    replies = _attacked("little_is_enough", 1.5)
    np.testing.assert_allclose(replies["c"]["conv.weight"], [1.5] * 4)
    np.testing.assert_array_equal(replies["b"]["conv.weight"], [4.0] * 4)


def test_little_is_enough_z_is_baruch_et_als_z_max():
    # n = 8, m = 2: s = floor(8 / 2 + 1) - 2 = 3, z = Phi^-1(5 / 8) = 0.3186; m = 1: Phi^-1(4 / 8) = 0
    assert little_is_enough_z(8, 2) == pytest.approx(0.318639, abs=1e-6)
    assert little_is_enough_z(8, 1) == pytest.approx(0.0, abs=1e-12)


def test_on_a_real_site_the_sign_flipped_update_is_minus_scale_times_its_honest_update(tiny_config):
    config = JobConfig.model_validate(tiny_job(attack={"kind": "sign_flip", "sites": 1, "scale": 3.0}))
    sites = build_sites(config)
    task = build_task(config, sites)
    start = initial_weights(task, config.seed)
    instruction = Instruction(0, "s3", InstructionKind.FIT, {DataKind.WEIGHTS: encode(start)},
                              fit=config.train.fit(), job_hash="h", seed=7)  # fmt: skip
    honest_site = Site(sites[2], task, "h")
    honest = views(honest_site.handle(instruction).payload[DataKind.WEIGHTS])
    attacked_site = {"s3": Site(sites[2], task, "h")}
    chosen = attackers(config.attack, ["s1", "s2", "s3"])
    transport = AttackTransport(InProcessTransport(attacked_site), config.attack, chosen)
    sent = views(transport.dispatch([instruction])[0].payload[DataKind.WEIGHTS])
    name = "features.0.weight" if "features.0.weight" in start else next(n for n in start if n.endswith("weight"))
    np.testing.assert_allclose(sent[name] - start[name], -3.0 * (honest[name] - start[name]), rtol=1e-5, atol=1e-7)
    assert not np.allclose(honest[name], start[name])  # it did train


def test_the_attackers_are_the_last_sites_and_one_must_stay_honest():
    attack = JobConfig.model_validate(tiny_job(attack={"kind": "boost", "sites": 2})).attack
    assert attackers(attack, ["s1", "s2", "s3"]) == ["s2", "s3"]
    assert attackers(None, ["s1"]) == [] and attackers(attack.model_copy(update={"sites": 0}), ["s1"]) == []
    with pytest.raises(FederationError, match=r"^attack.sites 3: the job has 3 training site\(s\); at least one"):
        attackers(attack.model_copy(update={"sites": 3}), ["s1", "s2", "s3"])


def test_label_flipping_flips_the_attackers_training_and_validation_labels_only():
    config = JobConfig.model_validate(tiny_job(attack={"kind": "label_flip", "sites": 1}))
    sites = build_sites(config)
    flipped = poisoned(config.attack, sites, ["s3"], num_classes=2)
    np.testing.assert_array_equal(flipped[2].train.targets, 1 - sites[2].train.targets)
    np.testing.assert_array_equal(flipped[2].val.targets, 1 - sites[2].val.targets)
    np.testing.assert_array_equal(flipped[2].test.targets, sites[2].test.targets)  # scored on the truth
    assert flipped[:2] == sites[:2]


def test_a_run_under_attack_records_the_attack_and_the_aggregator(tmp_path):
    config = JobConfig.model_validate(tiny_job(attack={"kind": "sign_flip", "sites": 1, "scale": 2.0},
                                               strategy={"aggregator": "krum", "krum_f": 0}))  # fmt: skip
    summary = MethodRun(config, "fedavg", tmp_path / "run", build_sites(config)).run()
    assert summary["attack"] == {"kind": "sign_flip", "scale": 2.0, "sites": ["s3"], "scale_used": [2.0]}
    assert summary["robust"]["aggregator"] == "krum" and summary["robust"]["krum_f"] == 0
    assert [len(r["chosen"]) for r in summary["robust"]["rounds"]] == [1, 1]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["attack"]["sites"] == ["s3"]


def test_label_flip_takes_no_scale(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_job(attack={"kind": "label_flip", "scale": 2.0})))
    with pytest.raises(ConfigError, match=r"key 'attack': Value error, attack.scale does not apply to label_flip"):
        load_config(path)


def test_central_dp_with_a_robust_aggregator_is_refused_in_one_line(tmp_path):
    job = tiny_job(privacy={"mode": "central", "epsilon": 8.0}, strategy={"aggregator": "median"})
    config = JobConfig.model_validate(job)
    with pytest.raises(FederationError, match=r"^strategy.aggregator median cannot run with privacy mode 'central'"):
        MethodRun(config, "fedavg", tmp_path / "run", build_sites(config)).run()
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "strategy.aggregator median cannot run with privacy mode 'central'" in result.stderr


def test_compare_refuses_scaffold_when_the_job_sets_a_robust_aggregator(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_job(strategy={"aggregator": "median"})))
    args = ["compare", str(path), "--methods", "fedavg,scaffold", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and not (tmp_path / "o").exists() and "Traceback" not in result.output
    assert result.stderr.startswith("error: strategy 'scaffold': aggregator 'median' cannot wrap scaffold")


def test_the_server_refuses_a_job_with_an_attack_in_one_line(tmp_path):
    kits = provision(ProjectSpec(name="attack", server=ServerSpec(hosts=("127.0.0.1",), port=1),
                                 sites=("s1", "s2", "s3")), tmp_path / "kits")  # fmt: skip
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_job(attack={"kind": "sign_flip", "sites": 1})))
    result = CliRunner().invoke(app, ["server", "--job", str(job), "--kit", str(kits.server), "--out",
                                      str(tmp_path / "run"), "--bind", "127.0.0.1:0"])  # fmt: skip
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "job key 'attack' simulates hostile sites: simulation only" in result.stderr


def test_two_sweeps_run_every_combination_and_the_report_plots_the_metric_against_the_attackers(tmp_path):
    path, out = tmp_path / "job.yaml", tmp_path / "cmp"
    path.write_text(yaml.safe_dump(tiny_job(attack={"kind": "sign_flip", "sites": 1, "scale": 3.0},
                                            train={"rounds": 1})))  # fmt: skip
    result = CliRunner().invoke(app, ["compare", str(path), "--methods", "fedavg", "--sweep", "attack.sites=0,1",
                                      "--sweep", "strategy.aggregator=mean,median", "--out", str(out)])  # fmt: skip
    assert result.exit_code in (0, 3), result.output
    summaries = json.loads((out / "comparison.json").read_text())
    names = [f"fedavg@sites={n}@aggregator={a}" for n in (0, 1) for a in ("mean", "median")]
    assert [s["sweep"]["label"] for s in summaries] == [f"sites={n},aggregator={a}" for n in (0, 1)
                                                        for a in ("mean", "median")]  # fmt: skip
    for s, name in zip(summaries, names, strict=True):
        assert json.loads((out / name / "summary.json").read_text()) == s
        assert s["sweep"]["key"] == "attack.sites,strategy.aggregator"
        assert [r["key"] for r in s["sweep"]["keys"]] == ["attack.sites", "strategy.aggregator"]
        sites, aggregator = s["sweep"]["value"]
        assert s["attack"]["sites"] == (["s3"] if sites else []) and s["robust"]["aggregator"] == aggregator
    report = (out / "report.md").read_text()
    assert "## Attacks: pooled balanced_accuracy against the number of attackers" in report
    assert "| fedavg median |" in report and (out / "attacks.png").stat().st_size > 0
    assert "![Pooled metric against the number of attackers](attacks.png)" in report


@pytest.mark.parametrize(("sweeps", "message"), [
    (["attack.sites=0,1", "attack.sites=2"], "error: --sweep attack.sites, attack.sites: a key is swept twice"),
    (["attack.sites=0,1", "strategy.aggregator=mean,mode"],
     "error: --sweep attack.sites=0 strategy.aggregator=mode: key 'strategy.aggregator': Input should be"),
    (["attack.sites=0", "strategy.aggregator=krum,krum"],
     "error: --sweep strategy.aggregator=krum,krum: a value is given twice (krum, krum)"),
])  # fmt: skip
def test_a_bad_point_of_a_two_key_sweep_is_one_line_naming_it_before_anything_runs(tmp_path, sweeps, message):
    path, out = tmp_path / "job.yaml", tmp_path / "cmp"
    path.write_text(yaml.safe_dump(tiny_job(attack={"kind": "sign_flip", "sites": 1})))
    args = ["compare", str(path), "--methods", "fedavg", "--out", str(out)]
    result = CliRunner().invoke(app, args + [a for s in sweeps for a in ("--sweep", s)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1 and not out.exists()
