"""PNG / JPEG folder + labels CSV reader -> a classification SiteData.

The CSV (default `<path>/labels.csv`) has a `file` column (path relative to the folder), a `label`
column (class index), optionally a split column and a pixel-spacing column. Images are read with
Pillow as grey or RGB, scaled to [0, 1] and put on the site's grid (`common.on_grid`): the job's
harmonisation with the image's spacing, then a resize to `size` with MONAI unless the job fixes
the size. The spacing is the CSV's `spacing_column` where given, else the YAML's
`pixel_spacing_mm`, else 1 mm (a PNG header has no trustworthy spacing); the direction is the
display layout (rows top to bottom, columns left to right as shown). A listed file that is
missing, unreadable or outside the folder is skipped, and so is an image in the folder without a
usable CSV row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedrad.data.card import CardRecord
from fedrad.data.geometry import Geometry
from fedrad.data.harmonize import Harmonizer
from fedrad.data.readers.common import Sample, SiteRead, SkipItem, Skipped, assemble_site, first_line, on_grid
from fedrad.data.readers.config import PngCsvSource
from fedrad.data.readers.intensity import summary
from fedrad.data.readers.labels import LabelRow, read_label_table

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_image(path: Path, channels: int) -> np.ndarray:
    """(C, H, W) float32 in [0, 1]; 16-bit grey PNGs keep their full range."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later
            if img.mode in ("I;16", "I;16B", "I") and channels == 1:
                arr = np.asarray(img, dtype=np.float32) / 65535.0
            else:
                arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SkipItem(f"not a readable image: {first_line(exc)}") from exc
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise SkipItem("listed path is outside the image folder")
    if not path.is_file():
        raise SkipItem("listed in the labels CSV but not found")
    return path


def _spacing(row: LabelRow, cfg: PngCsvSource) -> tuple[float, float] | None:
    """(row, column) mm: the CSV's, else the YAML's, else None (unknown: 1 mm is assumed)."""
    if row.spacing is not None:
        return row.spacing
    value = cfg.pixel_spacing_mm
    return (value, value) if isinstance(value, float) else value


def read_png_csv(cfg: PngCsvSource, site_id: str, harmonizer: Harmonizer | None = None) -> SiteRead:
    """Read a labelled image folder; bad or unlisted images are skipped, each with a reason."""
    if not cfg.path.is_dir():
        raise ValueError(f"{cfg.path}: no such folder")
    labels_csv = cfg.labels_csv or cfg.path / "labels.csv"
    table, skipped = read_label_table(labels_csv, cfg.file_column, cfg.label_column, cfg.split_column,
                                      cfg.spacing_column)  # fmt: skip
    samples: list[Sample] = []
    for name, row in sorted(table.items()):
        where = cfg.path / name
        try:
            path = _inside(cfg.path, name)
            image = load_image(path, cfg.channels)
        except SkipItem as exc:
            skipped.append(Skipped(str(where), str(exc)))
            continue
        mean, std = summary(image)
        spacing = _spacing(row, cfg)
        record = CardRecord(name, label=row.label, pixel_spacing_mm=spacing[0] if spacing else None,
                            intensity_mean=mean, intensity_std=std)  # fmt: skip
        grid = on_grid(image, Geometry(spacing or (1.0, 1.0)), cfg.size, harmonizer)
        samples.append(Sample(grid, row.label, name, str(where), record, row.split))
    listed = {(cfg.path / name).resolve() for name in table}
    for path in sorted(cfg.path.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.resolve() not in listed:
            skipped.append(Skipped(str(path), f"no usable row in {labels_csv.name}"))
    return assemble_site(site_id, samples, skipped, cfg, patient_unit="sample", harmonizer=harmonizer)
