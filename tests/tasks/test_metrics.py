from __future__ import annotations

import numpy as np

from fedrad.tasks.metrics import classification_metrics, classification_stats, empty_classification_stats, sum_stats


def _probs(p1):
    p1 = np.asarray(p1, dtype=np.float64)
    return np.stack([1 - p1, p1], axis=1)


def test_hand_worked_binary_metrics():
    # labels 0,0,0,1 ; scores 0.1, 0.6, 0.3, 0.8 -> predictions 0,1,0,1
    stats = classification_stats(_probs([0.1, 0.6, 0.3, 0.8]), np.array([0, 0, 0, 1]), 2)
    m = classification_metrics(stats)
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == (2 / 3 + 1) / 2
    assert m["auc"] == 1.0  # the one positive outranks every negative


def test_auc_counts_misordered_pairs():
    # positives 0.2, 0.9 ; negatives 0.5, 0.1 -> 3 of 4 pairs ordered right
    stats = classification_stats(_probs([0.2, 0.9, 0.5, 0.1]), np.array([1, 1, 0, 0]), 2)
    assert classification_metrics(stats)["auc"] == 0.75


def test_pooled_metrics_from_summed_stats_equal_metrics_on_the_union():
    rng = np.random.default_rng(0)
    p, y = rng.uniform(size=200), rng.integers(0, 2, 200)
    parts = [classification_stats(_probs(p[i : i + 50]), y[i : i + 50], 2) for i in range(0, 200, 50)]
    whole = classification_metrics(classification_stats(_probs(p), y, 2))
    assert classification_metrics(sum_stats(parts)) == whole


def test_the_metrics_count_the_classes_predicted_and_present_so_a_collapse_shows():
    labels = np.array([0, 0, 1, 1, 2])
    always_first = np.tile([0.6, 0.3, 0.1], (5, 1))
    collapsed = classification_metrics(classification_stats(always_first, labels, 3))
    assert collapsed["predicted_classes"] == 1 and collapsed["true_classes"] == 3
    learnt = classification_metrics(classification_stats(_probs([0.2, 0.9, 0.4]), np.array([0, 1, 1]), 2))
    assert learnt["predicted_classes"] == 2 and learnt["true_classes"] == 2


def test_empty_statistics_have_every_key_and_shape_and_add_nothing():
    labels = np.array([0, 1, 1])
    stats = classification_stats(_probs([0.2, 0.9, 0.4]), labels, 2)
    empty = empty_classification_stats(2)
    assert {k: v.shape for k, v in empty.items()} == {k: v.shape for k, v in stats.items()}
    assert classification_metrics(sum_stats([empty, stats])) == classification_metrics(stats)
