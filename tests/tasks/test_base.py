from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrad.tasks import ClassificationTask, Task
from fedrad.tasks.segmentation import SegmentationTask
from fedrad.tasks.tabular import TabularTask


@pytest.mark.parametrize(
    ("task", "kind", "metric"),
    [
        (ClassificationTask(channels=(4,)), "classification", "balanced_accuracy"),
        (SegmentationTask(), "segmentation", "dice"),
        (TabularTask(num_features=4), "tabular", "balanced_accuracy"),
    ],
)
def test_every_task_declares_its_kind_and_primary_metric_and_satisfies_the_task_contract(task, kind, metric):
    assert isinstance(task, Task) and task.kind == kind and task.primary_metric == metric


def test_a_tabular_tasks_evaluation_is_the_statistics_of_its_predictions():
    torch.manual_seed(0)
    task = TabularTask(num_features=4, num_classes=3, hidden=(8,))
    model = task.build_model()
    inputs = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    targets = np.arange(12) % 3
    probs = task.predict(model, inputs)
    assert probs.shape == (12, 3) and probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    evaluated, scored = task.evaluate(model, inputs, targets), task.stats(probs, targets)
    assert all(np.array_equal(evaluated[k], scored[k]) for k in scored)
    assert task.metrics(scored)["num_test"] == 12
