"""The site-data YAML: one strict pydantic block per source; a bad key is one line naming file and key.

A site YAML (relative paths are taken from the YAML file's folder):

    site_id: hosp-a
    data:
      source: dicom
      path: scans/            # one .dcm file or a folder of series (searched recursively)
      labels_csv: labels.csv
      key: SOPInstanceUID     # or StudyInstanceUID, SeriesInstanceUID, PatientID, file, relpath
      label_column: label
      window: {center: 40, width: 400}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fedrad.data.readers.intensity import Intensity
from fedrad.yamlfile import read_yaml_mapping

PositiveMm = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class SiteDataConfigError(ValueError):
    """A site-data YAML that cannot be used; its message is one line naming the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Window(_Strict):
    center: float
    width: float = Field(gt=0)

    def pair(self) -> tuple[float, float]:
        return self.center, self.width


class _Source(_Strict):
    path: Path
    seed: int = 0  # seeds the train / val / test split where the source has no split of its own
    fractions: tuple[float, float, float] = (0.6, 0.15, 0.25)  # train / val / test
    suppress_below: int = Field(5, ge=1)  # the data card's k: categories with < k patients -> "<k"

    @field_validator("fractions")
    @classmethod
    def _fractions_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) < 0 or v[0] <= 0 or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be >= 0, train > 0 and sum to 1, got {list(v)}")
        return v


class DicomSource(_Source):
    source: Literal["dicom"] = "dicom"
    labels_csv: Path
    label_column: str = "label"
    key: Literal["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "file", "relpath"] = (
        "SOPInstanceUID"
    )
    key_column: str | None = None  # the CSV column holding the key; default: named like `key`
    split_column: str | None = None
    # Samples sharing this attribute never straddle two splits; a blank value falls back to the file.
    group_by: Literal["PatientID", "StudyInstanceUID", "file"] = "PatientID"
    # Multi-frame files: one sample per frame ("all"; frames of a file stay in one split), or one frame.
    frames: Literal["middle", "first", "all"] = "middle"
    window: Window | None = None  # in modality units (HU for CT); overrides `intensity`
    intensity: Intensity = "minmax"
    channels: Literal[1, 3] = 1  # colour is turned to grey (ITU-R 601 luma) or grey repeated x3
    size: tuple[Annotated[int, Field(ge=4)], Annotated[int, Field(ge=4)]] = (64, 64)


class NiftiSource(_Source):
    source: Literal["nifti"] = "nifti"
    images: str = "images"  # sub-folders of `path`; an image and its mask share a file name
    masks: str = "masks"
    mode: Literal["slices", "volume"] = "slices"  # axial 2D slices, or whole 3D volumes
    # (H, W) for slices, (D, H, W) for volumes; checked against `mode` even when left at its default
    size: tuple[Annotated[int, Field(ge=4)], ...] = Field((64, 64), validate_default=True)
    window: Window | None = None
    intensity: Intensity = "zscore"
    binarize: bool = True  # mask > 0 -> 1; False keeps label values (multi-class masks)
    skip_empty_slices: bool = False

    @field_validator("size")
    @classmethod
    def _size_matches_mode(cls, size: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        mode = info.data.get("mode", "slices")  # `mode` is declared before `size`, so already checked
        want = 2 if mode == "slices" else 3
        if len(size) != want:
            raise ValueError(f"size must have {want} numbers for mode '{mode}', got {list(size)}")
        return size


class PngCsvSource(_Source):
    source: Literal["png_csv"] = "png_csv"
    labels_csv: Path | None = None  # default: <path>/labels.csv
    file_column: str = "file"  # paths relative to `path`
    label_column: str = "label"
    split_column: str | None = None
    # Pixel spacing in mm: a CSV column (one number, or "row\column" in mm), else this value, else 1 mm.
    spacing_column: str | None = None
    pixel_spacing_mm: PositiveMm | tuple[PositiveMm, PositiveMm] | None = None
    channels: Literal[1, 3] = 1
    size: tuple[Annotated[int, Field(ge=4)], Annotated[int, Field(ge=4)]] = (64, 64)


class MedMnistSource(_Source):
    source: Literal["medmnist"] = "medmnist"
    size: Annotated[int, Field(ge=4)] | None = None  # None keeps the file's own size (28, 64, 128, 224)
    label_index: int | None = Field(None, ge=0)  # multi-label files (ChestMNIST): which label to learn


class TabularSource(_Source):
    source: Literal["tabular"] = "tabular"
    label_column: str = "label"
    feature_columns: list[str] | None = None  # None: every column not named below
    exclude_columns: list[str] = []  # e.g. a record id that must not become a feature
    institution_column: str | None = None
    institution: str | None = None  # keep only this institution's rows (one CSV, many sites)
    split_column: str | None = None

    @model_validator(mode="after")
    def _institution_pair(self) -> TabularSource:
        if (self.institution is None) != (self.institution_column is None):
            raise ValueError("institution and institution_column must be given together")
        return self


SourceConfig = Annotated[
    DicomSource | NiftiSource | PngCsvSource | MedMnistSource | TabularSource, Field(discriminator="source")
]
SOURCES = ("dicom", "nifti", "png_csv", "medmnist", "tabular")


class SiteFile(_Strict):
    site_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    data: SourceConfig


def with_base(block: _Source, base: Path) -> _Source:
    """The block with every relative path taken from `base` (the YAML file's folder)."""
    update = {
        name: base / value
        for name, value in block
        if isinstance(value, Path) and not value.is_absolute()
    }
    return block.model_copy(update=update)


def _describe(error: ValidationError, path: Path) -> str:
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    if len(loc) > 1 and loc[0] == "data" and loc[1] in SOURCES:
        loc.pop(1)  # the union's tag, not a key the user wrote
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc.append("source")
    key = ".".join(loc) or "(top level)"
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    more = len(error.errors()) - 1
    return f"{path}: key '{key}': {message}" + (f" (and {more} more)" if more else "")


def load_site_file(path: str | Path) -> SiteFile:
    """Read and validate a site YAML; raise SiteDataConfigError with one line naming file and key."""
    path = Path(path)
    raw = read_yaml_mapping(path, SiteDataConfigError, mapping_hint="must be a mapping with keys site_id and data")
    try:
        site = SiteFile.model_validate(raw)
    except ValidationError as exc:
        raise SiteDataConfigError(_describe(exc, path)) from exc
    return site.model_copy(update={"data": with_base(site.data, path.parent)})
