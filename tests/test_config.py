from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedrad.cli import app
from fedrad.config import ConfigError, JobConfig, for_strategy, load_config


def _write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_the_example_config_is_valid():
    config = load_config("examples/phantom.yaml")
    assert config.strategy.name == "fedavg" and config.train.rounds >= 1


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("train:\n  rounds: 3\n  learning_rate: 0.1\n", "train.learning_rate"),
        ("train:\n  lr: -1\n", "train.lr"),
        ("strategy:\n  name: fedmagic\n", "strategy.name"),
        (
            "data:\n  hospitals:\n    - {site_id: a, num_patients: 5, prevalence: 0.5}\n",
            "data.hospitals.0.num_patients",
        ),
    ],
)
def test_a_bad_key_or_value_is_one_line_naming_file_and_key(tmp_path, text, key):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and f"'{key}'" in message and "\n" not in message


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path, "train:\n  rounds: [1\n")
    with pytest.raises(ConfigError, match=r"job.yaml: line \d+: not valid YAML"):
        load_config(path)


def test_cli_exits_2_with_one_line_for_a_bad_config(tmp_path):
    path = _write(tmp_path, "seed: 1\nmystery: true\n")
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "key 'mystery': unknown key" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_unknown_method(tmp_path):
    result = CliRunner().invoke(app, ["compare", "examples/phantom.yaml", "--methods", "fedavg,magic",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 2 and "magic" in result.output


def test_the_job_hash_is_the_same_for_the_same_content_at_any_path(tmp_path, monkeypatch):
    text = "name: sites\ndata:\n  source: sites\n  sites: [hospital-a.yaml, ../shared/hospital-b.yaml]\n"
    top = _write(tmp_path, text)
    (tmp_path / "a" / "b").mkdir(parents=True)
    nested = tmp_path / "a" / "b" / "job.yaml"
    nested.write_text(text)
    monkeypatch.chdir(tmp_path)

    same_file = [load_config("job.yaml"), load_config(top), load_config(tmp_path / "a" / ".." / "job.yaml")]
    copy = load_config("a/b/job.yaml")

    assert len({config.job_hash() for config in [*same_file, copy]}) == 1
    assert copy.data.sites == [Path("hospital-a.yaml"), Path("../shared/hospital-b.yaml")]  # kept as written
    assert str(tmp_path) not in copy.to_yaml()  # config.yaml holds the job as written too
    root = tmp_path.resolve()
    for config in same_file:  # each relative site YAML is found beside the job file, whatever the path
        assert [p.resolve() for p in config.site_paths()] == [root / "hospital-a.yaml",
                                                              root.parent / "shared" / "hospital-b.yaml"]
    assert [p.resolve() for p in copy.site_paths()] == [root / "a" / "b" / "hospital-a.yaml",
                                                        root / "a" / "shared" / "hospital-b.yaml"]
    assert for_strategy(copy, "fedprox").site_paths() == copy.site_paths()  # `fedrad compare` finds them too


def test_a_job_not_read_from_a_file_takes_its_site_yamls_from_the_current_folder():
    config = JobConfig.model_validate({"data": {"source": "sites", "sites": ["a.yaml", "/abs/b.yaml"]}})
    assert config.site_paths() == [Path("a.yaml"), Path("/abs/b.yaml")]
    assert JobConfig().site_paths() == []
