from __future__ import annotations

import pytest

from fedrad.transport import wire
from fedrad.types import FitConfig, Instruction, InstructionKind


@pytest.mark.parametrize("patience", [None, 0, 3])
def test_patience_round_trips_including_unset(patience):
    fit = FitConfig(epochs=20, patience=patience)
    instruction = Instruction(1, "a", InstructionKind.PREDICT, {}, fit=fit, job_hash="h")
    _, back = wire.read_instruction(iter(list(wire.instruction_messages(instruction, task_id="t"))))
    assert back == instruction and back.fit.patience == patience
