from __future__ import annotations

import numpy as np
import pytest

from fedrad.data.readers import MedMnistSource
from fedrad.data.readers.medmnist import read_medmnist


def _npz(path, shape=(28, 28), sizes=(12, 4, 6), label_width: int = 1, drop: str | None = None):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 3, size=(n, label_width)).astype(np.uint8)
    arrays.pop(drop, None)
    np.savez_compressed(path, **arrays)
    return arrays


def test_grey_file_keeps_its_own_split(tmp_path):
    arrays = _npz(tmp_path / "pneumoniamnist.npz")

    data, skipped = read_medmnist(MedMnistSource(path=tmp_path / "pneumoniamnist.npz"), site_id="m")

    assert skipped == []
    assert data.train.inputs.shape == (12, 1, 28, 28) and data.train.inputs.dtype == np.float32
    assert (len(data.val), len(data.test)) == (4, 6)
    np.testing.assert_allclose(data.test.inputs[:, 0], arrays["test_images"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.train.targets, arrays["train_labels"][:, 0].astype(np.int64))
    assert data.train.targets.dtype == np.int64
    assert data.card["num_samples"] == 22 and data.card["patient_unit"] == "sample"


def test_colour_images_are_channel_first_and_can_be_resized(tmp_path):
    arrays = _npz(tmp_path / "bloodmnist.npz", shape=(28, 28, 3))

    data, _ = read_medmnist(MedMnistSource(path=tmp_path / "bloodmnist.npz", size=14), site_id="m")

    assert data.train.inputs.shape == (12, 3, 14, 14)
    block = arrays["train_images"][0, :2, :2, 1].mean() / 255.0  # "area": the mean of each 2x2 block
    assert data.train.inputs[0, 1, 0, 0] == pytest.approx(block, abs=1e-5)


def test_multi_label_file_needs_a_label_index(tmp_path):
    arrays = _npz(tmp_path / "chestmnist.npz", label_width=14)

    with pytest.raises(ValueError, match=r"chestmnist\.npz train_labels: 14 labels per image"):
        read_medmnist(MedMnistSource(path=tmp_path / "chestmnist.npz"), site_id="m")
    data, _ = read_medmnist(MedMnistSource(path=tmp_path / "chestmnist.npz", label_index=5), site_id="m")
    np.testing.assert_array_equal(data.val.targets, arrays["val_labels"][:, 5])


def test_missing_key_and_garbage_file_name_the_file(tmp_path):
    _npz(tmp_path / "partial.npz", drop="val_labels")
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")

    with pytest.raises(ValueError, match=r"partial\.npz: missing key 'val_labels'"):
        read_medmnist(MedMnistSource(path=tmp_path / "partial.npz"), site_id="m")
    with pytest.raises(ValueError, match=r"garbage\.npz: not a readable \.npz"):
        read_medmnist(MedMnistSource(path=tmp_path / "garbage.npz"), site_id="m")
