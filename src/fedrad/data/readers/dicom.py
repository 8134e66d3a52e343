"""DICOM reader: one file or a folder of series -> a classification SiteData.

In a folder (searched recursively; DICOM files need no extension) every file is read: each
single-frame file (one slice of a series) is one sample, labelled through its key.

Each image is turned into modality units (Hounsfield units for CT, see `dicom_pixels`), then
windowed (a configured center/width) or normalised per image, and put on the site's grid
(`common.on_grid`): the job's harmonisation with the frame's PixelSpacing (row and column) and
ImageOrientationPatient, then a resize to `size` with MONAI unless the job fixes the size.
Labels come from a CSV keyed by a DICOM attribute (SOPInstanceUID by default, or Study/Series
InstanceUID, PatientID) or by the file name / path. Multi-frame objects give their middle frame by
default ("first" or "all" frames on request); with "all", every frame is a sample with the file's
label, and a file's frames always land in the same split. Splits are seeded over `group_by`
(the patient by default), so no patient straddles train and test; a split column overrides this.

Example:
    >>> cfg = DicomSource(path="scans/", labels_csv="labels.csv", key="file")  # doctest: +SKIP
    >>> data, skipped = read_dicom(cfg, site_id="hosp-a")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from fedrad.data.card import CardRecord
from fedrad.data.harmonize import HarmonizationError, Harmonizer
from fedrad.data.readers.common import Sample, SiteRead, SkipItem, Skipped, assemble_site, first_line, on_grid
from fedrad.data.readers.config import DicomSource
from fedrad.data.readers.dicom_pixels import (
    decode,
    frame_geometry,
    number_of_frames,
    open_dicom,
    pixel_spacing_mm,
    select_frames,
    to_channels,
)
from fedrad.data.readers.intensity import summary, to_model_range
from fedrad.data.readers.labels import LabelRow, read_label_table

_UNIT = {"PatientID": "patient", "StudyInstanceUID": "study", "file": "file"}


def list_files(root: Path, ignore: tuple[Path, ...] = ()) -> list[Path]:
    """`root` itself if it is a file, else every non-hidden file below it, sorted (DICOM files often
    have no extension, so none is required)."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ValueError(f"{root}: no such file or folder")
    skip = {p.resolve() for p in ignore}
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.resolve() not in skip
    )


def _text(ds: Any, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _key(ds: Any, path: Path, cfg: DicomSource) -> str:
    if cfg.key == "file":
        return path.name
    if cfg.key == "relpath":
        return path.relative_to(cfg.path).as_posix() if cfg.path.is_dir() else path.name
    value = _text(ds, cfg.key)
    if not value:
        raise SkipItem(f"no {cfg.key} to look the label up by")
    return value


def _read_file(path: Path, cfg: DicomSource, table: dict[str, LabelRow], harmonizer: Harmonizer | None) -> list[Sample]:
    ds = open_dicom(path)
    key = _key(ds, path, cfg)
    row = table.get(key)
    if row is None:
        raise SkipItem(f"no label for {cfg.key} {key!r} in {cfg.labels_csv.name}")
    pixels = decode(ds)
    group = (_text(ds, cfg.group_by) if cfg.group_by != "file" else "") or str(path)
    record = CardRecord(
        patient=group,
        label=row.label,
        modality=_text(ds, "Modality") or None,
        manufacturer=_text(ds, "Manufacturer") or None,
        pixel_spacing_mm=pixel_spacing_mm(ds),
    )
    samples = []
    window = cfg.window.pair() if cfg.window else None
    multi = number_of_frames(ds) > 1
    for index, frame in select_frames(pixels, ds, cfg.frames):
        units = to_channels(ds, frame, index, cfg.channels)
        mean, std = summary(units)
        image = on_grid(to_model_range(units, window, cfg.intensity), frame_geometry(ds, index), cfg.size, harmonizer)
        origin = f"{path} frame {index}" if multi else str(path)
        stats = replace(record, intensity_mean=mean, intensity_std=std)
        samples.append(Sample(image, row.label, group, origin, stats, row.split))
    return samples


def read_dicom(cfg: DicomSource, site_id: str, harmonizer: Harmonizer | None = None) -> SiteRead:
    """Read a DICOM file or folder into a SiteData; bad files are skipped, each with a reason."""
    table, skipped = read_label_table(
        cfg.labels_csv, cfg.key_column or cfg.key, cfg.label_column, cfg.split_column
    )
    files = list_files(cfg.path, ignore=(cfg.labels_csv,))
    samples: list[Sample] = []
    for path in files:
        try:
            samples.extend(_read_file(path, cfg, table, harmonizer))
        except HarmonizationError:
            raise  # the job's steps do not fit this site's images: not one bad file
        except SkipItem as exc:
            skipped.append(Skipped(str(path), str(exc)))
        except Exception as exc:  # any other failure of one file must not stop the site
            skipped.append(Skipped(str(path), f"not a readable DICOM file: {first_line(exc)}"))
    return assemble_site(site_id, samples, skipped, cfg, patient_unit=_UNIT[cfg.group_by], harmonizer=harmonizer)
