from __future__ import annotations

import numpy as np
import pytest

from fedrad.data.readers import TabularSource
from fedrad.data.readers.tabular import read_tabular


def _heart_csv(path, make_csv):
    rows = []
    for i in range(30):
        rows.append([f"r{i}", 40 + i, 120 + 2 * i, i % 2, "cleveland" if i < 20 else "hungary"])
    rows[3][2] = "n/a"  # a non-numeric feature
    rows[5][3] = "maybe"  # an unreadable label
    return make_csv(path, ["record", "age", "bp", "target", "centre"], rows)


def test_one_institutions_rows_standardised_with_train_statistics(tmp_path, make_csv):
    path = _heart_csv(tmp_path / "heart.csv", make_csv)
    cfg = TabularSource(path=path, label_column="target", exclude_columns=["record"],
                        institution_column="centre", institution="cleveland", seed=1)  # fmt: skip

    data, skipped = read_tabular(cfg, site_id="cleveland")

    assert sum(len(s) for s in (data.train, data.val, data.test)) == 18  # 20 rows, 2 bad
    assert data.train.inputs.shape[1] == 2 and data.card["num_features"] == 2
    np.testing.assert_allclose(data.train.inputs.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.train.inputs.std(axis=0), 1.0, atol=1e-5)
    assert data.train.targets.dtype == np.int64
    # val / test use the train statistics: age and bp are exact linear functions of each other.
    for split in (data.val, data.test):
        np.testing.assert_allclose(split.inputs[:, 0], split.inputs[:, 1], atol=1e-5)
    reasons = [str(s) for s in skipped]
    assert any("line 5" in r and "feature 'bp' is not a number: 'n/a'" in r for r in reasons)
    assert any("line 7" in r and "unreadable label 'maybe'" in r for r in reasons)


def test_split_column_is_used_when_given(tmp_path, make_csv):
    rows = [[i, i * 2.0, i % 2, ["train", "val", "test"][i % 3]] for i in range(9)]
    path = make_csv(tmp_path / "t.csv", ["a", "b", "label", "fold"], rows)

    data, _ = read_tabular(TabularSource(path=path, split_column="fold"), site_id="s")

    assert (len(data.train), len(data.val), len(data.test)) == (3, 3, 3)


def test_missing_column_and_absent_institution_raise_naming_the_file(tmp_path, make_csv):
    path = _heart_csv(tmp_path / "heart.csv", make_csv)

    with pytest.raises(ValueError, match=r"heart\.csv: missing column\(s\) \['label'\]"):
        read_tabular(TabularSource(path=path), site_id="s")
    cfg = TabularSource(path=path, label_column="target", institution_column="centre", institution="basel")
    with pytest.raises(ValueError, match=r"heart\.csv \(institution 'basel'\): no usable data"):
        read_tabular(cfg, site_id="s")
