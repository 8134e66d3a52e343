from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_rescale

from fedrad.data.geometry import Geometry
from fedrad.data.harmonize import HarmonizeConfig, Harmonizer
from fedrad.data.readers import DicomSource, read_source
from fedrad.data.readers.dicom import read_dicom
from fedrad.data.readers.dicom_pixels import (
    frame_geometry,
    modality_units,
    pixel_spacing_mm,
    pixel_spacings_mm,
    rescale_of,
    to_channels,
)
from fedrad.data.readers.intensity import apply_window


def test_ct_hounsfield_units_equal_pydicoms_modality_lut(testdata):
    ds = pydicom.dcmread(testdata("CT_small.dcm"))
    stored = ds.pixel_array

    ours = modality_units(ds, stored)

    np.testing.assert_array_equal(ours, apply_modality_lut(stored, ds))
    np.testing.assert_array_equal(ours, apply_rescale(stored, ds))
    assert (ds.RescaleSlope, ds.RescaleIntercept) == (1, -1024)
    assert ours.min() == stored.min() - 1024  # air-ish values are now negative HU


def test_rescale_is_read_from_shared_functional_groups():
    ds = Dataset()
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = 2.0, -100.0
    group = Dataset()
    group.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [group]

    assert rescale_of(ds) == (2.0, -100.0)
    np.testing.assert_array_equal(modality_units(ds, np.array([[0, 50]])), [[-100.0, 0.0]])


def test_monochrome1_is_flipped_and_colour_becomes_luma():
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME1"
    flipped = to_channels(ds, np.array([[0, 10], [20, 30]]), 0, channels=1)
    np.testing.assert_array_equal(flipped[0], [[30, 20], [10, 0]])

    rgb = np.zeros((1, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    grey = to_channels(Dataset(), rgb, 0, channels=1)
    assert grey.shape == (1, 1, 2)
    assert grey[0, 0, 0] == pytest.approx(0.299 * 255)


def test_single_ct_file_is_windowed_in_hounsfield_units(testdata, tmp_path, make_csv):
    ds = pydicom.dcmread(testdata("CT_small.dcm"))
    labels = make_csv(tmp_path / "labels.csv", ["SOPInstanceUID", "label"], [[ds.SOPInstanceUID, 1]])
    cfg = DicomSource(path=testdata("CT_small.dcm"), labels_csv=labels, window={"center": 40, "width": 400},
                      size=(128, 128))  # fmt: skip

    data, skipped = read_dicom(cfg, site_id="ct")

    assert skipped == []
    assert data.train.inputs.shape == (1, 1, 128, 128) and data.train.inputs.dtype == np.float32
    assert data.train.targets.tolist() == [1] and data.train.targets.dtype == np.int64
    expected = apply_window(apply_modality_lut(ds.pixel_array, ds), 40, 400)
    np.testing.assert_allclose(data.train.inputs[0, 0], expected, atol=1e-6)
    assert data.card["modality.CT"] == "<5"  # one patient only: suppressed


def test_mr_file_keyed_by_file_name_keeps_raw_values(testdata, tmp_path, make_csv):
    folder = tmp_path / "mr"
    folder.mkdir()
    shutil.copy(testdata("MR_small.dcm"), folder / "MR_small.dcm")
    labels = make_csv(tmp_path / "labels.csv", ["file", "label"], [["MR_small.dcm", 0]])
    cfg = DicomSource(path=folder, labels_csv=labels, key="file", intensity="raw", size=(64, 64),
                      suppress_below=1)  # fmt: skip

    data, _ = read_dicom(cfg, site_id="mr")

    stored = pydicom.dcmread(folder / "MR_small.dcm").pixel_array
    np.testing.assert_array_equal(data.train.inputs[0, 0], stored.astype(np.float32))
    assert data.card["modality.MR"] == 1


@pytest.mark.parametrize(("frames", "count", "index"), [("all", 15, None), ("middle", 1, 7), ("first", 1, 0)])
def test_multi_frame_dose_grid(testdata, tmp_path, make_csv, frames, count, index):
    path = testdata("rtdose.dcm")  # 15 frames of 10 x 10, bundled with pydicom
    labels = make_csv(tmp_path / "labels.csv", ["file", "label"], [["rtdose.dcm", 2]])
    cfg = DicomSource(path=path, labels_csv=labels, key="file", frames=frames, intensity="raw", size=(10, 10))

    data, _ = read_dicom(cfg, site_id="dose")

    # One file is one group: every frame lands in the same split.
    assert (len(data.train), len(data.val), len(data.test)) == (count, 0, 0)
    if index is not None:
        stored = pydicom.dcmread(path).pixel_array
        np.testing.assert_array_equal(data.train.inputs[0, 0], stored[index].astype(np.float32))


def _site(tmp_path, make_dicom, make_csv, patients: int = 10):
    """Two CT files per patient; each patient's images are identical so a leak is visible."""
    folder = tmp_path / "site"
    folder.mkdir()
    rows = []
    for p in range(patients):
        pixels = np.full((32, 32), 1000 + 10 * p, dtype=np.int16)
        pixels[p, :] = 1200  # a per-patient stripe
        for s in range(2):
            uid = make_dicom(folder / f"p{p}_s{s}.dcm", pixels, patient_id=f"P{p:03d}")
            rows.append([uid, p % 2])
    return folder, rows


def test_dicom_site_with_bad_files_is_split_by_patient(tmp_path, make_dicom, make_csv):
    folder, rows = _site(tmp_path, make_dicom, make_csv)
    (folder / "garbage.dcm").write_bytes(b"not a dicom file" * 20)
    good = folder / "p0_s0.dcm"
    (folder / "truncated.dcm").write_bytes(good.read_bytes()[:-700])  # same UID, so it is labelled
    make_dicom(folder / "unlabelled.dcm", np.zeros((32, 32), np.int16), patient_id="PX")
    make_dicom(folder / "jpeg2000.dcm", np.zeros((32, 32), np.int16), transfer_syntax="1.2.840.10008.1.2.4.90")
    j2k_uid = pydicom.dcmread(folder / "jpeg2000.dcm", stop_before_pixels=True).SOPInstanceUID
    rows += [[j2k_uid, 1], ["1.2.3.4", "abc"]]
    labels = make_csv(tmp_path / "labels.csv", ["SOPInstanceUID", "label"], rows)
    cfg = DicomSource(path=folder, labels_csv=labels, size=(16, 16), window={"center": 0, "width": 2000}, seed=3)

    data, skipped = read_dicom(cfg, site_id="hosp")

    sizes = (len(data.train), len(data.val), len(data.test))
    assert sum(sizes) == 20 and all(n % 2 == 0 for n in sizes)  # pairs stay together
    assert data.train.inputs.shape[1:] == (1, 16, 16) and data.test.targets.dtype == np.int64
    seen = {}
    for name in ("train", "val", "test"):
        for image in getattr(data, name).inputs:
            seen.setdefault(image.tobytes(), set()).add(name)
    assert len(seen) == 10 and all(len(s) == 1 for s in seen.values())  # no patient straddles splits
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in skipped}
    assert "not a DICOM file" in reasons["garbage.dcm"]
    assert "truncated" in reasons["truncated.dcm"]
    assert "no label" in reasons["unlabelled.dcm"]
    assert "transfer syntax JPEG 2000" in reasons["jpeg2000.dcm"]
    assert any("unreadable label 'abc'" in s.reason for s in skipped)
    assert data.card["num_patients"] == 10 and data.card["num_skipped"] == len(skipped) == 5


def test_split_column_overrides_the_seeded_split(tmp_path, make_dicom, make_csv):
    folder = tmp_path / "site"
    folder.mkdir()
    rows = [[make_dicom(folder / f"{i}.dcm", np.zeros((8, 8), np.int16), patient_id=f"P{i}"), i % 2, split]
            for i, split in enumerate(["train", "train", "validation", "test"])]  # fmt: skip
    labels = make_csv(tmp_path / "labels.csv", ["SOPInstanceUID", "label", "split"], rows)
    cfg = DicomSource(path=folder, labels_csv=labels, split_column="split", size=(8, 8))

    data, _ = read_dicom(cfg, site_id="s")

    assert (len(data.train), len(data.val), len(data.test)) == (2, 1, 1)


def test_folder_without_usable_files_names_the_folder(tmp_path, make_csv):
    folder = tmp_path / "empty_site"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(b"\x00" * 300)
    labels = make_csv(tmp_path / "labels.csv", ["SOPInstanceUID", "label"], [["1.2", 0]])

    with pytest.raises(ValueError, match=r"empty_site: no usable data \(1 item"):
        read_dicom(DicomSource(path=folder, labels_csv=labels), site_id="s")


def test_missing_label_column_names_the_csv(tmp_path, make_csv, testdata):
    labels = make_csv(tmp_path / "labels.csv", ["SOPInstanceUID", "diagnosis"], [["1.2", 0]])

    with pytest.raises(ValueError, match=r"labels\.csv: missing column\(s\) \['label'\]"):
        read_dicom(DicomSource(path=testdata("CT_small.dcm"), labels_csv=labels), site_id="s")


def _one_scan_site(folder, make_dicom, make_csv, pixels, **attributes) -> DicomSource:
    """A site folder holding one CT scan (stored values = HU) and its labels CSV."""
    folder.mkdir()
    uid = make_dicom(folder / "scan.dcm", pixels.astype(np.int16), intercept=0.0, **attributes)
    labels = make_csv(folder / "labels.csv", ["SOPInstanceUID", "label"], [[uid, 1]])
    return DicomSource(path=folder, labels_csv=labels, intensity="raw", fractions=(1.0, 0.0, 0.0))


def _harmonised(cfg: DicomSource, **steps) -> np.ndarray:
    return read_source(cfg, "s", Harmonizer(HarmonizeConfig(**steps))).data.train.inputs[0, 0]


def test_two_pixel_spacings_harmonise_to_the_same_millimetre_grid(tmp_path, make_dicom, make_csv, make_object):
    # Prepare: one object scanned at 0.5 mm (a 32 mm field of view) and at 1.0 mm (64 mm), 64 x 64 px each.
    fine = _one_scan_site(tmp_path / "fine", make_dicom, make_csv, make_object(0.5), PixelSpacing=[0.5, 0.5])
    coarse = _one_scan_site(tmp_path / "coarse", make_dicom, make_csv, make_object(1.0), PixelSpacing=[1.0, 1.0])
    to_mm = {"spacing": (1.0, 1.0), "size": (32, 32), "spatial": "crop"}

    # Execute: resampled to 1 mm before the crop to 32 x 32 px, and the crop alone.
    with_spacing = [_harmonised(cfg, **to_mm) for cfg in (fine, coarse)]
    crop_only = [_harmonised(cfg, size=(32, 32), spatial="crop") for cfg in (fine, coarse)]

    # Assert: in mm both show the same 32 mm of anatomy (the residue is MONAI's quarter-pixel grid
    # offset); cropping pixels alone shows the object at twice the size in the fine scan.
    assert with_spacing[0].shape == with_spacing[1].shape == (32, 32)
    assert float(np.abs(with_spacing[0] - with_spacing[1]).mean()) < 20.0  # peak is 1000 HU
    assert float(np.abs(crop_only[0] - crop_only[1]).mean()) > 200.0
    card = read_source(fine, "s").data.card
    assert card["pixel_spacing_mm"] == "<5"  # one patient: suppressed, but it was read


def test_image_orientation_patient_is_applied_before_the_resize(tmp_path, make_dicom, make_csv, make_object):
    # Prepare: the same slice stored top-down (rows toward posterior) and bottom-up (rows toward anterior).
    image = make_object(1.0)
    usual = _one_scan_site(tmp_path / "usual", make_dicom, make_csv, image, PixelSpacing=[1.0, 1.0],
                           ImageOrientationPatient=[1, 0, 0, 0, 1, 0])  # fmt: skip
    upside = _one_scan_site(tmp_path / "upside", make_dicom, make_csv, image[::-1], PixelSpacing=[1.0, 1.0],
                            ImageOrientationPatient=[1, 0, 0, 0, -1, 0])  # fmt: skip

    # Execute
    reoriented = [_harmonised(cfg, orientation="PL", size=(32, 32)) for cfg in (usual, upside)]
    as_stored = [_harmonised(cfg, size=(32, 32)) for cfg in (usual, upside)]

    # Assert: "PL" (rows toward posterior, columns toward the patient's left) undoes the flip exactly.
    np.testing.assert_allclose(reoriented[0], reoriented[1], atol=1e-3)
    np.testing.assert_allclose(reoriented[1], as_stored[0], atol=1e-3)
    assert float(np.abs(as_stored[0] - as_stored[1]).max()) > 200.0  # the small blob moved


def test_frame_geometry_reads_row_and_column_spacing_and_lps_cosines():
    ds = Dataset()
    assert frame_geometry(ds) == Geometry((1.0, 1.0))  # nothing known: 1 mm, display layout

    ds.PixelSpacing = [0.5, 0.8]  # (between rows, between columns)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # axial, as displayed
    assert frame_geometry(ds) == Geometry((0.5, 0.8), ((0.0, -1.0), (-1.0, 0.0)))
    ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]  # axial, transposed: rows toward the left
    assert frame_geometry(ds).axes == ((-1.0, 0.0), (0.0, -1.0))
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal: only the spacing is used
    assert frame_geometry(ds) == Geometry((0.5, 0.8))
    assert pixel_spacings_mm(ds) == (0.5, 0.8) and pixel_spacing_mm(ds) == 0.5
