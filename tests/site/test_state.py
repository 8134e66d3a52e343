from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from fedrad.site.state import FitState, SiteState, SiteStateError, SiteStateFile, default_state_path

JOB = "a" * 64
MODEL = {"conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "bn.num_batches_tracked": np.array(4)}
C_I = {"conv.weight": np.full((2, 3), 0.5, np.float32)}


def _state() -> SiteState:
    before = FitState(2, {n: a - 1 for n, a in MODEL.items()}, {n: a * 0 for n, a in C_I.items()})
    return SiteState(last=FitState(3, MODEL, C_I), before=before)


def test_a_saved_state_reads_back_the_same_arrays_rounds_and_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "s1.safetensors"
    SiteStateFile(path, JOB, "s1").save(_state())
    loaded = SiteStateFile(path, JOB, "s1").load()
    assert loaded is not None and (loaded.last.round, loaded.before.round) == (3, 2)
    pairs = [(loaded.last.local, MODEL), (loaded.last.control, C_I), (loaded.before.local, _state().before.local)]
    for got, expected in pairs:
        assert got is not None and got.keys() == expected.keys()
        for name, array in expected.items():
            assert got[name].dtype == array.dtype and got[name].shape == array.shape
            np.testing.assert_array_equal(got[name], array)


def test_a_state_without_control_or_history_reads_back_as_none(tmp_path: Path) -> None:
    path = tmp_path / "s1.safetensors"
    SiteStateFile(path, JOB, "s1").save(SiteState(last=FitState(0, MODEL)))
    loaded = SiteStateFile(path, JOB, "s1").load()
    assert loaded is not None and loaded.last.control is None and loaded.before == FitState()


def test_no_file_is_no_state(tmp_path: Path) -> None:
    assert SiteStateFile(tmp_path / "none.safetensors", JOB, "s1").load() is None


def test_the_write_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "s1.safetensors"
    state_file = SiteStateFile(path, JOB, "s1")
    state_file.save(SiteState(last=FitState(0, MODEL)))
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src, dst) -> None:  # the new bytes are complete in a sibling before the rename
        replaced.append((os.fspath(src), os.fspath(dst)))
        assert SiteStateFile(Path(src), JOB, "s1").load().last.round == 1  # type: ignore[union-attr]
        assert SiteStateFile(Path(dst), JOB, "s1").load().last.round == 0  # type: ignore[union-attr]
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    state_file.save(SiteState(last=FitState(1, MODEL)))
    assert [Path(dst) for _, dst in replaced] == [path] and Path(replaced[0][0]).parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s1.safetensors"]


def test_a_crash_before_the_rename_leaves_the_previous_state(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "s1.safetensors"
    SiteStateFile(path, JOB, "s1").save(SiteState(last=FitState(0, MODEL)))

    def crash(src, dst) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        SiteStateFile(path, JOB, "s1").save(SiteState(last=FitState(1, MODEL)))
    assert SiteStateFile(path, JOB, "s1").load().last.round == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(("job_hash", "site_id"), [("b" * 64, "s1"), (JOB, "s2")])
def test_a_file_of_another_job_or_site_is_ignored_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, job_hash: str, site_id: str
) -> None:
    path = tmp_path / "state.safetensors"
    SiteStateFile(path, JOB, "s1").save(_state())
    with caplog.at_level(logging.WARNING):
        assert SiteStateFile(path, job_hash, site_id).load() is None
    assert str(path) in caplog.text and "ignored" in caplog.text


def test_a_corrupt_file_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "s1.safetensors"
    SiteStateFile(path, JOB, "s1").save(_state())
    path.write_bytes(path.read_bytes()[:40])  # cut short
    with pytest.raises(SiteStateError) as raised:
        SiteStateFile(path, JOB, "s1").load()
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_a_safetensors_file_that_is_not_a_site_state_is_refused(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file(MODEL, str(path))
    with pytest.raises(SiteStateError, match="model.safetensors"):
        SiteStateFile(path, JOB, "s1").load()


def test_a_fit_starts_from_the_last_state_and_a_repeat_from_what_the_first_try_started_from() -> None:
    first, second = FitState(0, {"w": np.zeros(1)}), FitState(1, {"w": np.ones(1)})
    state = SiteState().after(0, first).after(1, second)
    assert state.start(2) is second  # the next round continues
    assert state.start(1) is first  # round 1 again (its reply was lost): from where it began
    again = state.after(1, FitState(1, {"w": np.ones(1)}))
    assert again.before is first  # repeating does not move the history on
    assert state.start(0) == FitState()  # an earlier round: a new run of the same job starts afresh


def test_the_default_path_sits_beside_the_data_yaml_one_file_per_site_and_job(tmp_path: Path) -> None:
    path = default_state_path(tmp_path / "site.yaml", "s1", JOB)
    assert path == tmp_path / ".fedrad-state" / f"s1-{JOB[:12]}.safetensors"
