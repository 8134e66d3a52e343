"""Public pretraining, private fine-tuning: `task.init` (a checked weights file the job hash covers),
`task.freeze` (parameters no site trains, with and without DP-SGD) and `task.norm`.

Real parts only: safetensors files on disk, real Sites and Opacus, the simulator's MethodRun.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedrad.codec import decode, encode
from fedrad.config import ConfigError, JobConfig, load_config
from fedrad.run.federation import FederationError
from fedrad.run.simulate import MethodRun, build_sites, build_task, initial_weights
from fedrad.site.handler import Site, model_weights
from fedrad.tasks.pretrained import init_bytes
from fedrad.types import DataKind, Instruction, InstructionKind
from tests.tiny import tiny_job

DP = {"mode": "local", "noise_multiplier": 1.1, "max_grad_norm": 5.0}


def _write_job(folder, job: dict, weights=None, name: str = "init.safetensors") -> JobConfig:
    """`job` with task.init = `name` (the file of `weights`, beside the YAML) and its digest; loaded from disk."""
    if weights is not None:
        blob = init_bytes(weights)
        (folder / name).write_bytes(blob)
        job = {**job, "task": {**job["task"], "init": name, "init_sha256": hashlib.sha256(blob).hexdigest()}}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return load_config(path)


def _pretrained(job: dict) -> dict:
    """Weights for `job`'s model that no seeded initialisation gives: its init, each float entry shifted."""
    config = JobConfig.model_validate(job)
    weights = initial_weights(build_task(config, build_sites(config)), config.seed)
    return {k: (v + 0.25).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in weights.items()}


def _fit(config: JobConfig, weights, site_index: int = 0, **payload) -> tuple[Site, dict]:
    data = build_sites(config)[site_index]
    site = Site(data, build_task(config, [data]), config.job_hash())
    instruction = Instruction(0, data.site_id, InstructionKind.FIT, {DataKind.WEIGHTS: encode(weights), **payload},
                              fit=config.train.fit(), job_hash=config.job_hash(), seed=11)  # fmt: skip
    reply = site.handle(instruction)
    assert reply.ok, reply.error
    return site, decode(reply.payload[DataKind.WEIGHTS])


def test_the_init_file_is_where_every_method_starts_from(tmp_path):
    job = tiny_job(task={"norm": "group"})
    weights = _pretrained(job)
    config = _write_job(tmp_path, job, weights)
    task = build_task(config, build_sites(config))
    start = initial_weights(task, config.seed, config)
    assert list(start) == list(model_weights(task.build_model()))
    assert all(np.array_equal(start[k], weights[k]) for k in weights)
    assert not np.array_equal(start["head.weight"], initial_weights(task, config.seed)["head.weight"])

    MethodRun(config, "fedavg", tmp_path / "run", build_sites(config)).run()  # the simulator reads it too
    assert (tmp_path / "run" / "summary.json").is_file()


def test_a_file_that_does_not_fit_the_model_is_refused_in_one_line_naming_it_and_the_tensor(tmp_path):
    other = _pretrained(tiny_job(task={"channels": [4, 6], "norm": "group"}))  # another width
    config = _write_job(tmp_path, tiny_job(task={"norm": "group"}), other)
    task = build_task(config, build_sites(config))
    with pytest.raises(FederationError) as error:
        initial_weights(task, config.seed, config)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "init.safetensors") in message
    assert "'features.4.weight'" in message and "[6, 4, 3, 3]" in message  # the first mismatching tensor

    batchnorm = _pretrained(tiny_job())  # a BatchNorm model's file for the GroupNorm model
    config = _write_job(tmp_path, tiny_job(task={"norm": "group"}), batchnorm, "bn.safetensors")
    with pytest.raises(FederationError, match=r"bn\.safetensors: tensor 'features\.1\.num_batches_tracked' is not "
                                              r"in the model .*BatchNorm"):  # fmt: skip
        initial_weights(build_task(config, build_sites(config)), config.seed, config)


def test_a_file_whose_content_is_not_the_approved_digest_is_refused(tmp_path):
    job = tiny_job(task={"norm": "group"})
    config = _write_job(tmp_path, job, _pretrained(job))
    (tmp_path / "init.safetensors").write_bytes(init_bytes({k: v * 2 for k, v in _pretrained(job).items()}))
    with pytest.raises(FederationError, match=r"init\.safetensors: its sha256 is [0-9a-f]{64}, the job's "
                                              r"task\.init_sha256 is"):  # fmt: skip
        initial_weights(build_task(config, build_sites(config)), config.seed, config)
    (tmp_path / "init.safetensors").write_bytes(b"not safetensors")
    config = _write_job(tmp_path, {**job, "task": {**job["task"], "init": "init.safetensors",
                                                   "init_sha256": hashlib.sha256(b"not safetensors").hexdigest()}})
    with pytest.raises(FederationError, match="not a safetensors file"):
        initial_weights(build_task(config, build_sites(config)), config.seed, config)
    config = _write_job(tmp_path, {**job, "task": {**job["task"], "init": "gone.safetensors", "init_sha256": "0" * 64}})
    with pytest.raises(FederationError, match=r"gone\.safetensors: cannot be read"):
        initial_weights(build_task(config, build_sites(config)), config.seed, config)


def test_the_job_hash_covers_the_init_files_content_and_the_new_keys_at_their_defaults_keep_old_hashes(tmp_path):
    job = tiny_job(task={"norm": "group"})
    weights = _pretrained(job)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = _write_job(tmp_path / "a", job, weights)
    same = _write_job(tmp_path / "b", job, weights)  # the same content elsewhere: the same job
    changed = _write_job(tmp_path / "b", job, {**weights, "head.bias": weights["head.bias"] + 1})
    assert first.job_hash() == same.job_hash() != changed.job_hash()
    assert first.task.init_sha256 != changed.task.init_sha256

    plain = JobConfig.model_validate(tiny_job())
    explicit = JobConfig.model_validate(tiny_job(task={"norm": "batch", "freeze": [], "init": None}))
    assert plain.job_hash() == explicit.job_hash()
    assert "freeze" not in plain.to_yaml() and "init" not in plain.to_yaml()
    assert JobConfig.model_validate(tiny_job(task={"freeze": ["features"]})).job_hash() != plain.job_hash()


def test_init_without_its_digest_is_a_one_line_error_naming_the_key(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(tiny_job(task={"init": "w.safetensors"})))
    with pytest.raises(ConfigError, match=r"job\.yaml: key 'task': .*task\.init and task\.init_sha256 go together"):
        load_config(path)
    path.write_text(json.dumps(tiny_job(task={"freeze": ["features/0"]})))
    with pytest.raises(ConfigError, match=r"key 'task\.freeze\.0'"):
        load_config(path)


@pytest.mark.parametrize("prefix", ["featurs", "features.7", "head.weights"])
def test_a_frozen_prefix_that_matches_no_parameter_is_refused_naming_the_key(prefix):
    config = JobConfig.model_validate(tiny_job(task={"freeze": [prefix]}))
    with pytest.raises(FederationError) as error:
        build_task(config, build_sites(config))
    assert str(error.value).startswith(f"job key 'task.freeze': {prefix!r} matches no parameter")
    assert "\n" not in str(error.value)
    everything = JobConfig.model_validate(tiny_job(task={"freeze": ["features", "head"]}))
    with pytest.raises(FederationError, match="freezes every parameter"):
        build_task(everything, build_sites(everything))


@pytest.mark.parametrize("privacy", [{"mode": "none"}, DP], ids=["sgd", "dp-sgd"])
@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "scaffold"])
def test_frozen_parameters_do_not_change_in_a_local_fit_and_the_others_do(privacy, strategy):
    config = JobConfig.model_validate(tiny_job(privacy=privacy, strategy={"name": strategy},
                                               task={"freeze": ["features"]}, train={"local_epochs": 2}))  # fmt: skip
    sent = _pretrained(tiny_job(privacy=privacy, task={"freeze": ["features"]}))
    payload = {}
    if strategy == "scaffold":
        payload[DataKind.CONTROL] = encode({k: np.full_like(v, 0.01) for k, v in sent.items()
                                            if v.dtype.kind == "f" and "running" not in k})  # fmt: skip
    site, back = _fit(config, sent, **payload)
    frozen = [n for n, p in site.model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("features.") for n in frozen)
    assert all(np.array_equal(back[n], sent[n]) for n in frozen)
    assert not np.array_equal(back["head.weight"], sent["head.weight"])
    # a frozen BatchNorm (no DP: it is kept) normalises with, and keeps, the statistics it was sent
    for name in (n for n in sent if "running" in n or "num_batches" in n):
        assert np.array_equal(back[name], sent[name]), name


def test_a_frozen_batchnorm_keeps_its_statistics_and_a_trained_one_updates_them():
    config = JobConfig.model_validate(tiny_job(task={"freeze": ["features.0", "features.1"]}))
    sent = _pretrained(tiny_job())
    _, back = _fit(config, sent)
    assert np.array_equal(back["features.1.running_mean"], sent["features.1.running_mean"])
    assert np.array_equal(back["features.0.weight"], sent["features.0.weight"])
    assert not np.array_equal(back["features.5.running_mean"], sent["features.5.running_mean"])  # not frozen
    assert not np.array_equal(back["features.4.weight"], sent["features.4.weight"])


def test_norm_group_builds_the_model_local_dp_converts_to_so_one_file_serves_both():
    without = JobConfig.model_validate(tiny_job(task={"norm": "group"}))
    private = JobConfig.model_validate(tiny_job(privacy=DP))
    a = initial_weights(build_task(without, build_sites(without)), 3)
    b = initial_weights(build_task(private, build_sites(private)), 3)
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert not any("running" in k for k in a)
    fedbn = JobConfig.model_validate(tiny_job(task={"norm": "group"}, strategy={"name": "fedbn"}))
    with pytest.raises(FederationError, match="strategy 'fedbn' cannot run with task.norm 'group'"):
        build_task(fedbn, build_sites(fedbn))


def test_a_private_federation_fine_tunes_the_head_of_a_frozen_pretrained_model(tmp_path):
    job = tiny_job(privacy=DP, task={"norm": "group", "freeze": ["features"]})
    weights = _pretrained(job)
    config = _write_job(tmp_path, job, weights)
    summary = MethodRun(config, "fedavg", tmp_path / "run", build_sites(config)).run()
    assert summary["status"] != "failed"
    final = decode((tmp_path / "run" / "model.safetensors").read_bytes())
    for name in (n for n in weights if n.startswith("features.")):  # the server's float32 mean of equal arrays
        np.testing.assert_allclose(final[name], weights[name], rtol=0, atol=1e-6)
    assert not np.allclose(final["head.weight"], weights["head.weight"])


def test_the_committed_example_starts_from_its_committed_file():
    config = load_config(Path(__file__).parents[2] / "examples" / "phantom_dp_pretrained.yaml")
    task = build_task(config)
    start = initial_weights(task, config.seed, config)  # digest, names, shapes and dtypes checked
    seeded = initial_weights(task, config.seed)
    assert np.array_equal(start["head.weight"], seeded["head.weight"])  # the head: the job's seeded init
    assert not np.array_equal(start["features.0.weight"], seeded["features.0.weight"])  # pretrained
    assert [n for n, p in task.build_model().named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


def test_fedrad_run_refuses_a_bad_init_or_freeze_in_one_line_and_exit_2(tmp_path):
    from typer.testing import CliRunner

    from fedrad.cli import app

    job = tiny_job()
    weights = _pretrained(job)
    _write_job(tmp_path, job, {n: a for n, a in weights.items() if n != "head.bias"})  # a tensor short
    result = CliRunner().invoke(app, ["run", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "init.safetensors" in result.output and "head.bias" in result.output
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({**job, "task": {**job["task"], "freeze": ["nothing.here"]}}))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "run2")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "nothing.here" in result.output


def test_an_init_file_of_a_batchnorm_model_keeps_its_0_d_counters(tmp_path):
    job = tiny_job()  # task.norm batch: num_batches_tracked entries are 0-d
    weights = _pretrained(job)
    config = _write_job(tmp_path, job, weights)
    start = initial_weights(build_task(config, build_sites(config)), config.seed, config)
    assert all(start[k].shape == weights[k].shape and np.array_equal(start[k], weights[k]) for k in weights)
