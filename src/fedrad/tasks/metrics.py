"""Classification metrics from summable statistics, so per-site numbers pool exactly.

A site never sends per-patient predictions for evaluation: it sends a confusion matrix and, per
true class, a histogram of the predicted probability of each class. Sums of these over sites give
the pooled test set's accuracy and balanced accuracy exactly, and its ROC AUC to within the
histogram's resolution (pairs that fall in one bin count as ties: |error| <= their share).
"""

from __future__ import annotations

import numpy as np

AUC_BINS = 1000


def classification_stats(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Summable statistics of one evaluation: confusion (C, C) and score histograms (C, C, AUC_BINS)."""
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    scaled = np.nan_to_num(probs * AUC_BINS, nan=0.0, posinf=AUC_BINS - 1, neginf=0.0)  # a diverged model's NaN
    bins = np.clip(scaled.astype(np.int64), 0, AUC_BINS - 1)
    hist = np.zeros((num_classes, num_classes, AUC_BINS), dtype=np.int64)
    for c in range(num_classes):  # hist[true, scored class, bin]
        np.add.at(hist[:, c], (labels, bins[:, c]), 1)
    return {"confusion": confusion, "hist": hist}


def empty_classification_stats(num_classes: int) -> dict[str, np.ndarray]:
    """The statistics of no examples: the keys, shapes and dtypes every site's evaluation reply must have."""
    return classification_stats(np.zeros((0, num_classes), np.float32), np.zeros(0, np.int64), num_classes)


def sum_stats(stats: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.sum([s[key] for s in stats], axis=0) for key in stats[0]}


def _auc_from_hist(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC from two score histograms over the same bins; ties count one half."""
    pos, neg = pos.astype(np.float64), neg.astype(np.float64)  # products of int64 counts could overflow
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


def classification_metrics(stats: dict[str, np.ndarray]) -> dict[str, float]:
    """accuracy, balanced accuracy (mean recall over present classes) and ROC AUC (macro one-vs-rest).

    Also how many classes the model predicted at least once and how many the labels hold: a model
    whose every prediction is one class on a test set of several has collapsed (run health).
    """
    confusion, hist = stats["confusion"], stats["hist"]
    total = confusion.sum()
    support = confusion.sum(axis=1)
    present = support > 0
    recall = np.diag(confusion)[present] / support[present]
    num_classes = len(confusion)
    scored = [1] if num_classes == 2 else range(num_classes)
    aucs = [_auc_from_hist(hist[c, c], hist[:, c].sum(axis=0) - hist[c, c]) for c in scored]
    aucs = [a for a in aucs if not np.isnan(a)]
    return {
        "accuracy": float(np.trace(confusion) / total) if total else float("nan"),
        "balanced_accuracy": float(recall.mean()) if present.any() else float("nan"),
        "auc": float(np.mean(aucs)) if aucs else float("nan"),
        "num_test": int(total),
        "predicted_classes": int((confusion.sum(axis=0) > 0).sum()),
        "true_classes": int(present.sum()),
    }
