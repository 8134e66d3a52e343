from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedrad.codec import encode
from fedrad.run.simulate import MethodRun, build_sites, build_task, initial_weights
from fedrad.site.handler import Site


def _model(folder):
    # compare tensors, not file bytes: safetensors writes its metadata map in hash order
    return load_file(str(folder / "model.safetensors"))


def _run(config, method, out, sites=None):
    return MethodRun(config, method, out, sites or build_sites(config)).run()


def test_two_runs_with_the_same_seed_give_identical_metrics(tiny_config, tmp_path):
    first = _run(tiny_config, "fedavg", tmp_path / "a")
    second = _run(tiny_config, "fedavg", tmp_path / "b")
    assert first["pooled"] == second["pooled"] and first["sites"] == second["sites"]
    a, b = _model(tmp_path / "a"), _model(tmp_path / "b")
    assert all(np.array_equal(a[name], b[name]) for name in a)
    other = _run(tiny_config.model_copy(update={"seed": 4}), "fedavg", tmp_path / "c")
    c = _model(tmp_path / "c")
    assert other["rounds"] == first["rounds"]
    assert not all(np.array_equal(a[name], c[name]) for name in a)


def test_ledger_weight_bytes_are_model_size_times_transfers(tiny_config, tmp_path):
    summary = _run(tiny_config, "fedavg", tmp_path)
    model_bytes = len(encode(initial_weights(build_task(tiny_config), tiny_config.seed)))
    sites, rounds = 3, tiny_config.train.rounds
    # each round: the model goes to and comes back from 3 sites (train), and goes to 3 sites (evaluate)
    assert summary["ledger"]["by_kind"]["weights"] == model_bytes * rounds * sites * 3
    assert summary["ledger"]["by_kind"]["raw_data"] == 0
    s1 = summary["ledger"]["by_site"]["s1"]
    assert s1["by_kind"]["weights"] == model_bytes * rounds * 3


def test_cds_books_each_hospitals_raw_data_and_no_weights(tiny_config, tmp_path):
    sites = build_sites(tiny_config)
    summary = _run(tiny_config, "cds", tmp_path, sites)
    ledger = summary["ledger"]
    assert ledger["by_kind"]["weights"] == 0
    for site in sites:
        assert ledger["by_site"][site.site_id]["sent"] == site.train.nbytes + site.val.nbytes
    assert ledger["total_bytes"] == sum(s.train.nbytes + s.val.nbytes for s in sites)


def test_local_only_reports_each_site_model_on_its_own_test_set(tiny_config, tmp_path):
    summary = _run(tiny_config, "local", tmp_path)
    assert set(summary["sites"]) == {"s1", "s2", "s3"}
    assert summary["ledger"]["total_bytes"] == 0
    assert 0.0 <= summary["pooled"]["balanced_accuracy"] <= 1.0


def test_a_site_that_raises_is_a_failure_and_the_round_completes(tiny_config, tmp_path, monkeypatch):
    def broken(self, instruction):
        raise RuntimeError("disk full at s2")

    original = Site._fit
    def fit(self, instruction):
        return broken(self, instruction) if self.site_id == "s2" else original(self, instruction)

    monkeypatch.setattr(Site, "_fit", fit)
    summary = _run(tiny_config, "fedavg", tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == tiny_config.train.rounds == summary["rounds"]
    for line in lines:
        assert line["failures"] == [
            {"site_id": "s2", "reason": "RuntimeError: disk full at s2", "kind": "error", "phase": "train"}
        ]
        assert set(line["train"]) == {"s1", "s3"}
        assert set(line["sites"]) == {"s1", "s2", "s3"}  # s2 still evaluates the global model
    assert summary["failures"] == tiny_config.train.rounds


def test_an_instruction_for_another_job_is_refused(tiny_config):
    from fedrad.site.handler import SiteError
    from fedrad.types import DataKind, Instruction, InstructionKind

    data = build_sites(tiny_config)[0]
    site = Site(data, build_task(tiny_config), job_hash="approved")
    blob = encode(initial_weights(build_task(tiny_config), 0))
    with pytest.raises(SiteError, match="refused"):
        site.handle(Instruction(0, data.site_id, InstructionKind.FIT, {DataKind.WEIGHTS: blob}, job_hash="other"))


def test_ctrl_c_keeps_the_completed_rounds_on_disk(tiny_config, tmp_path):
    config = tiny_config.model_copy(update={"train": tiny_config.train.model_copy(update={"rounds": 4})})

    def interrupt_after_second_round(record):
        if record.round == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        MethodRun(config, "fedavg", tmp_path, build_sites(config), interrupt_after_second_round).run()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["rounds"] == 2
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert load_file(str(tmp_path / "model.safetensors"))  # the round-2 model is readable


class _ControlSite:
    """Returns the weights it was sent plus 1 and a control-variate delta (NaN when `poisoned`)."""

    def __init__(self, site_id: str, poisoned: bool = False):
        self.site_id, self.poisoned = site_id, poisoned

    def handle(self, instruction):
        from fedrad.codec import decode
        from fedrad.types import DataKind, Reply

        weights = {n: a + 1 for n, a in decode(instruction.payload[DataKind.WEIGHTS]).items()}
        delta = {n: np.full_like(a, np.nan if self.poisoned else 0.5) for n, a in weights.items()}
        payload = {DataKind.WEIGHTS: encode(weights), DataKind.CONTROL: encode(delta)}
        return Reply(instruction.round, self.site_id, instruction.kind, payload, num_examples=4)


def test_scaffold_control_variates_are_validated_like_weights():
    from fedrad.server.ledger import Ledger
    from fedrad.server.orchestrator import Orchestrator, RunContext
    from fedrad.strategies.scaffold import Scaffold
    from fedrad.transport.inprocess import InProcessTransport

    sites = {"a": _ControlSite("a"), "b": _ControlSite("b", poisoned=True)}
    strategy = Scaffold()
    seen = []
    orchestrator = Orchestrator(strategy, RunContext(InProcessTransport(sites), Ledger(), None), list(sites), [],
                                rounds=1, eval_every=100, on_round=lambda record, state: seen.append((record, state)))
    orchestrator.round(0, strategy.initial_state({"w": np.zeros(3, np.float32)}, list(sites)))
    record, state = seen[0]
    assert [(f.site_id, f.reason) for f in record.failures] == [
        ("b", "site b: update rejected: control variates: tensor 'w': 3 non-finite values")
    ]
    np.testing.assert_array_equal(state.models["global"]["w"], np.ones(3, np.float32))  # a's update alone
    assert np.isfinite(state.extra["c/w"]).all()  # the server variate was not poisoned
