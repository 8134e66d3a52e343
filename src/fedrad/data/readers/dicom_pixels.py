"""DICOM pixel values: decoding, frame choice, modality units (Hounsfield for CT), colour, geometry.

Modality units follow PS3.3 C.11.1: with a Modality LUT Sequence, pydicom's `apply_modality_lut`
is used as is; otherwise `stored * RescaleSlope + RescaleIntercept`, where the rescale is read
from the per-frame or shared functional groups of enhanced multi-frame objects when it is not in
the top-level dataset (pydicom's own function looks only at the top level).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np

from fedrad.data.geometry import Geometry, axial_axes, lps_to_ras
from fedrad.data.readers.common import SkipItem, first_line

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 grey from RGB
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_CORE_GROUPS = (0x0008, 0x0010, 0x0018, 0x0020, 0x0028)  # SOP common, patient, acquisition, image


def open_dicom(path: Any, *, stop_before_pixels: bool = False) -> Any:
    """Read a DICOM file; one without the 128-byte preamble is read as a raw data set, and kept only
    if it holds standard attributes (a forced read of random bytes yields junk, not an error)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass
    with warnings.catch_warnings():  # parsing random bytes warns at every step; the check below decides
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        if not any(not e.tag.is_private and e.tag.group in _CORE_GROUPS for e in ds):
            raise SkipItem("not a DICOM file (no preamble and no standard attributes)")
    return ds


def decode(ds: Any) -> np.ndarray:
    """The stored pixel values, or SkipItem naming the transfer syntax when they cannot be decoded."""
    if not any(k in ds for k in PIXEL_KEYWORDS):
        raise SkipItem("no pixel data")
    try:
        return np.asarray(ds.pixel_array)
    except (NotImplementedError, RuntimeError) as exc:  # no decoder plugin for this transfer syntax
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        name = getattr(syntax, "name", None) or "unknown"
        raise SkipItem(f"cannot decode pixel data (transfer syntax {name}): {first_line(exc)}") from exc
    except (ValueError, AttributeError, KeyError, EOFError) as exc:
        raise SkipItem(f"corrupt or truncated pixel data: {first_line(exc)}") from exc


def number_of_frames(ds: Any) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def select_frames(
    pixels: np.ndarray, ds: Any, which: Literal["middle", "first", "all"]
) -> list[tuple[int, np.ndarray]]:
    """(frame index, frame) pairs: every frame, or the first or middle one of a multi-frame object."""
    n = number_of_frames(ds)
    if n == 1:
        return [(0, pixels)]
    if which == "all":
        return list(enumerate(pixels))
    index = 0 if which == "first" else n // 2
    return [(index, pixels[index])]


def _functional(ds: Any, frame: int, sequence: str) -> Any | None:
    """The item of `sequence` for `frame` in the per-frame, then the shared functional groups."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is not None and len(items) > index and sequence in items[index]:
            inner = getattr(items[index], sequence)
            if len(inner):
                return inner[0]
    return None


def rescale_of(ds: Any, frame: int = 0) -> tuple[float, float]:
    """(slope, intercept) for `frame`; (1, 0) where the object has none."""
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        source = ds
    else:
        source = _functional(ds, frame, "PixelValueTransformationSequence")
    if source is None:
        return 1.0, 0.0
    slope = source.get("RescaleSlope", None)
    intercept = source.get("RescaleIntercept", None)
    return float(slope) if slope not in (None, "") else 1.0, float(intercept) if intercept not in (None, "") else 0.0


def modality_units(ds: Any, pixels: np.ndarray, frame: int = 0) -> np.ndarray:
    """Stored values -> modality units (float64): Hounsfield units for CT."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    slope, intercept = rescale_of(ds, frame)
    return pixels.astype(np.float64) * slope + intercept


def to_channels(ds: Any, frame: np.ndarray, index: int, channels: int) -> np.ndarray:
    """One frame as (C, H, W) float32 in modality units (grey) or 0..max (colour)."""
    if frame.ndim == 3:  # (H, W, 3): pydicom has already turned YBR into RGB
        rgb = frame.astype(np.float32)
        return (rgb @ LUMA)[None] if channels == 1 else np.moveaxis(rgb, -1, 0)
    if frame.ndim != 2:
        raise SkipItem(f"unsupported pixel array shape {frame.shape}")
    grey = modality_units(ds, frame, index).astype(np.float32)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        grey = grey.max() + grey.min() - grey  # MONOCHROME1 shows low values bright: flip
    return np.repeat(grey[None], channels, axis=0)


def _numbers(holders: tuple[Any, ...], keywords: tuple[str, ...], count: int) -> tuple[float, ...] | None:
    """The first attribute among `keywords` in `holders` that holds `count` finite numbers."""
    for holder in holders:
        if holder is None:
            continue
        for keyword in keywords:
            value = holder.get(keyword)
            if not value:
                continue
            try:
                numbers = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                return None
            return numbers if len(numbers) == count and np.all(np.isfinite(numbers)) else None
    return None


def pixel_spacings_mm(ds: Any, frame: int = 0) -> tuple[float, float] | None:
    """(row, column) spacing in mm: PixelSpacing, ImagerPixelSpacing, or the functional groups'."""
    holders = (ds, _functional(ds, frame, "PixelMeasuresSequence"))
    pair = _numbers(holders, ("PixelSpacing", "ImagerPixelSpacing"), 2)
    return (pair[0], pair[1]) if pair and min(pair) > 0 else None


def pixel_spacing_mm(ds: Any) -> float | None:
    """In-plane row spacing in mm (the data card's figure)."""
    pair = pixel_spacings_mm(ds)
    return pair[0] if pair else None


def frame_geometry(ds: Any, frame: int = 0) -> Geometry:
    """Spacing and axial direction of one frame; 1 mm and the display layout where the file has none.

    ImageOrientationPatient holds the LPS direction cosines of a row (the way the column index
    grows) and of a column (the way the row index grows); array axis 0 is the row index.
    """
    spacing = pixel_spacings_mm(ds, frame) or (1.0, 1.0)
    holders = (ds, _functional(ds, frame, "PlaneOrientationSequence"))
    cosines = _numbers(holders, ("ImageOrientationPatient",), 6)
    axes = None
    if cosines is not None:
        along_row, along_column = lps_to_ras(cosines[:3]), lps_to_ras(cosines[3:])
        if np.linalg.norm(along_row) > 0 and np.linalg.norm(along_column) > 0:
            axes = axial_axes(along_column, along_row)  # (row index, column index)
    return Geometry(spacing, axes)
