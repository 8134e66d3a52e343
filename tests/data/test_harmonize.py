from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from fedrad.data.base import SiteData, Split
from fedrad.data.geometry import Geometry
from fedrad.data.harmonize import (
    FINGERPRINT_KEY,
    CTWindow,
    HarmonizationError,
    HarmonizeConfig,
    Harmonizer,
    Percentile,
    ZScore,
    verify_site,
)
from fedrad.run.federation import FederationError, check_preprocessing


def _site(site_id: str, images: np.ndarray, masks: np.ndarray | None = None) -> SiteData:
    targets = masks if masks is not None else np.zeros(len(images), dtype=np.int64)
    split = Split(images.astype(np.float32), targets)
    return SiteData(site_id, split, split.subset(np.arange(0)), split)


def _anatomy(n: int = 3, size: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (n, 1, size, size)).astype(np.float32)
    masks = np.zeros_like(images)
    masks[:, :, 5:11, 6:12] = 1
    return images, masks


def test_zscore_and_resize_give_identical_inputs_at_two_scanners():
    # Prepare: the same anatomy seen by two scanners that differ in gain and offset.
    images, masks = _anatomy()
    a, b = _site("a", images, masks), _site("b", 2.5 * images + 100.0, masks)
    harmonizer = Harmonizer(HarmonizeConfig(intensity=ZScore(), size=(32, 32)))

    # Execute
    ha, hb = harmonizer.site(a), harmonizer.site(b)

    # Assert: one input shape and one intensity scale everywhere; masks resized and still binary.
    assert ha.train.inputs.shape == hb.train.inputs.shape == (3, 1, 32, 32)
    np.testing.assert_allclose(ha.train.inputs, hb.train.inputs, atol=1e-4)
    zscored = Harmonizer(HarmonizeConfig(intensity=ZScore())).site(b).train.inputs  # before the resize
    np.testing.assert_allclose(zscored.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(zscored.std(axis=(1, 2, 3)), 1.0, atol=1e-3)
    assert ha.train.targets.shape == (3, 1, 32, 32) and set(np.unique(ha.train.targets)) == {0.0, 1.0}
    assert ha.card[FINGERPRINT_KEY] == hb.card[FINGERPRINT_KEY] == harmonizer.fingerprint
    assert ha.card["input_shape"] == "1x32x32"


def test_ct_window_percentile_crop_and_spacing():
    hu = np.array([-1000.0, 40.0, 240.0, 1000.0], dtype=np.float32).reshape(1, 1, 2, 2)
    windowed = Harmonizer(HarmonizeConfig(intensity=CTWindow(center=40, width=400))).split(Split(hu, hu))
    np.testing.assert_allclose(windowed.inputs.ravel(), [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(windowed.targets, hu)  # masks are not intensity-normalised

    images, masks = _anatomy(n=2, size=20)
    cropped = Harmonizer(HarmonizeConfig(intensity=Percentile(lower=0, upper=100), size=(10, 10), spatial="crop"))
    out = cropped.split(Split(images, masks))
    assert out.inputs.shape == (2, 1, 10, 10) and out.inputs.min() >= 0 and out.inputs.max() <= 1
    np.testing.assert_array_equal(out.targets[0, 0], masks[0, 0, 5:15, 5:15])  # a centre crop

    coarse = Harmonizer(HarmonizeConfig(orientation="RA", spacing=(2.0, 2.0))).split(Split(images, masks))
    assert coarse.inputs.shape[2:] == (10, 10)  # 20 px of 1 mm resampled to 2 mm


def test_each_image_is_oriented_and_resampled_with_its_own_geometry():
    # Prepare: an asymmetric image in the display layout, and its pixels stored transposed (rows
    # toward the patient's left), with axes that say so.
    image = np.zeros((1, 12, 8), dtype=np.float32)
    image[0, 2:6, 1:3] = 1.0
    transposed = np.ascontiguousarray(image.transpose(0, 2, 1))
    says_so = Geometry((1.0, 1.0), ((-1.0, 0.0), (0.0, -1.0)))
    harmonizer = Harmonizer(HarmonizeConfig(orientation="PL", spacing=(2.0, 2.0)))

    # Execute
    display, restored = harmonizer.image(image), harmonizer.image(transposed, says_so)
    unoriented = Harmonizer(HarmonizeConfig(spacing=(2.0, 2.0))).image(transposed, says_so)

    # Assert: back in the display layout, 2 mm pixels; without the orientation step it stays transposed.
    assert display.shape == restored.shape == (1, 6, 4)
    np.testing.assert_allclose(restored, display, atol=1e-6)
    assert display.max() > 0.5
    assert unoriented.shape == (1, 4, 6)
    anisotropic = Harmonizer(HarmonizeConfig(spacing=(2.0, 2.0))).image(np.ones((1, 12, 8), np.float32),
                                                                       Geometry((1.0, 2.0)))  # fmt: skip
    assert anisotropic.shape == (1, 6, 8)  # rows 1 mm -> 2 mm; columns already 2 mm


def test_a_site_with_other_preprocessing_is_refused_by_name():
    images, _ = _anatomy()
    job = Harmonizer(HarmonizeConfig(intensity=ZScore(), size=(16, 16)))
    other = Harmonizer(HarmonizeConfig(intensity=ZScore(), size=(24, 24)))
    sites = [job.site(_site("hosp-a", images)), other.site(_site("hosp-b", images))]

    with pytest.raises(FederationError, match=r"site hosp-b: preprocessing fingerprint \w+ differs from the job's"):
        check_preprocessing(sites, job.fingerprint)
    with pytest.raises(HarmonizationError, match="site raw: applied no harmonisation"):
        verify_site(_site("raw", images), job.fingerprint)
    assert job.fingerprint != other.fingerprint
    assert Harmonizer(HarmonizeConfig(intensity=ZScore(), size=(16, 16))).fingerprint == job.fingerprint


def test_bad_harmonize_values_are_refused():
    with pytest.raises(ValidationError):
        HarmonizeConfig(intensity={"kind": "ct_window", "width": 0})
    with pytest.raises(ValidationError):
        HarmonizeConfig(orientation="XY")
    with pytest.raises(HarmonizationError, match="needs images"):
        Harmonizer(HarmonizeConfig(intensity=ZScore())).split(Split(np.zeros((3, 4), np.float32), np.zeros(3)))
