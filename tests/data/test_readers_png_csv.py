from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from fedrad.data.harmonize import HarmonizeConfig, Harmonizer
from fedrad.data.readers import PngCsvSource, read_source
from fedrad.data.readers.png_csv import read_png_csv


def _grey(path, value: int, size: int = 8) -> None:
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path)


def test_labelled_folder_with_split_column_and_bad_files(tmp_path, make_csv):
    folder = tmp_path / "site"
    (folder / "sub").mkdir(parents=True)
    rows = []
    for i, split in enumerate(["train", "train", "train", "val", "test", "test"]):
        _grey(folder / f"img{i}.png", 40 * i)
        rows.append([f"img{i}.png", i % 2, split])
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(folder / "sub" / "colour.jpg", quality=100)
    rows.append(["sub/colour.jpg", 1, "train"])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    _grey(folder / "full.png", 10, size=64)
    (folder / "truncated.png").write_bytes((folder / "full.png").read_bytes()[:60])
    _grey(folder / "unlisted.png", 0)
    _grey(tmp_path / "outside.png", 0)
    rows += [["corrupt.png", 0, "train"], ["truncated.png", 1, "train"], ["missing.png", 0, "test"],
             ["../outside.png", 0, "train"], ["img9.png", 1, "holdout"]]  # fmt: skip
    make_csv(folder / "labels.csv", ["file", "label", "split"], rows)
    cfg = PngCsvSource(path=folder, split_column="split", size=(8, 8), suppress_below=1)

    data, skipped = read_png_csv(cfg, site_id="xray")

    assert (len(data.train), len(data.val), len(data.test)) == (4, 1, 2)
    assert data.train.inputs.shape == (4, 1, 8, 8) and data.train.targets.dtype == np.int64
    np.testing.assert_allclose(data.val.inputs[0], 120 / 255.0)  # img3.png
    colour = data.train.inputs[-1, 0, 0, 0]  # sub/colour.jpg sorts last: grey = 0.587 * G
    assert colour == pytest.approx(0.587 * 200 / 255.0, abs=0.02)
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in skipped}
    assert "not a readable image" in reasons["corrupt.png"]
    assert "not a readable image" in reasons["truncated.png"]
    assert "not found" in reasons["missing.png"]
    assert "outside" in reasons["outside.png"]
    assert "no usable row" in reasons["unlisted.png"] and "no usable row" in reasons["full.png"]
    assert any("unknown split 'holdout'" in s.reason for s in skipped)


def test_rgb_channels_and_seeded_split_are_reproducible(tmp_path, make_csv):
    rows = []
    for i in range(10):
        Image.fromarray(np.full((8, 8, 3), i * 20, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append([f"{i}.png", i % 3])
    make_csv(tmp_path / "labels.csv", ["file", "label"], rows)
    cfg = PngCsvSource(path=tmp_path, channels=3, size=(8, 8), seed=7)

    first, _ = read_png_csv(cfg, site_id="a")
    again, _ = read_png_csv(cfg, site_id="a")

    assert first.train.inputs.shape[1:] == (3, 8, 8)
    assert (len(first.train), len(first.val), len(first.test)) == (6, 2, 2)
    np.testing.assert_array_equal(first.test.inputs, again.test.inputs)


def test_only_broken_images_raise_naming_the_folder(tmp_path, make_csv):
    (tmp_path / "a.png").write_bytes(b"garbage")
    make_csv(tmp_path / "labels.csv", ["file", "label"], [["a.png", 0]])

    with pytest.raises(ValueError, match=f"{tmp_path}: no usable data"):
        read_png_csv(PngCsvSource(path=tmp_path), site_id="s")


def test_spacing_column_and_yaml_spacing_resample_in_millimetres(tmp_path, make_csv, make_object):
    # Prepare: one object photographed at 0.5 mm and 1.0 mm per pixel (64 x 64 px each); a third copy
    # of the fine one whose spacing cell is empty (the YAML's 0.5 mm applies); one unreadable cell.
    for name, mm in (("a_coarse.png", 1.0), ("b_fine.png", 0.5), ("c_fine_yaml.png", 0.5)):
        Image.fromarray((make_object(mm) * 255 / 1600).astype(np.uint8)).save(tmp_path / name)
    make_csv(tmp_path / "labels.csv", ["file", "label", "mm"],
             [["a_coarse.png", 0, "1.0"], ["b_fine.png", 1, "0.5\\0.5"], ["c_fine_yaml.png", 1, ""],
              ["d_bad.png", 0, "abc"]])  # fmt: skip
    cfg = PngCsvSource(path=tmp_path, spacing_column="mm", pixel_spacing_mm=0.5, fractions=(1.0, 0.0, 0.0),
                       suppress_below=1)  # fmt: skip
    to_mm = Harmonizer(HarmonizeConfig(spacing=(1.0, 1.0), size=(32, 32), spatial="crop"))
    crop_only = Harmonizer(HarmonizeConfig(size=(32, 32), spatial="crop"))

    # Execute
    data, skipped = read_source(cfg, "clinic", to_mm)
    pixels = read_source(cfg, "clinic", crop_only).data.train.inputs[:, 0]

    # Assert: in mm the three agree (peak about 0.63); in pixels the fine ones show the object twice as large.
    coarse, fine, fine_yaml = data.train.inputs[:, 0]
    assert float(np.abs(coarse - fine).mean()) < 0.015
    np.testing.assert_allclose(fine, fine_yaml)
    assert float(np.abs(pixels[0] - pixels[1]).mean()) > 0.15
    assert len(skipped) == 1 and "unreadable spacing 'abc'" in skipped[0].reason
    assert (data.card["pixel_spacing_mm.min"], data.card["pixel_spacing_mm.max"]) == (0.5, 1.0)


def test_without_a_declared_spacing_pixels_are_taken_as_1_mm(tmp_path, make_csv):
    _grey(tmp_path / "a.png", 100, size=20)
    make_csv(tmp_path / "labels.csv", ["file", "label"], [["a.png", 0]])
    cfg = PngCsvSource(path=tmp_path, fractions=(1.0, 0.0, 0.0), size=(8, 8))

    data, _ = read_source(cfg, "c", Harmonizer(HarmonizeConfig(spacing=(2.0, 2.0))))

    assert data.train.inputs.shape == (1, 1, 8, 8)  # the reader's size, after resampling 20 px of 1 mm
    assert "pixel_spacing_mm.median" not in data.card and "pixel_spacing_mm" not in data.card
    with pytest.raises(ValidationError):
        PngCsvSource(path=tmp_path, pixel_spacing_mm=0)
