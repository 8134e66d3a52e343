from __future__ import annotations

import pytest

from fedrad.server.status import live_state


def _site(tasks, last_seen_s=1.0):
    return {"tasks": tasks, "last_seen_s": last_seen_s, "late": 0, "refused": None}


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        ([{"kind": "fit", "delivered": 1, "answered": False, "uploading": False}], "training"),
        ([{"kind": "fit", "delivered": 1, "answered": False, "uploading": True}], "uploading"),
        ([{"kind": "evaluate", "delivered": 1, "answered": False, "uploading": False}], "evaluating"),
        ([{"kind": "fit", "delivered": 1, "answered": True, "uploading": False}], "submitted"),
        ([{"kind": "fit", "delivered": 0, "answered": False, "uploading": False}], "waiting"),
        ([], "connected"),
    ],
)
def test_a_sites_live_state_follows_its_tasks(tasks, expected):
    assert live_state(_site(tasks), poll_s=15) == expected


def test_a_site_not_seen_for_longer_than_a_poll_is_disconnected():
    assert live_state(_site([], last_seen_s=60.0), poll_s=15) == "disconnected"


def test_a_completed_rounds_states_are_the_failures_kinds_not_their_messages():
    from fedrad.server.orchestrator import RoundRecord
    from fedrad.server.status import round_states
    from fedrad.types import FailureKind, SiteFailure

    failures = [
        SiteFailure("a", "anything at all", FailureKind.TIMEOUT),
        SiteFailure("b", "update rejected (the words do not matter)", FailureKind.REFUSED),
        SiteFailure("c", "no reply within 5 s", FailureKind.DROPPED, "evaluate"),
        SiteFailure("b", "lost in evaluation too", FailureKind.ERROR, "evaluate"),  # its training failure shows
    ]
    record = RoundRecord(round=3, asked=["a", "b", "c", "d"], failures=failures, train_metrics={})
    assert round_states(record) == {"a": "timeout", "b": "refused", "c": "dropped in evaluation", "d": "submitted"}
