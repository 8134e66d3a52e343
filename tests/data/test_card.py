from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from fedrad.data.card import CardRecord, build_card
from fedrad.data.readers import DicomSource
from fedrad.data.readers.dicom import read_dicom

SPLITS = {"train": 0, "val": 0, "test": 0}


def _records(patients_per_label: dict[int, int], samples_each: int = 1) -> list[CardRecord]:
    return [
        CardRecord(patient=f"L{label}-P{p}", label=label)
        for label, n in patients_per_label.items()
        for p in range(n)
        for _ in range(samples_each)
    ]


def test_a_category_below_k_and_its_complement_are_suppressed():
    card = build_card(_records({0: 10, 1: 8, 2: 2}), source="t", split_sizes=SPLITS, k=5)

    assert card["label.2"] == "<5"  # two patients
    assert card["label.1"] == "<5"  # complementary: else label.2 = 20 - 10 - 8
    assert card["label.0"] == 10
    assert card["num_samples"] == 20 and card["num_patients"] == 20


def test_suppression_counts_patients_not_samples():
    records = _records({0: 6}) + [CardRecord("same-patient", label=1) for _ in range(30)]

    card = build_card(records, source="t", split_sizes=SPLITS, k=5)

    assert card["label.1"] == "<5" and card["label.0"] == "<5"  # 30 images, but one patient


def test_k_is_configurable():
    records = _records({0: 3, 1: 2})

    assert build_card(records, source="t", split_sizes=SPLITS, k=2)["label.1"] == 2
    assert build_card(records, source="t", split_sizes=SPLITS, k=3)["label.1"] == "<3"
    with pytest.raises(ValueError, match="k must be >= 1"):
        build_card(records, source="t", split_sizes=SPLITS, k=0)


def test_numeric_summaries_are_pooled_or_withheld():
    records = [CardRecord(f"p{i}", pixel_spacing_mm=s, intensity_mean=m, intensity_std=1.0)
               for i, (s, m) in enumerate([(0.5, 0.0), (0.7, 2.0), (0.9, 4.0), (0.7, 2.0), (0.7, 2.0)])]  # fmt: skip

    shown = build_card(records, source="t", split_sizes=SPLITS, k=5)
    hidden = build_card(records[:4], source="t", split_sizes=SPLITS, k=5)

    assert (shown["pixel_spacing_mm.min"], shown["pixel_spacing_mm.median"], shown["pixel_spacing_mm.max"]) == (
        0.5, 0.7, 0.9)  # fmt: skip
    assert shown["intensity.mean"] == 2.0
    assert shown["intensity.std"] == pytest.approx(np.sqrt(1.0 + np.var([0, 2, 4, 2, 2])), abs=1e-4)
    assert hidden["pixel_spacing_mm"] == "<5" and hidden["intensity"] == "<5"
    assert "pixel_spacing_mm.median" not in hidden


def test_dicom_card_holds_no_header_identifiers(testdata, tmp_path, make_csv):
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(testdata(name), folder / name)
    labels = make_csv(tmp_path / "labels.csv", ["file", "label"], [["CT_small.dcm", 1], ["MR_small.dcm", 0]])
    cfg = DicomSource(path=folder, labels_csv=labels, key="file", size=(64, 64), suppress_below=1)

    data, _ = read_dicom(cfg, site_id="s")

    headers = [pydicom.dcmread(folder / n, stop_before_pixels=True) for n in ("CT_small.dcm", "MR_small.dcm")]
    secrets = {str(ds.get(k)) for ds in headers for k in ("PatientName", "PatientID", "StudyInstanceUID",
               "SOPInstanceUID", "InstitutionName", "StationName", "StudyDate", "DeviceSerialNumber")
               if ds.get(k)}  # fmt: skip
    words = {str(v) for v in data.card.values()} | {k.split(".", 1)[-1] for k in data.card}
    assert secrets and not secrets & words
    allowed = ("source", "num_", "patient_unit", "input_shape", "suppress_below", "label.", "modality.",
               "manufacturer.", "pixel_spacing_mm", "intensity")  # fmt: skip
    assert all(key.startswith(allowed) for key in data.card)
    assert data.card["modality.CT"] == 1 and data.card["manufacturer.GE MEDICAL SYSTEMS"] == 1
