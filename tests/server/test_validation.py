"""Update validation: each malformed update is rejected with a reason naming the site and the tensor."""

from __future__ import annotations

import numpy as np
import pytest

from fedrad.codec import decode, encode
from fedrad.run.simulate import build_sites, build_strategy, build_task, initial_weights
from fedrad.server.ledger import Ledger
from fedrad.server.orchestrator import Orchestrator, RoundRecord, RunContext
from fedrad.server.validation import UpdateValidator
from fedrad.site.handler import Site
from fedrad.transport import InProcessTransport
from fedrad.types import DataKind, Instruction, Reply

SENT = {"w": np.ones((2, 3), np.float32), "n": np.array(4, np.int64)}


def test_a_sane_update_passes_and_a_scalar_must_stay_a_scalar() -> None:
    received = {"w": np.full((2, 3), 1.5, np.float32), "n": np.array(5, np.int64)}
    assert UpdateValidator(max_update_norm=10).check("a", received, SENT, 10) is None
    reshaped = UpdateValidator().check("a", {**received, "n": np.array([5], np.int64)}, SENT, 10)
    assert reshaped == "site a: update rejected: tensor 'n': shape (1,), expected ()"


@pytest.mark.parametrize(
    ("received", "num_examples", "expected"),
    [
        ({"w": np.full((2, 3), np.nan, np.float32), "n": SENT["n"]}, 10, "tensor 'w': 6 non-finite values"),
        ({"w": np.ones((3, 2), np.float32), "n": SENT["n"]}, 10, "tensor 'w': shape (3, 2), expected (2, 3)"),
        ({"w": np.ones((2, 3), np.float64), "n": SENT["n"]}, 10, "tensor 'w': dtype float64, expected float32"),
        ({"w": SENT["w"]}, 10, "missing ['n']"),
        ({**SENT, "evil": np.ones(1)}, 10, "unexpected ['evil']"),
        (SENT, 0, "num_examples 0 outside"),
        ({"w": np.full((2, 3), 100.0, np.float32), "n": SENT["n"]}, 10, "exceeds the bound 10"),
    ],
)
def test_each_bad_update_is_rejected_with_its_reason(received, num_examples: int, expected: str) -> None:
    reason = UpdateValidator(max_update_norm=10).check("hosp-b", received, SENT, num_examples)
    assert reason is not None and reason.startswith("site hosp-b: update rejected:") and expected in reason


def test_bad_bounds_are_refused_in_the_constructor() -> None:
    with pytest.raises(ValueError, match="max_update_norm"):
        UpdateValidator(max_update_norm=0)


class Malicious:
    """A site that trains honestly, then poisons its reply (NaN everywhere, or one tensor reshaped)."""

    def __init__(self, site: Site, attack: str):
        self.site, self.attack = site, attack

    def handle(self, instruction: Instruction) -> Reply:
        reply = self.site.handle(instruction)
        if DataKind.WEIGHTS not in reply.payload:
            return reply  # evaluation stays honest
        weights = decode(reply.payload[DataKind.WEIGHTS])
        name = next(n for n, a in weights.items() if a.ndim == 4)  # a conv kernel
        if self.attack == "nan":
            weights = {n: np.full_like(a, np.nan) if a.dtype.kind == "f" else a for n, a in weights.items()}
        else:
            weights[name] = weights[name].reshape(weights[name].shape[0], -1)
        return Reply(reply.round, reply.site_id, reply.kind, {DataKind.WEIGHTS: encode(weights)},
                     reply.num_examples, reply.metrics)


@pytest.mark.parametrize(("attack", "reason"), [("nan", "non-finite values"), ("shape", "shape")])
def test_a_poisoned_update_is_rejected_and_the_round_completes(tiny_config, attack: str, reason: str) -> None:
    task, job_hash = build_task(tiny_config), tiny_config.job_hash()
    sites = {d.site_id: Site(d, task, job_hash) for d in build_sites(tiny_config)}
    sites["s3"] = Malicious(sites["s3"], attack)
    records: list[RoundRecord] = []
    strategy = build_strategy(tiny_config, "fedavg")
    ctx = RunContext(InProcessTransport(sites), Ledger(), task, job_hash, tiny_config.seed)
    names = list(sites)
    orchestrator = Orchestrator(strategy, ctx, names, names, 2, on_round=lambda r, _: records.append(r))
    state = orchestrator.run(strategy.initial_state(initial_weights(task, tiny_config.seed), names))

    assert len(records) == 2
    for record in records:
        assert [f.site_id for f in record.failures] == ["s3"]
        assert reason in record.failures[0].reason and "s3: update rejected" in record.failures[0].reason
        assert set(record.train_metrics) == {"s1", "s2"}  # the others were aggregated
    assert all(np.isfinite(a).all() for a in state.models["global"].values() if a.dtype.kind == "f")
