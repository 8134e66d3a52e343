"""Site-side readers: each source (DICOM, NIfTI, PNG + CSV, MedMNIST, tabular CSV) -> SiteData.

Every reader returns `SiteRead(data, skipped)`: the site's train / val / test data and a list of
`Skipped(path, reason)` for the inputs it could not use. Bad input never stops a site; a site left
with no usable data raises ValueError naming the folder or file. Heavy libraries (pydicom,
nibabel, Pillow, MONAI) are imported only by the reader that needs them.

Example:
    >>> data, skipped = load_site_data("site.yaml")  # doctest: +SKIP
    >>> data.train.inputs.shape, [str(s) for s in skipped]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

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


def read_source(block: SourceConfig, site_id: str) -> SiteRead:
    """Dispatch one validated data block to its reader."""
    if isinstance(block, DicomSource):
        from fedrad.data.readers.dicom import read_dicom

        return read_dicom(block, site_id)
    if isinstance(block, NiftiSource):
        from fedrad.data.readers.nifti import read_nifti

        return read_nifti(block, site_id)
    if isinstance(block, PngCsvSource):
        from fedrad.data.readers.png_csv import read_png_csv

        return read_png_csv(block, site_id)
    if isinstance(block, MedMnistSource):
        from fedrad.data.readers.medmnist import read_medmnist

        return read_medmnist(block, site_id)
    if isinstance(block, TabularSource):
        from fedrad.data.readers.tabular import read_tabular

        return read_tabular(block, site_id)
    raise TypeError(f"unknown data source block: {type(block).__name__}")


def load_site_data(path: str | Path) -> SiteRead:
    """Read a site YAML (`site_id` + `data` block) and the data it points to."""
    site = load_site_file(path)
    return read_source(site.data, site.site_id)


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
