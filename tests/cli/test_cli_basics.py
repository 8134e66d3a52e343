"""The command line never surprises: a job YAML with a key given twice or no keys at all is refused in one
line (exit 2), and `fedrad --version` and `-h` answer."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedrad import __version__
from fedrad.cli import app


@pytest.mark.parametrize(("text", "message"), [
    ("name: a\ntrain: {rounds: 2}\ntrain: {rounds: 3}\n",
     "line 3: not valid YAML: key 'train' is given twice (first on line 2)"),
    ("train:\n  rounds: 2\n  lr: 0.1\n  rounds: 4\n",
     "line 4: not valid YAML: key 'rounds' is given twice (first on line 2)"),
    ("", "the top level must be a mapping of job keys (an empty file is no job"),
])  # fmt: skip
def test_a_job_with_a_key_twice_or_no_keys_is_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "out").exists()  # nothing trained


def test_version_and_short_help():
    version = CliRunner().invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"fedrad {__version__}"
    short = CliRunner().invoke(app, ["-h"])
    assert short.exit_code == 0 and "run" in short.output and "compare" in short.output


@pytest.mark.parametrize("command", [["run", "JOB"], ["compare", "JOB", "--methods", "fedavg"],
                                     ["server", "--job", "JOB", "--kit", "KIT"]])  # fmt: skip
def test_out_naming_an_existing_file_is_a_usage_error_not_a_traceback(tmp_path, command):
    (tmp_path / "job.yaml").write_text("name: a\n")
    taken = tmp_path / "results.txt"
    taken.write_text("someone's notes\n")
    args = [str(tmp_path / "job.yaml") if a == "JOB" else str(tmp_path) if a == "KIT" else a for a in command]
    result = CliRunner().invoke(app, [*args, "--out", str(taken)])
    said = " ".join(result.output.replace("│", " ").split())  # rich wraps the message in a box
    assert result.exit_code == 2 and "is a file, not a results folder" in said, result.output
    assert taken.read_text() == "someone's notes\n"


def test_run_and_compare_end_by_saying_where_their_results_are(tmp_path):
    import yaml

    from tests.tiny import tiny_job

    (tmp_path / "job.yaml").write_text(yaml.safe_dump(tiny_job()))
    ran = CliRunner().invoke(app, ["run", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "run")])
    assert ran.exit_code == 0 and f"results in {tmp_path / 'run'}" in " ".join(ran.output.split())
    compared = CliRunner().invoke(app, ["compare", str(tmp_path / "job.yaml"), "--methods", "fedavg",
                                        "--out", str(tmp_path / "cmp")])  # fmt: skip
    said = " ".join(compared.output.split())
    assert compared.exit_code == 0 and f"report: {tmp_path / 'cmp' / 'report.html'}" in said, compared.output
    assert "curves.png" in said


def test_a_results_folder_is_never_overwritten_without_overwrite(tmp_path):
    import yaml

    from fedrad.pki.provision import ProjectSpec, provision
    from tests.tiny import tiny_job

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_job()))
    out = tmp_path / "run"
    assert CliRunner().invoke(app, ["run", str(job), "--out", str(out)]).exit_code == 0
    before = (out / "metrics.jsonl").read_text()
    again = CliRunner().invoke(app, ["run", str(job), "--out", str(out)])
    assert again.exit_code == 2 and "holds an earlier run's results" in again.output and "--overwrite" in again.output
    assert (out / "metrics.jsonl").read_text() == before  # untouched
    compare = CliRunner().invoke(app, ["compare", str(job), "--methods", "fedavg", "--out", str(tmp_path)])
    assert compare.exit_code == 2, compare.output  # run/metrics.jsonl is a method folder's results
    kits = provision(ProjectSpec(name="guard", sites=("s1", "s2", "s3")), tmp_path / "kits")
    server = CliRunner().invoke(app, ["server", "--job", str(job), "--kit", str(kits.server), "--out", str(out)])
    assert server.exit_code == 2 and "--resume continues it" in server.output, server.output
    assert (out / "metrics.jsonl").read_text() == before
    replaced = CliRunner().invoke(app, ["run", str(job), "--out", str(out), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
