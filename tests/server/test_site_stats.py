"""A site's evaluation statistics are checked against the task's before they are pooled."""

from __future__ import annotations

import numpy as np
import pytest

from fedrad.codec import encode
from fedrad.server.site_stats import MAX_STAT, pooled_metrics, read_stats
from fedrad.tasks.classification import ClassificationTask
from fedrad.tasks.segmentation import SegmentationTask
from fedrad.types import DataKind, FailureKind, InstructionKind, Reply, SiteFailure

TASK = ClassificationTask(num_classes=2)


def _reply(payload: dict, site_id: str = "s1", **changes) -> Reply:
    return Reply(0, site_id, InstructionKind.EVALUATE, payload, **changes)


def _stats(**changes: np.ndarray) -> dict[str, np.ndarray]:
    probs, labels = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32), np.array([0, 1, 1])
    return TASK.stats(probs, labels) | changes


def test_well_formed_statistics_pass_and_pool():
    stats = read_stats(_reply({DataKind.METRICS: encode(_stats())}), "s1", TASK)
    assert not isinstance(stats, SiteFailure)
    assert pooled_metrics(TASK, [stats, stats])["num_test"] == 6 and pooled_metrics(TASK, []) == {}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({}, "the reply carries no metrics"),
        ({DataKind.METRICS: b"not safetensors"}, "unreadable metrics: payload is not valid safetensors"),
        ({DataKind.METRICS: encode({"confusion": np.zeros((2, 2), np.int64)})}, "metrics ['confusion'], expected"),
        ({DataKind.METRICS: encode(_stats(confusion=np.zeros((3, 3), np.int64)))},
         "metrics 'confusion': shape [3, 3], expected [2, 2]"),
        ({DataKind.METRICS: encode(_stats(confusion=np.full((2, 2), 0.5)))}, "metrics 'confusion': dtype float64"),
        ({DataKind.METRICS: encode(_stats(confusion=np.array([[1, -4], [0, 2]])))},
         "metrics 'confusion': 1 non-finite or negative values"),
    ],
)
def test_missing_unreadable_or_misshapen_statistics_are_rejected(payload, reason):
    failure = read_stats(_reply(payload), "s1", TASK, "model s1: ")
    assert isinstance(failure, SiteFailure) and failure.kind == FailureKind.REJECTED and failure.phase == "evaluate"
    assert failure.reason.startswith("model s1: site s1: evaluation rejected: " + reason)


def test_a_failed_reply_keeps_its_kind_and_a_reply_naming_another_site_is_rejected():
    failed = read_stats(_reply({}, error="no reply within 5 s", error_kind=FailureKind.TIMEOUT), "s1", TASK)
    assert failed == SiteFailure("s1", "no reply within 5 s", FailureKind.TIMEOUT, "evaluate")
    impostor = read_stats(_reply({DataKind.METRICS: encode(_stats())}, site_id="s2"), "s1", TASK)
    assert isinstance(impostor, SiteFailure) and "the reply names site 's2'" in impostor.reason


def test_segmentation_statistics_may_carry_float_dice_sums_but_not_nan():
    task = SegmentationTask()
    masks = np.zeros((2, 1, 4, 4), np.float32)
    good = task.stats(masks, masks)
    assert not isinstance(read_stats(_reply({DataKind.METRICS: encode(good)}), "s1", task), SiteFailure)
    bad = good | {"image_dice_sum": np.array([np.nan])}
    failure = read_stats(_reply({DataKind.METRICS: encode(bad)}), "s1", task)
    assert isinstance(failure, SiteFailure) and "'image_dice_sum': 1 non-finite" in failure.reason


def _failure(payload: dict, task=TASK) -> SiteFailure:
    failure = read_stats(_reply(payload), "s1", task)
    assert isinstance(failure, SiteFailure) and failure.kind == FailureKind.REJECTED and failure.phase == "evaluate"
    return failure


def test_counts_so_large_that_the_sites_sum_could_overflow_are_rejected():
    huge = np.full((2, 2), MAX_STAT + 1, np.int64)
    assert "'confusion': 4 values above" in _failure({DataKind.METRICS: encode(_stats(confusion=huge))}).reason
    top = np.full((2, 2), 2**64 - 1, np.uint64)  # as float64 this is 2**64: still counted, and refused
    assert "'confusion': 4 values above" in _failure({DataKind.METRICS: encode(_stats(confusion=top))}).reason
    dice = SegmentationTask().empty_stats() | {"image_dice_sum": np.array([1e308])}
    assert "'image_dice_sum': 1 values above" in _failure({DataKind.METRICS: encode(dice)}, SegmentationTask()).reason


def test_unsigned_or_narrow_counts_come_back_in_the_tasks_dtypes():
    stats = _stats()
    narrow = {name: array.astype(np.uint16) for name, array in stats.items()}
    back = read_stats(_reply({DataKind.METRICS: encode(narrow)}), "s1", TASK)
    assert not isinstance(back, SiteFailure)
    assert {name: a.dtype for name, a in back.items()} == {name: a.dtype for name, a in TASK.empty_stats().items()}
    assert pooled_metrics(TASK, [back, stats]) == pooled_metrics(TASK, [stats, stats])


@pytest.mark.parametrize(
    "blob",
    [
        (10**9).to_bytes(8, "little") + b"{}",  # a header far larger than the blob
        b'H\x00\x00\x00\x00\x00\x00\x00{"confusion":{"dtype":"I64","shape":[1e400],"data_offsets":[0,0]}}'.ljust(80),
        (200_008).to_bytes(8, "little") + b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_hostile_metrics_bytes_are_unreadable_metrics_not_an_exception(blob):
    assert "unreadable metrics" in _failure({DataKind.METRICS: blob}).reason
