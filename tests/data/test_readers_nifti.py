from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from fedrad.data.harmonize import HarmonizationError, HarmonizeConfig, Harmonizer
from fedrad.data.readers import NiftiSource, read_source
from fedrad.data.readers.nifti import layout_geometry, read_nifti

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _volume(seed: int, shape=(8, 10, 6)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 20.0, size=shape).astype(np.float32)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[2:5, 3:7, 1:4] = 1
    return image, mask


def _write(folder, case: str, image: np.ndarray, mask: np.ndarray, affine=AFFINE, mask_affine=None) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), folder / "images" / f"{case}.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine if mask_affine is None else mask_affine), folder / "masks" / f"{case}.nii.gz")


def _expected(volume: np.ndarray) -> np.ndarray:
    """RAS (X, Y, Z) -> (Z, Y, X), anterior up, patient's right on the left."""
    return np.transpose(volume, (2, 1, 0))[:, ::-1, ::-1]


def test_round_trip_to_axial_slices(tmp_path):
    image, mask = _volume(0)
    _write(tmp_path, "case1", image, mask)
    cfg = NiftiSource(path=tmp_path, size=(10, 8), intensity="raw", suppress_below=1)

    data, skipped = read_nifti(cfg, site_id="seg")

    assert skipped == []
    assert data.train.inputs.shape == (6, 1, 10, 8)  # one volume, so all its slices share a split
    assert data.train.targets.shape == (6, 1, 10, 8) and data.train.targets.dtype == np.float32
    np.testing.assert_allclose(data.train.inputs[:, 0], _expected(image))
    np.testing.assert_array_equal(data.train.targets[:, 0], _expected(mask).astype(np.float32))
    assert data.card["pixel_spacing_mm.median"] == 2.0 and data.card["patient_unit"] == "volume"


def test_orientation_is_canonical_whatever_the_stored_axis_order(tmp_path):
    image, mask = _volume(1)
    _write(tmp_path / "ras", "case", image, mask)
    flipped = np.diag([-2.0, 2.0, 3.0, 1.0])
    flipped[0, 3] = 2.0 * (image.shape[0] - 1)  # same world positions, x stored backwards
    _write(tmp_path / "las", "case", image[::-1].copy(), mask[::-1].copy(), affine=flipped)

    ras, _ = read_nifti(NiftiSource(path=tmp_path / "ras", size=(10, 8), intensity="raw"), site_id="a")
    las, _ = read_nifti(NiftiSource(path=tmp_path / "las", size=(10, 8), intensity="raw"), site_id="b")

    np.testing.assert_allclose(ras.train.inputs, las.train.inputs)
    np.testing.assert_array_equal(ras.train.targets, las.train.targets)


def test_volume_mode_and_a_mismatched_mask(tmp_path):
    for i in range(3):
        _write(tmp_path, f"case{i}", *_volume(i))
    image, _ = _volume(9)
    _write(tmp_path, "bad_shape", image, np.zeros((8, 10, 5), np.uint8))
    cfg = NiftiSource(path=tmp_path, mode="volume", size=(6, 10, 8), fractions=(0.34, 0.33, 0.33))

    data, skipped = read_nifti(cfg, site_id="vol")

    assert sum(len(s) for s in (data.train, data.val, data.test)) == 3
    assert data.train.inputs.shape[1:] == (1, 6, 10, 8) and data.train.targets.shape[1:] == (1, 6, 10, 8)
    z = data.train.inputs[0]
    assert abs(float(z.mean())) < 1e-4 and float(z.std()) == pytest.approx(1.0, abs=1e-3)  # z-scored
    assert len(skipped) == 1 and "bad_shape" in skipped[0].path and "shape" in skipped[0].reason


def test_corrupt_unpaired_and_misaligned_files_are_skipped(tmp_path):
    _write(tmp_path, "good", *_volume(0))
    _write(tmp_path, "tilted", *_volume(1), mask_affine=np.diag([2.0, 2.0, 2.5, 1.0]))
    _write(tmp_path, "truncated", *_volume(2))
    data = gzip.decompress((tmp_path / "images" / "truncated.nii.gz").read_bytes())
    (tmp_path / "images" / "truncated.nii.gz").write_bytes(gzip.compress(data[: len(data) // 2]))
    (tmp_path / "images" / "garbage.nii").write_bytes(b"\x00\x01garbage" * 50)
    (tmp_path / "masks" / "garbage.nii").write_bytes(b"\x00\x01garbage" * 50)
    nib.save(nib.Nifti1Image(_volume(3)[0], AFFINE), tmp_path / "images" / "no_mask.nii.gz")
    (tmp_path / "images" / "notes.txt").write_text("not an image")

    site, skipped = read_nifti(NiftiSource(path=tmp_path, size=(10, 8)), site_id="s")

    assert len(site.train) + len(site.val) + len(site.test) == 6  # the good volume's slices
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in skipped}
    assert set(reasons) == {"tilted.nii.gz", "truncated.nii.gz", "garbage.nii", "no_mask.nii.gz", "notes.txt"}
    assert "affine" in reasons["tilted.nii.gz"]
    assert "no mask" in reasons["no_mask.nii.gz"]
    assert "not a readable NIfTI" in reasons["truncated.nii.gz"]


def test_no_usable_volume_raises_naming_the_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "a.nii").write_bytes(b"junk")
    (tmp_path / "masks" / "a.nii").write_bytes(b"junk")

    with pytest.raises(ValueError, match=f"{tmp_path}: no usable data"):
        read_nifti(NiftiSource(path=tmp_path), site_id="s")


def test_missing_masks_folder_names_the_key(tmp_path):
    (tmp_path / "images").mkdir()

    with pytest.raises(ValueError, match=r"masks: no such folder \(key 'masks'\)"):
        read_nifti(NiftiSource(path=tmp_path), site_id="s")


def _slab(plane: np.ndarray, depth: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A (X, Y, Z) volume repeating `plane` on every slice, and its mask (the bright part)."""
    image = np.repeat(plane[:, :, None], depth, axis=2).astype(np.float32)
    return image, (image > 500).astype(np.uint8)


def _harmonised(folder, **steps) -> tuple[np.ndarray, np.ndarray]:
    cfg = NiftiSource(path=folder, intensity="raw", fractions=(1.0, 0.0, 0.0))
    data = read_source(cfg, "s", Harmonizer(HarmonizeConfig(**steps))).data
    return data.train.inputs[:, 0], data.train.targets[:, 0]


def test_lps_and_ras_files_give_the_same_harmonised_array(tmp_path, make_object):
    # Prepare: one object stored RAS (x toward the right) and LPS (x and y reversed), same world positions.
    image, mask = _slab(make_object(1.0, n=24))
    _write(tmp_path / "ras", "case", image, mask, affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    lps = np.diag([-1.0, -1.0, 2.0, 1.0])
    lps[:2, 3] = 23.0
    _write(tmp_path / "lps", "case", image[::-1, ::-1].copy(), mask[::-1, ::-1].copy(), affine=lps)
    steps = {"spacing": (1.0, 1.0), "size": (24, 24), "spatial": "crop"}

    # Execute
    ras, ras_masks = _harmonised(tmp_path / "ras", orientation="PL", **steps)
    lps_images, lps_masks = _harmonised(tmp_path / "lps", orientation="PL", **steps)
    flipped, _ = _harmonised(tmp_path / "ras", orientation="AR", **steps)
    unoriented, _ = _harmonised(tmp_path / "ras", **steps)

    # Assert: same arrays; the slices are in the display layout ("PL" changes nothing, "AR" flips both axes).
    np.testing.assert_allclose(ras, lps_images, atol=1e-3)
    np.testing.assert_array_equal(ras_masks, lps_masks)
    np.testing.assert_allclose(ras, unoriented, atol=1e-3)
    np.testing.assert_allclose(flipped, ras[:, ::-1, ::-1], atol=1e-3)
    assert float(np.abs(flipped - ras).max()) > 200.0


def test_in_plane_zooms_are_resampled_in_millimetres(tmp_path, make_object):
    # Prepare: the same object at 0.5 mm and 1.0 mm in-plane (64 x 64 px each: 32 and 64 mm across).
    for name, mm in (("fine", 0.5), ("coarse", 1.0)):
        _write(tmp_path / name, "case", *_slab(make_object(mm)), affine=np.diag([mm, mm, 2.0, 1.0]))
    to_mm = {"spacing": (1.0, 1.0), "size": (32, 32), "spatial": "crop"}

    # Execute
    (fine, fine_mask), (coarse, coarse_mask) = (_harmonised(tmp_path / n, **to_mm) for n in ("fine", "coarse"))
    crop_only = [_harmonised(tmp_path / n, size=(32, 32), spatial="crop")[0] for n in ("fine", "coarse")]

    # Assert: images and masks agree in mm; cropping pixels alone does not.
    assert fine.shape == coarse.shape == (2, 32, 32)
    assert float(np.abs(fine - coarse).mean()) < 20.0  # peak is 1000
    assert float(np.abs(fine_mask - coarse_mask).mean()) < 0.03 and set(np.unique(fine_mask)) == {0.0, 1.0}
    assert float(np.abs(crop_only[0] - crop_only[1]).mean()) > 200.0


def test_layout_geometry_follows_the_header_zooms_and_a_mismatched_step_names_the_site(tmp_path):
    geometry = layout_geometry(np.diag([2.0, 1.0, 3.0, 1.0]))  # x 2 mm, y 1 mm, z 3 mm

    assert geometry.spacing == (3.0, 1.0, 2.0)  # (slice, row, column) = (z, y, x)
    assert geometry.plane().spacing == (1.0, 2.0)
    _write(tmp_path, "case", *_volume(0))
    volumes = NiftiSource(path=tmp_path, mode="volume", size=(6, 10, 8))
    with pytest.raises(HarmonizationError, match=r"site hosp-x: data.harmonize.orientation 'PL' has 2 axes"):
        read_source(volumes, "hosp-x", Harmonizer(HarmonizeConfig(orientation="PL")))
