"""Site-side readers: each source (DICOM, NIfTI, PNG + CSV, MedMNIST, tabular CSV) -> SiteData.

Every reader returns `SiteRead(data, skipped)`: the site's train / val / test data and a list of
`Skipped(path, reason)` for the inputs it could not use. Bad input never stops a site; a site left
with no usable data raises ValueError naming the folder or file. Heavy libraries (pydicom,
nibabel, Pillow, MONAI) are imported only by the reader that needs them.

Given the job's `Harmonizer`, the image readers (DICOM, NIfTI, PNG) harmonise each image as they
read it, with its real geometry (fedrad.data.harmonize); MedMNIST arrays are harmonised afterwards.

Example:
    >>> data, skipped = load_site_data("site.yaml")  # doctest: +SKIP
    >>> data.train.inputs.shape, [str(s) for s in skipped]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from fedrad.data.harmonize import HarmonizationError, Harmonizer
from fedrad.data.readers.common import SiteRead, Skipped
from fedrad.data.readers.config import (
    DicomSource,
    MedMnistSource,
    NiftiSource,
    PngCsvSource,
    SiteDataConfigError,
    SiteFile,
    SourceConfig,
    TabularSource,
    load_site_file,
)


def _read_images(block: SourceConfig, site_id: str, harmonizer: Harmonizer | None) -> SiteRead:
    if isinstance(block, DicomSource):
        from fedrad.data.readers.dicom import read_dicom

        return read_dicom(block, site_id, harmonizer)
    if isinstance(block, NiftiSource):
        from fedrad.data.readers.nifti import read_nifti

        return read_nifti(block, site_id, harmonizer)
    if isinstance(block, PngCsvSource):
        from fedrad.data.readers.png_csv import read_png_csv

        return read_png_csv(block, site_id, harmonizer)
    raise TypeError(f"unknown data source block: {type(block).__name__}")


def _read_arrays(block: MedMnistSource | TabularSource, site_id: str) -> SiteRead:
    if isinstance(block, MedMnistSource):
        from fedrad.data.readers.medmnist import read_medmnist

        return read_medmnist(block, site_id)
    from fedrad.data.readers.tabular import read_tabular

    return read_tabular(block, site_id)


def read_source(block: SourceConfig, site_id: str, harmonizer: Harmonizer | None = None) -> SiteRead:
    """Dispatch one validated data block to its reader; with a harmonizer, the site is harmonised."""
    if isinstance(block, MedMnistSource | TabularSource):
        read = _read_arrays(block, site_id)
        return read if harmonizer is None else SiteRead(harmonizer.site(read.data), read.skipped)
    try:
        return _read_images(block, site_id, harmonizer)
    except HarmonizationError as exc:
        raise HarmonizationError(f"site {site_id}: {exc}") from None


def load_site_data(path: str | Path, harmonizer: Harmonizer | None = None) -> SiteRead:
    """Read a site YAML (`site_id` + `data` block) and the data it points to (harmonised, given one)."""
    site = load_site_file(path)
    return read_source(site.data, site.site_id, harmonizer)


__all__ = [
    "DicomSource",
    "MedMnistSource",
    "NiftiSource",
    "PngCsvSource",
    "SiteDataConfigError",
    "SiteFile",
    "SiteRead",
    "Skipped",
    "SourceConfig",
    "TabularSource",
    "load_site_data",
    "read_source",
]
