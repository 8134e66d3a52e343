"""A run's health: `status` (ok / degraded / failed) and `status_reasons`, from its rounds, summary and model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from fedrad.run.simulate import MethodRun, build_sites
from fedrad.run.summary import exit_code, health, worst
from fedrad.strategies.base import GLOBAL, ServerState
from fedrad.types import FailureKind, SiteFailure

LEARNT = {"balanced_accuracy": 0.8, "predicted_classes": 2, "true_classes": 2}
COLLAPSED = {"balanced_accuracy": 0.5, "predicted_classes": 1, "true_classes": 2}


def _line(round: int, accepted=("s1", "s2"), failures=(), pooled=None) -> dict:
    failed = [dataclasses.asdict(f) for f in failures]
    asked = sorted({*accepted, *(f["site_id"] for f in failed if f["phase"] == "train")})
    return {"round": round, "asked": asked, "failures": failed, "train": {s: {} for s in accepted},
            "pooled": LEARNT if pooled is None else pooled}


def _summary(pooled=None, **extra) -> dict:
    return {"metric": "balanced_accuracy", "pooled": LEARNT if pooled is None else pooled, "interrupted": False,
            **extra}


def test_a_run_with_every_update_accepted_and_a_learnt_model_is_ok():
    assert health([_line(0), _line(1)], _summary()) == ("ok", [])


def test_repeated_failures_of_one_kind_are_one_line_naming_the_site_the_rounds_and_the_kind():
    error = SiteFailure("s2", "site s2: RuntimeError: disk full", FailureKind.ERROR)
    timeout = SiteFailure("s1", "site s1: no reply within 5 s", FailureKind.TIMEOUT, "evaluate")
    lines = [_line(r, ("s1",), [error]) for r in (0, 1, 2, 5)] + [_line(6, ("s1",), [timeout])]
    status, reasons = health(lines, _summary())
    assert status == "degraded"
    assert "site s2: error in training, rounds 0-2, 5: RuntimeError: disk full" in reasons
    assert "site s1: timeout in evaluation, round 6: no reply within 5 s" in reasons
    assert "site s2: no update accepted in 4 round(s) asked (error 4)" in reasons


def test_a_site_whose_every_update_was_rejected_gets_a_line_of_its_own():
    rejected = SiteFailure("s2", "site s2: update rejected: tensor 'w': 3 non-finite values", FailureKind.REJECTED)
    status, reasons = health([_line(r, ("s1",), [rejected]) for r in range(3)], _summary())
    assert status == "degraded" and reasons[0] == "site s2: every update rejected (3 of 3 round(s) asked)"


def test_no_accepted_update_no_pooled_metric_or_a_non_finite_model_fail_the_run():
    rejected = [SiteFailure(s, f"site {s}: update rejected", FailureKind.REJECTED) for s in ("s1", "s2")]
    status, reasons = health([_line(0, (), rejected)], _summary())
    assert status == "failed" and reasons[0] == "no update was accepted in 1 round(s)"

    evaluation = SiteFailure("s1", "site s1: evaluation rejected: the reply carries no metrics", FailureKind.REJECTED,
                             "evaluate")
    status, reasons = health([_line(0, failures=[evaluation], pooled={})], _summary(pooled={}))
    assert status == "failed" and reasons[0] == "no pooled balanced_accuracy: 1 evaluation failure(s)"
    assert health([], _summary(pooled={}))[1][:2] == ["no round completed", "no pooled balanced_accuracy: "
                                                      "the method was never evaluated"]

    nan = ServerState(models={GLOBAL: {"w": np.array([1.0, np.nan, np.inf], np.float32)}})
    status, reasons = health([_line(0)], _summary(), nan)
    assert status == "failed" and reasons == ["the final model diverged: 2 non-finite value(s) in its weights"]


def test_a_model_that_learnt_and_then_collapsed_to_one_class_failed():
    status, reasons = health([_line(0), _line(1, pooled=COLLAPSED)], _summary(COLLAPSED))
    assert status == "failed"
    assert reasons == ["the model collapsed (diverged): every pooled prediction is one class (the test set has 2); "
                       "pooled balanced_accuracy 0.500, earlier 0.800"]


def test_a_model_that_never_learnt_to_separate_is_degraded_not_failed():
    # the tiny job's early models predict one class, or hover around chance: not a divergence
    chance = {**LEARNT, "balanced_accuracy": 0.52}
    status, reasons = health([_line(0, pooled=chance), _line(1, pooled=COLLAPSED)], _summary(COLLAPSED))
    assert status == "degraded"
    assert reasons == [
        "the model has not learnt to separate: every pooled prediction is one class (the test set has 2)"
    ]


def test_a_segmentation_model_that_predicts_no_lesion_on_a_test_set_with_lesions_has_collapsed():
    learnt = {"dice": 0.4, "predicted_foreground": 120, "true_foreground": 100}
    background = {"dice": 0.0, "predicted_foreground": 0, "true_foreground": 100}
    summary = _summary(background) | {"metric": "dice"}
    status, reasons = health([_line(0, pooled=learnt), _line(1, pooled=background)], summary)
    assert status == "failed" and "no lesion predicted anywhere on a test set with lesions" in reasons[0]
    no_lesions = {"dice": 1.0, "predicted_foreground": 0, "true_foreground": 0}  # nothing to find: a perfect score
    assert health([_line(0, pooled=no_lesions)], _summary(no_lesions) | {"metric": "dice"}) == ("ok", [])


def test_one_of_several_per_site_models_collapsing_degrades_the_run():
    cross = {"s1": {"pooled": LEARNT, "sites": {}}, "s2": {"pooled": COLLAPSED, "sites": {}}}
    mean = {"balanced_accuracy": 0.65, "predicted_classes": 1.5, "true_classes": 2}
    status, reasons = health([_line(0), _line(1, pooled=mean)], _summary(mean, cross_site=cross))
    assert status == "degraded" and reasons == [
        "model s2 has not learnt to separate: every pooled prediction is one class (the test set has 2)"
    ]


def test_an_interrupted_run_is_degraded_and_a_missed_quorum_failed():
    assert health([_line(0)], _summary(interrupted=True)) == ("degraded", ["interrupted after 1 round(s)"])
    status, reasons = health([_line(0)], _summary(), quorum="round 1: 0 of 2 sites replied, the quorum is 1")
    assert status == "failed" and reasons == ["quorum not met: round 1: 0 of 2 sites replied, the quorum is 1"]


def test_exit_codes_are_0_ok_3_degraded_when_strict_and_4_failed():
    assert [exit_code(s) for s in ("ok", "degraded", "failed")] == [0, 0, 4]
    assert [exit_code(s, strict=True) for s in ("ok", "degraded", "failed")] == [0, 3, 4]
    assert worst(["ok", "failed", "degraded"]) == "failed" and worst([]) == "ok"


# whole runs on the tiny federation ------------------------------------------------------------------


def _poisoned(config, sites=("s2",)):
    """The federation with NaN training images at `sites`: every update they send is non-finite."""
    out = []
    for data in build_sites(config):
        if data.site_id in sites:
            train = dataclasses.replace(data.train, inputs=np.full_like(data.train.inputs, np.nan))
            data = dataclasses.replace(data, train=train)
        out.append(data)
    return out


def test_a_run_in_which_every_update_of_one_site_is_rejected_is_degraded_naming_the_site(tiny_config, tmp_path):
    summary = MethodRun(tiny_config, "fedavg", tmp_path, _poisoned(tiny_config)).run()
    assert summary["status"] == "degraded"
    assert "site s2: every update rejected (2 of 2 round(s) asked)" in summary["status_reasons"]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "degraded"


def test_a_run_in_which_no_update_is_ever_accepted_failed(tiny_config, tmp_path):
    summary = MethodRun(tiny_config, "fedavg", tmp_path, _poisoned(tiny_config, ("s1", "s2", "s3"))).run()
    assert summary["status"] == "failed" and summary["status_reasons"][0] == "no update was accepted in 2 round(s)"


def test_a_nan_update_that_passed_validation_never_reaches_the_model(tiny_config, tmp_path, monkeypatch):
    # with update validation off, one site's NaN update makes the aggregate NaN: the round keeps its model
    from fedrad.server.validation import Verdict

    monkeypatch.setattr("fedrad.server.validation.UpdateValidator.judge", lambda *args, **kwargs: Verdict(None, 1.0))
    summary = MethodRun(tiny_config, "fedavg", tmp_path, _poisoned(tiny_config)).run()
    assert summary["status"] == "degraded"
    assert not any(r.startswith("the final model diverged:") for r in summary["status_reasons"])
    kept = [r for r in summary["status_reasons"] if r.endswith("the round kept the previous model")]
    assert [r.split(":")[0] for r in kept] == ["round 0", "round 1"] and "the aggregate was not finite" in kept[0]


@pytest.mark.parametrize("method", ["cds", "local"])
def test_the_simulation_only_baselines_get_a_status_too(tiny_config, tmp_path, method):
    summary = MethodRun(tiny_config, method, tmp_path, build_sites(tiny_config)).run()
    assert summary["status"] in ("ok", "degraded")  # the tiny job's models may not have learnt yet
    assert not any("update" in reason or "diverged" in reason for reason in summary["status_reasons"])


def test_a_method_whose_every_evaluation_fails_has_no_pooled_metric_and_failed(tiny_config, tmp_path, monkeypatch):
    def cannot_predict(self, model, inputs):
        raise AttributeError("'Task' object has no attribute 'predict'")  # as the ensemble on a task without it

    monkeypatch.setattr("fedrad.tasks.classification.ClassificationTask.predict", cannot_predict)
    summary = MethodRun(tiny_config, "ensemble", tmp_path, build_sites(tiny_config)).run()
    assert summary["pooled"] == {} and summary["failures"] == 3 * tiny_config.train.rounds
    assert summary["status"] == "failed"
    assert summary["status_reasons"][0] == "no pooled balanced_accuracy: 6 evaluation failure(s)"
    assert "site s1: error in evaluation, rounds 0-1: AttributeError: 'Task' object has no attribute 'predict'" in (
        summary["status_reasons"])
