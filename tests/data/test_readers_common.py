from __future__ import annotations

import numpy as np
import pytest

from fedrad.data.card import CardRecord
from fedrad.data.readers import PngCsvSource
from fedrad.data.readers.common import Sample, Skipped, assemble_site, parse_split, resize
from fedrad.data.readers.intensity import apply_window, normalise
from fedrad.data.readers.labels import parse_label


def _samples(groups: list[str], shape=(1, 4, 4)) -> list[Sample]:
    return [Sample(np.full(shape, i, np.float32), i % 2, g, f"item{i}", CardRecord(g, label=i % 2))
            for i, g in enumerate(groups)]  # fmt: skip


def _site(samples, skipped=None, seed=0):
    block = PngCsvSource(path="here", fractions=(0.6, 0.2, 0.2), seed=seed, suppress_below=5)
    return assemble_site("s", samples, skipped if skipped is not None else [], block)


def test_seeded_split_keeps_each_group_in_one_split_and_is_reproducible():
    groups = [f"patient{i // 3}" for i in range(30)]  # ten patients, three images each

    data, _ = _site(_samples(groups), seed=11)
    again, _ = _site(_samples(groups), seed=11)

    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 6)
    for part in (data.train, data.val, data.test):
        ids = part.inputs[:, 0, 0, 0].astype(int) // 3
        assert all(np.sum(ids == p) == 3 for p in set(ids))  # whole patients only
    np.testing.assert_array_equal(data.test.inputs, again.test.inputs)


def test_an_input_of_another_shape_is_skipped_not_fatal():
    samples = _samples(["a", "b", "c"]) + _samples(["d"], shape=(3, 4, 4))
    skipped: list[Skipped] = []

    data, skipped = _site(samples, skipped)

    assert sum(len(p) for p in (data.train, data.val, data.test)) == 3
    assert len(skipped) == 1 and "differs from the site's (1, 4, 4)" in skipped[0].reason
    assert data.card["num_skipped"] == 1


def test_no_samples_raises_naming_where_and_the_first_skip():
    with pytest.raises(ValueError, match=r"here: no usable data \(1 item\(s\) skipped; first: f\.dcm: broken\)"):
        _site([], [Skipped("f.dcm", "broken")])


def test_area_resize_averages_blocks_and_nearest_keeps_labels():
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    mask = np.array([[[0, 0, 2, 2], [0, 0, 2, 2], [1, 1, 0, 0], [1, 1, 0, 0]]], dtype=np.float32)

    np.testing.assert_allclose(resize(image, (2, 2))[0], [[2.5, 4.5], [10.5, 12.5]])
    np.testing.assert_array_equal(resize(mask, (2, 2), nearest=True)[0], [[0, 2], [1, 0]])
    assert resize(image, (4, 4)) is not None and resize(image, (4, 4)).shape == (1, 4, 4)


def test_window_normalise_and_parsers():
    np.testing.assert_allclose(apply_window(np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0]), 40, 400),
                               [0.0, 0.0, 0.5, 1.0, 1.0])  # fmt: skip
    np.testing.assert_allclose(normalise(np.array([2.0, 4.0, 6.0]), "minmax"), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(normalise(np.array([5.0, 5.0]), "zscore"), [0.0, 0.0])
    assert parse_label(" 2 ") == 2 and parse_label("1.0") == 1
    for bad in ("", "abc", "0.5", "-1"):
        with pytest.raises(ValueError):
            parse_label(bad)
    assert (parse_split("Validation"), parse_split("TEST"), parse_split("holdout")) == ("val", "test", None)
