from __future__ import annotations

import shutil

import pytest
import yaml
from typer.testing import CliRunner

from fedrad.cli import app


@pytest.fixture
def ct_site(tmp_path):
    """A site of one pydicom-bundled CT file (never downloaded), a junk file, and a labels CSV."""
    from pydicom.data import get_testdata_file

    source = get_testdata_file("CT_small.dcm", download=False)
    if source is None:
        pytest.skip("CT_small.dcm is not bundled with this pydicom")
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(source, scans / "CT_small.dcm")
    (scans / "notes.txt").write_text("not an image")
    (tmp_path / "labels.csv").write_text("file,label\nCT_small.dcm,1\n")
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"site_id": "ct-site", "data": {
        "source": "dicom", "path": "scans", "labels_csv": "labels.csv", "key": "file"}}))  # fmt: skip
    return site


def test_data_check_names_identifiers_skips_and_suppresses_the_card(ct_site):
    result = CliRunner().invoke(app, ["data", "check", str(ct_site), "--k", "5"])

    assert result.exit_code == 0, result.output
    out = result.output
    for keyword in ("PatientName", "PatientID", "InstitutionName", "StudyDate", "SOPInstanceUID"):
        assert keyword in out  # attributes of CT_small.dcm that carry identifiers
    assert "CT_small.dcm" in out and "files with identifiers" in out
    assert "notes.txt" in out and "not a DICOM file" in out  # the skipped file and its reason
    assert "modality.CT" in out and "<5" in out  # one patient: the card's cells are suppressed
    assert "CompressedSamples^CT1" not in out  # never a value (CT_small's PatientName)


def test_data_check_exits_1_without_usable_data_and_2_for_a_bad_yaml(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "a.dcm").write_bytes(b"\x00" * 300)
    (tmp_path / "labels.csv").write_text("file,label\na.dcm,0\n")
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"site_id": "s", "data": {
        "source": "dicom", "path": "scans", "labels_csv": "labels.csv", "key": "file"}}))  # fmt: skip

    result = CliRunner().invoke(app, ["data", "check", str(site)])
    assert result.exit_code == 1 and "no usable data" in result.output

    site.write_text("site_id: s\ndata: {source: dicom, path: scans, label_csv: x}\n")
    result = CliRunner().invoke(app, ["data", "check", str(site)])
    assert result.exit_code == 2 and "site.yaml" in result.output


def test_data_sites_prints_each_sites_splits_and_labels(tmp_path):
    from fedrad.config import JobConfig
    from fedrad.run.federation import load_federation
    from tests.tiny import TINY

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(TINY))
    result = CliRunner().invoke(app, ["data", "sites", str(job)])
    assert result.exit_code == 0, result.output
    for data in load_federation(JobConfig.model_validate(TINY)).sites:
        ones = int(data.train.targets.sum())
        assert f"1: {ones} (" in result.output.split(data.site_id, 1)[1].splitlines()[0]
    missing = CliRunner().invoke(app, ["data", "sites", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "nope.yaml" in missing.output
