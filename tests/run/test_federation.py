"""Job-level data sources: site YAMLs (DICOM, tabular CSV) through the whole federated run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fedrad.cli import app
from fedrad.config import ConfigError, JobConfig, for_strategy, load_config
from fedrad.run.federation import FederationError, load_federation
from fedrad.run.simulate import MethodRun, build_task
from fedrad.tasks.tabular import TabularTask
from tests.data.conftest import write_csv, write_dicom
from tests.tiny import TABULAR, tabular_sites


def _dicom_site(root: Path, site_id: str, patients: int, seed: int) -> Path:
    """A hospital's folder of CT slices (a bright lesion or not) with labels.csv, and its site YAML."""
    rng = np.random.default_rng(seed)
    scans = root / site_id / "scans"
    scans.mkdir(parents=True)
    rows = []
    for p in range(patients):
        label = p % 2
        hu = rng.normal(0, 20, (24, 24))  # soft tissue around 0 HU
        if label:
            y, x = rng.integers(6, 18, 2)
            hu[y - 3 : y + 3, x - 3 : x + 3] += 150  # an enhancing lesion
        write_dicom(scans / f"p{p:02d}.dcm", (hu + 1024).astype(np.int16), patient_id=f"{site_id}-{p}")
        rows.append([f"p{p:02d}.dcm", label])
    (scans / "broken.dcm").write_bytes(b"not a dicom file" * 10)
    write_csv(root / site_id / "labels.csv", ["file", "label"], rows)
    site_yaml = root / site_id / "site.yaml"
    site_yaml.write_text(yaml.safe_dump({"site_id": site_id, "data": {
        "source": "dicom", "path": "scans", "labels_csv": "labels.csv", "key": "file", "group_by": "file",
        "window": {"center": 40, "width": 400}, "size": [16, 16], "seed": seed}}))  # fmt: skip
    return site_yaml


def test_a_dicom_federation_runs_end_to_end_through_the_cli(tmp_path):
    site_a = _dicom_site(tmp_path, "hosp-a", 16, seed=1)
    site_b = _dicom_site(tmp_path, "hosp-b", 12, seed=2)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "dicom", "seed": 0,
        "data": {"source": "sites", "sites": [str(site_a.relative_to(tmp_path)), str(site_b)]},
        "task": {"channels": [4, 8]}, "train": {"rounds": 2, "batch_size": 4, "lr": 0.05}}))  # fmt: skip
    out = tmp_path / "run"

    result = CliRunner().invoke(app, ["run", str(job), "--out", str(out)])

    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["pooled"]["num_test"] > 0
    assert 0.0 <= summary["pooled"]["balanced_accuracy"] <= 1.0
    assert summary["sites"]["hosp-a"]["num_train"] + summary["sites"]["hosp-b"]["num_train"] > 10
    assert summary["ledger"]["by_kind"]["raw_data"] == 0  # FedAvg moves weights and metrics only


def test_skipped_items_are_reported_one_line_each_and_counted(tmp_path):
    site = _dicom_site(tmp_path, "hosp-a", 10, seed=3)
    harmonize = {"intensity": {"kind": "zscore"}, "size": [12, 12]}
    config = JobConfig.model_validate({"data": {"source": "sites", "sites": [str(site)], "harmonize": harmonize}})
    lines: list[str] = []

    federation = load_federation(config, report=lines.append)

    assert federation.num_skipped == 1 and federation.sites[0].card["num_skipped"] == 1
    assert any("site hosp-a: skipped" in line and "broken.dcm" in line for line in lines)
    data = federation.sites[0]  # harmonised by the job's steps, and fingerprinted
    assert data.train.inputs.shape[1:] == (1, 12, 12) and len(data.card["preprocessing"]) == 64
    assert build_task(config, federation.sites).in_channels == 1


def test_a_site_without_usable_data_stops_the_job_naming_its_yaml(tmp_path):
    folder = tmp_path / "empty" / "scans"
    folder.mkdir(parents=True)
    (folder / "junk.dcm").write_bytes(b"\x00" * 300)
    write_csv(tmp_path / "empty" / "labels.csv", ["file", "label"], [["junk.dcm", 0]])
    site_yaml = tmp_path / "empty" / "site.yaml"
    site_yaml.write_text(yaml.safe_dump({"site_id": "empty", "data": {
        "source": "dicom", "path": "scans", "labels_csv": "labels.csv", "key": "file"}}))  # fmt: skip
    config = JobConfig.model_validate({"data": {"source": "sites", "sites": [str(site_yaml)]}})

    with pytest.raises(FederationError, match=r"site YAML .*empty/site.yaml: .*no usable data"):
        load_federation(config)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"data": {"source": "sites", "sites": [str(site_yaml)]}}))
    result = CliRunner().invoke(app, ["run", str(job), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no usable data" in result.output


def _tabular_site(root: Path, site_id: str, n: int, shift: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, (n, 4))
    label = (x[:, 0] + x[:, 1] > 2 * shift).astype(int)  # a linear rule, shifted per site
    rows = [[f"{site_id}-{i}", *np.round(x[i], 4), label[i]] for i in range(n)]
    csv = write_csv(root / f"{site_id}.csv", ["record", "f1", "f2", "f3", "f4", "label"], rows)
    site_yaml = root / f"{site_id}.yaml"
    site_yaml.write_text(yaml.safe_dump({"site_id": site_id, "data": {
        "source": "tabular", "path": csv.name, "exclude_columns": ["record"], "seed": seed}}))  # fmt: skip
    return site_yaml


@pytest.mark.slow
def test_fedavg_on_three_tabular_csv_sites(tmp_path):
    sites = [_tabular_site(tmp_path, f"clinic-{i}", n, shift, i) for i, (n, shift) in
             enumerate([(160, 0.0), (120, 0.5), (80, -0.5)])]  # fmt: skip
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "tabular", "data": {"source": "sites", "sites": [p.name for p in sites]},
        "train": {"rounds": 8, "local_epochs": 2, "batch_size": 16, "lr": 0.1}}))  # fmt: skip
    config = load_config(job)  # site paths relative to the job YAML's folder

    federation = load_federation(config)
    summary = MethodRun(config, "fedavg", tmp_path / "out", federation.sites).run()

    task = build_task(config, federation.sites)
    assert isinstance(task, TabularTask) and task.num_features == 4 and task.num_classes == 2
    assert summary["metric"] == "balanced_accuracy" and set(summary["sites"]) == {"clinic-0", "clinic-1", "clinic-2"}
    assert summary["pooled"]["balanced_accuracy"] > 0.8  # the rule is linear: an MLP finds it


def test_site_sources_need_their_list_and_fit_the_task(tmp_path):
    with pytest.raises(ValueError, match="data.sites"):
        JobConfig.model_validate({"data": {"source": "sites"}})
    with pytest.raises(ValueError, match="does not fit data.source 'phantom_seg'"):
        JobConfig.model_validate({"data": {"source": "phantom_seg"}, "task": {"kind": "classification"}})
    path = tmp_path / "job.yaml"
    path.write_text("data:\n  source: phantom\n  sites: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"job.yaml: key 'data': .*data.sites"):
        load_config(path)


def test_declared_model_sizes_build_the_server_model_and_data_must_fit_them(tiny_config) -> None:
    from fedrad.run.federation import build_task_for

    sites_job = {"data": {"source": "sites", "sites": ["a.yaml"]}, "task": {"kind": "classification"}}
    with pytest.raises(FederationError, match="task.in_channels"):
        build_task_for(JobConfig.model_validate(sites_job))  # the deployed server: no data to size from
    declared = {**sites_job, "task": {"kind": "classification", "in_channels": 3, "num_classes": 5}}
    task = build_task_for(JobConfig.model_validate(declared))
    assert (task.in_channels, task.num_classes) == (3, 5)
    # a site whose images do not fit the declared size is named
    phantom = load_federation(tiny_config).sites
    wrong = tiny_config.model_copy(update={"task": tiny_config.task.model_copy(update={"in_channels": 3})})
    with pytest.raises(FederationError, match="site s1: inputs have 1 channels"):
        build_task_for(wrong, phantom)
    fewer = tiny_config.model_copy(update={"task": tiny_config.task.model_copy(update={"num_classes": 4})})
    assert build_task_for(fewer, phantom).num_classes == 4  # declared above what the labels show: kept


def test_fedbn_on_the_tabular_mlp_is_refused_with_one_line_saying_why():
    config = JobConfig.model_validate(TABULAR | {"strategy": {"name": "fedbn"}})
    reason = "strategy 'fedbn' cannot run a tabular task: fedbn keeps BatchNorm local; the tabular MLP has none"
    with pytest.raises(FederationError, match=f"^{reason}$"):
        build_task(config, tabular_sites())
    assert build_task(for_strategy(config, "fedavg"), tabular_sites()).kind == "tabular"


def test_the_cli_refuses_a_method_the_task_cannot_support_before_running_any(tmp_path):
    sites = [_tabular_site(tmp_path, f"clinic-{i}", 40, 0.0, i) for i in range(2)]
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"data": {"source": "sites", "sites": [p.name for p in sites]}}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compare", str(job), "--methods", "fedavg,fedbn", "--out", str(out)])
    assert result.exit_code == 2 and "fedbn keeps BatchNorm local" in result.output
    assert not out.exists()  # fedavg did not run either
