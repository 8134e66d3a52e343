from __future__ import annotations

import numpy as np
import torch

from fedrad.data.base import Split
from fedrad.run.simulate import build_sites, build_task
from fedrad.site.training import train_epochs
from fedrad.types import FitConfig


def test_patience_stops_on_a_validation_plateau_and_keeps_the_best_epoch(tiny_config):
    data = build_sites(tiny_config)[0]
    task = build_task(tiny_config, [data])
    torch.manual_seed(0)
    model = task.build_model()
    # A validation split of the other class only: its loss stops improving quickly.
    val = Split(data.val.inputs, np.zeros(len(data.val), np.int64))
    fit = FitConfig(epochs=30, batch_size=8, lr=0.05, patience=2)
    outcome = train_epochs(task, model, data.train, fit, seed=1, val=val)
    assert outcome.epochs < 30 and np.isfinite(outcome.val_loss)


def test_without_patience_every_epoch_runs(tiny_config):
    data = build_sites(tiny_config)[0]
    task = build_task(tiny_config, [data])
    fit = FitConfig(epochs=3, batch_size=8)
    outcome = train_epochs(task, task.build_model(), data.train, fit, seed=1, val=data.val)
    assert outcome.epochs == 3 and np.isnan(outcome.val_loss)
