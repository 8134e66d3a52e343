"""Helpers that write small, valid (or deliberately broken) medical files for the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    patient_id: str = "P001",
    modality: str = "CT",
    slope: float | None = 1.0,
    intercept: float | None = -1024.0,
    manufacturer: str = "ACME Imaging",
    transfer_syntax: str | None = None,
    **attributes: object,
) -> str:
    """Write an int16 CT/MR image (H, W) or multi-frame (F, H, W); returns its SOPInstanceUID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName = patient_id, f"Doe^{patient_id}"
    ds.Modality, ds.Manufacturer = modality, manufacturer
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelSpacing = [0.7, 0.7]
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if transfer_syntax is None:
        ds.PixelData = pixels.astype("<i2").tobytes()
    else:  # an encapsulated syntax with a codestream no decoder can read
        ds.PixelData = encapsulate([b"\x00" * 64])
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return uid


def physical_object(spacing_mm: float, n: int = 64) -> np.ndarray:
    """An (n, n) image of one physical object sampled at `spacing_mm`, centred in the field of view.

    A broad blob (sigma 5 mm, peak 1000) and a small off-centre one (posterior, on the patient's
    right in the display layout), so a flip or a wrong scale shows.
    """
    centres = (np.arange(n) - (n - 1) / 2) * spacing_mm
    rows, cols = np.meshgrid(centres, centres, indexing="ij")
    broad = 1000 * np.exp(-(rows**2 + cols**2) / (2 * 5.0**2))
    small = 600 * np.exp(-((rows - 8) ** 2 + (cols + 4) ** 2) / (2 * 2.5**2))
    return (broad + small).astype(np.float32)


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def testdata():
    """Path of a file bundled with pydicom (never downloads)."""
    from pydicom.data import get_testdata_file

    def get(name: str) -> str:
        path = get_testdata_file(name, download=False)
        if path is None:
            pytest.skip(f"{name} is not bundled with this pydicom")
        return path

    return get


@pytest.fixture
def make_dicom():
    return write_dicom


@pytest.fixture
def make_csv():
    return write_csv


@pytest.fixture
def make_object():
    return physical_object
