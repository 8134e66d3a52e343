"""NIfTI reader: 3D volumes and their label masks -> a segmentation SiteData.

Layout: `<path>/<images>/case.nii.gz` pairs with `<path>/<masks>/case.nii.gz` (the Medical
Segmentation Decathlon's imagesTr / labelsTr work with `images: imagesTr, masks: labelsTr`).
Volumes are reoriented to the closest canonical (RAS+) orientation, laid out as (C, D, H, W) in
the radiological convention (axial slices, anterior up, patient's right on the left), normalised
per volume, and either kept whole (`mode: volume`) or cut into axial slices (`mode: slices`).
The layout's geometry comes from the header's affine (zooms and direction), so the job's
harmonisation resamples in mm (`common.on_grid`); a slice gets its plane's 2D geometry.
The slices of one volume always land in the same split. A 4D image is read as multi-channel.
A mask whose shape or affine differs from its image is skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedrad.data.card import CardRecord
from fedrad.data.geometry import Geometry
from fedrad.data.harmonize import HarmonizationError, Harmonizer
from fedrad.data.readers.common import Sample, SiteRead, SkipItem, Skipped, assemble_site, first_line, on_grid
from fedrad.data.readers.config import NiftiSource
from fedrad.data.readers.intensity import summary, to_model_range

_EXTENSIONS = (".nii.gz", ".nii")
_AFFINE_TOLERANCE_MM = 1e-2  # image and mask affines may differ by float32 rounding, not more


def case_name(path: Path) -> str | None:
    """'case_001.nii.gz' -> 'case_001'; None for a file that is not NIfTI."""
    for ext in _EXTENSIONS:
        if path.name.endswith(ext) and len(path.name) > len(ext):
            return path.name[: -len(ext)]
    return None


def _folder(cfg: NiftiSource, key: str) -> dict[str, Path]:
    folder = cfg.path / getattr(cfg, key)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder (key '{key}')")
    return {case_name(p) or p.name: p for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def pair_cases(cfg: NiftiSource) -> tuple[list[tuple[str, Path, Path]], list[Skipped]]:
    """(case, image, mask) triples, and the files that have no partner or are not NIfTI."""
    images, masks = _folder(cfg, "images"), _folder(cfg, "masks")
    pairs, skipped = [], []
    for case, image in images.items():
        if case_name(image) is None:
            skipped.append(Skipped(str(image), "not a NIfTI file (.nii or .nii.gz)"))
        elif case not in masks:
            skipped.append(Skipped(str(image), f"no mask named {case}.nii[.gz] in {cfg.masks}/"))
        else:
            pairs.append((case, image, masks[case]))
    for case, mask in masks.items():
        if case_name(mask) is None:
            skipped.append(Skipped(str(mask), "not a NIfTI file (.nii or .nii.gz)"))
        elif case not in images:
            skipped.append(Skipped(str(mask), f"mask without an image in {cfg.images}/"))
    return pairs, skipped


def _check_pair(image: Any, mask: Any, mask_path: Path) -> None:
    mask_shape = mask.shape[:3] if mask.ndim == 4 and mask.shape[3] == 1 else mask.shape
    if image.ndim not in (3, 4):
        raise SkipItem(f"expected a 3D volume (or 4D multi-channel), got shape {image.shape}")
    if tuple(mask_shape) != tuple(image.shape[:3]):
        raise SkipItem(f"mask {mask_path.name} has shape {mask.shape}, the image has {image.shape}")
    if not np.allclose(image.affine, mask.affine, atol=_AFFINE_TOLERANCE_MM):
        raise SkipItem(f"mask {mask_path.name} has a different affine (not aligned with the image)")


def _layout(volume: np.ndarray) -> np.ndarray:
    """RAS+ (X, Y, Z[, C]) -> (C, Z, Y, X) with anterior up and the patient's right on the left."""
    if volume.ndim == 3:
        volume = volume[..., None]
    return np.ascontiguousarray(np.transpose(volume, (3, 2, 1, 0))[:, :, ::-1, ::-1])


def layout_geometry(affine: np.ndarray) -> Geometry:
    """The geometry of `_layout`'s (Z, Y, X) axes, Y and X reversed, from the canonical image's affine."""
    steps = np.asarray(affine, dtype=np.float64)[:3, :3]
    return Geometry.from_vectors([steps[:, 2], -steps[:, 1], -steps[:, 0]])


def _read_case(
    case: str, image_path: Path, mask_path: Path, cfg: NiftiSource, harmonizer: Harmonizer | None
) -> list[Sample]:
    import nibabel as nib

    image, mask = nib.load(image_path), nib.load(mask_path)
    _check_pair(image, mask, mask_path)
    image, mask = nib.as_closest_canonical(image), nib.as_closest_canonical(mask)
    geometry = layout_geometry(image.affine)
    units = _layout(np.asarray(image.get_fdata(dtype=np.float32)))
    labels = _layout(np.asarray(mask.dataobj, dtype=np.float32).reshape(mask.shape[:3]))
    labels = (labels > 0).astype(np.float32) if cfg.binarize else labels
    mean, std = summary(units)
    record = CardRecord(case, pixel_spacing_mm=geometry.spacing[1], intensity_mean=mean, intensity_std=std)
    window = cfg.window.pair() if cfg.window else None
    volume = to_model_range(units, window, cfg.intensity)
    if cfg.mode == "volume":
        return [Sample(on_grid(volume, geometry, cfg.size, harmonizer),
                       on_grid(labels, geometry, cfg.size, harmonizer, mask=True), case, str(image_path),
                       record)]  # fmt: skip
    # Slices: all axial slices in one call each for images and masks, with (C * D) as MONAI's channel axis.
    c, d = volume.shape[:2]
    plane = geometry.plane()
    planes = on_grid(volume.reshape(c * d, *volume.shape[2:]), plane, cfg.size, harmonizer)
    planes = planes.reshape(c, d, *planes.shape[1:])
    masks = on_grid(labels[0], plane, cfg.size, harmonizer, mask=True)
    return [
        Sample(planes[:, z], masks[z][None], case, f"{image_path} slice {z}", record)
        for z in range(d)
        if not (cfg.skip_empty_slices and not masks[z].any())
    ]


def read_nifti(cfg: NiftiSource, site_id: str, harmonizer: Harmonizer | None = None) -> SiteRead:
    """Read paired NIfTI volumes and masks; bad or unpaired files are skipped, each with a reason."""
    pairs, skipped = pair_cases(cfg)
    samples: list[Sample] = []
    for case, image_path, mask_path in pairs:
        try:
            samples.extend(_read_case(case, image_path, mask_path, cfg, harmonizer))
        except HarmonizationError:
            raise  # the job's steps do not fit this site's images: not one bad volume
        except SkipItem as exc:
            skipped.append(Skipped(str(image_path), str(exc)))
        except Exception as exc:  # one corrupt volume must not stop the site
            skipped.append(Skipped(str(image_path), f"not a readable NIfTI pair: {first_line(exc)}"))
    return assemble_site(site_id, samples, skipped, cfg, patient_unit="volume", harmonizer=harmonizer)
