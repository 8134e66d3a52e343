from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from fedrad.cli import app
from fedrad.tasks.metrics import sum_stats
from fedrad.tasks.segmentation import SegmentationTask, dice_metrics, dice_stats, empty_dice_stats


def _masks(*rows: str) -> np.ndarray:
    """'1100' rows -> one (1, 1, R, C) mask."""
    return np.array([[list(map(int, r)) for r in rows]], dtype=np.float32)[:, None]


def test_pooled_dice_from_site_sums_equals_dice_on_the_union():
    # Prepare: site A's one image, pred 2 px, true 1 px, overlap 1; site B's two images:
    # pred 3 px / true 3 px / overlap 2, and an empty image the model left empty.
    pred_a, true_a = _masks("1100"), _masks("1000")
    pred_b = np.concatenate([_masks("1110"), _masks("0000")])
    true_b = np.concatenate([_masks("0111"), _masks("0000")])

    # Execute
    pooled = dice_metrics(sum_stats([dice_stats(pred_a, true_a), dice_stats(pred_b, true_b)]))
    union = dice_metrics(dice_stats(np.concatenate([pred_a, pred_b]), np.concatenate([true_a, true_b])))

    # Assert: 2 * (1 + 2) / ((2 + 3) + (1 + 3)) = 6 / 9, by hand; per image 2/3, 2/3 and 1 (empty-empty).
    assert pooled == union
    assert pooled["dice"] == pytest.approx(6 / 9)
    assert pooled["mean_dice"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert pooled["num_test"] == 3
    # The mean of the sites' Dice (2/3 and 4/6) would be another number in general: here both 2/3.
    assert dice_metrics(dice_stats(pred_a, true_a))["dice"] == pytest.approx(2 / 3)


def test_unet_keeps_the_image_size_and_dice_loss_is_differentiable():
    task = SegmentationTask(channels=(4, 8))
    torch.manual_seed(0)
    model = task.build_model()
    x, y = torch.randn(2, 1, 16, 16), torch.zeros(2, 1, 16, 16)
    y[:, :, 4:8, 4:8] = 1

    loss = task.loss(model, x, y)
    loss.backward()

    assert model(x).shape == (2, 1, 16, 16)
    assert float(loss.detach()) > 0 and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    stats = task.evaluate(model, x.numpy(), y.numpy())
    assert int(stats["true_sum"].sum()) == 32 and int(stats["num_images"].sum()) == 2


@pytest.mark.slow
def test_phantom_seg_small_run_reports_dice(tmp_path):
    job = {
        "name": "tiny-seg",
        "seed": 1,
        "data": {
            "source": "phantom_seg",
            "image_size": 32,
            "hospitals": [
                {"site_id": "s1", "num_patients": 30, "prevalence": 0.6},
                {"site_id": "s2", "num_patients": 20, "prevalence": 0.5, "scanner": {"gain": 0.7}},
            ],
        },
        "task": {"channels": [4, 8]},
        "train": {"rounds": 2, "batch_size": 8, "lr": 0.05},
    }
    config = tmp_path / "seg.yaml"
    config.write_text(yaml.safe_dump(job))
    out = tmp_path / "cmp"

    result = CliRunner().invoke(app, ["compare", str(config), "--methods", "fedavg,cds,ensemble", "--out", str(out)])

    assert result.exit_code == 0, result.output
    summaries = json.loads((out / "comparison.json").read_text())
    for s in summaries:
        assert s["metric"] == "dice" and 0.0 <= s["pooled"]["dice"] <= 1.0
        assert set(s["sites"]["s1"]) >= {"dice", "mean_dice", "num_test", "num_train"}
    report = (out / "report.md").read_text()
    assert "pooled dice" in report and "Per-site dice" in report
    assert f"{summaries[0]['pooled']['dice']:.3f}" in report


def test_an_ensemble_segments_by_mean_probability_or_majority_vote():
    from fedrad.strategies.aggregate import majority_vote, mean_probabilities
    from fedrad.tasks.segmentation import SegmentationTask

    truth = np.zeros((1, 1, 2, 2), np.float32)
    truth[0, 0, 0, :] = 1  # the top row is lesion
    members = [np.array([[[[0.9, 0.6], [0.1, 0.2]]]], np.float32),
               np.array([[[[0.8, 0.2], [0.7, 0.1]]]], np.float32),
               np.array([[[[0.7, 0.3], [0.4, 0.1]]]], np.float32)]
    task = SegmentationTask()
    # mean: [[0.8, 0.367], [0.4, 0.133]] -> only the top-left pixel: Dice 2*1/(1+2)
    assert task.metrics(task.stats(mean_probabilities(members), truth))["dice"] == pytest.approx(2 / 3)
    # vote: top-left 3/3, top-right 1/3, bottom-left 1/3 -> the same single pixel
    votes = majority_vote(members)
    np.testing.assert_allclose(votes[0, 0], [[1.0, 1 / 3], [1 / 3, 0.0]])
    assert task.metrics(task.stats(votes, truth))["dice"] == pytest.approx(2 / 3)


def test_the_dice_metrics_count_predicted_and_true_lesion_pixels_and_zero_images_have_statistics():
    true = np.zeros((2, 1, 4, 4), np.float32)
    true[0, 0, :2, :2] = 1
    background = dice_metrics(dice_stats(np.zeros_like(true), true))  # the collapse: no lesion predicted
    assert background["predicted_foreground"] == 0 and background["true_foreground"] == 4
    assert dice_metrics(sum_stats([empty_dice_stats(), dice_stats(true, true)]))["dice"] == 1.0
