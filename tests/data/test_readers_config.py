from __future__ import annotations

import numpy as np
import pytest

from fedrad.data.readers import (
    DicomSource,
    NiftiSource,
    SiteDataConfigError,
    TabularSource,
    load_site_data,
)
from fedrad.data.readers.config import load_site_file


def test_site_yaml_paths_are_relative_to_the_yaml(tmp_path, make_csv):
    (tmp_path / "data").mkdir()
    make_csv(tmp_path / "data" / "t.csv", ["x", "label"], [[i, i % 2] for i in range(10)])
    site = tmp_path / "site.yaml"
    site.write_text("site_id: hosp-a\ndata:\n  source: tabular\n  path: data/t.csv\n  seed: 4\n")

    data, skipped = load_site_data(site)

    assert data.site_id == "hosp-a" and skipped == []
    assert sum(len(s) for s in (data.train, data.val, data.test)) == 10
    assert np.isfinite(data.train.inputs).all()


def test_dicom_block_parses_to_its_model(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(
        "site_id: b\ndata: {source: dicom, path: scans, labels_csv: l.csv, key: StudyInstanceUID,"
        " window: {center: 40, width: 400}, frames: all}\n"
    )

    block = load_site_file(site).data

    assert isinstance(block, DicomSource)
    assert block.path == tmp_path / "scans" and block.labels_csv == tmp_path / "l.csv"
    assert block.window is not None and block.window.pair() == (40.0, 400.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("site_id: a\ndata: {source: dicom, path: x, labels_csv: y, labelz: z}\n", "key 'data.labelz': unknown key"),
        ("site_id: a\ndata: {source: dicom, path: x}\n", "key 'data.labels_csv': Field required"),
        ("site_id: a\ndata: {source: orthanc, path: x}\n", "key 'data.source'"),
        ("site_id: a\ndata: {source: tabular, path: x, fractions: [0.5, 0.5, 0.5]}\n", "key 'data.fractions'"),
        ("site_id: a\ndata: {source: nifti, path: x, mode: volume}\n", "key 'data.size': Value error, size must"),
        ("site_id: 'a b'\ndata: {source: tabular, path: x}\n", "key 'site_id'"),
        ("site_id: a\ndata: [unclosed\n", "line"),
        ("- just a list\n", "top level must be a mapping"),
    ],
)
def test_malformed_site_yaml_is_one_line_naming_file_and_key(tmp_path, text, message):
    site = tmp_path / "bad_site.yaml"
    site.write_text(text)

    with pytest.raises(SiteDataConfigError) as info:
        load_site_data(site)

    assert str(site) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_models_forbid_extra_keys_and_check_values():
    with pytest.raises(ValueError, match="extra"):
        TabularSource(path="x", colour="red")
    with pytest.raises(ValueError, match="institution and institution_column"):
        TabularSource(path="x", institution="a")
    assert NiftiSource(path="x", mode="volume", size=(8, 16, 16)).size == (8, 16, 16)
