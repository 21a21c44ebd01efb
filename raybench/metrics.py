"""Regression and classification metrics (numpy, exact), each beside its naive baseline."""

from __future__ import annotations

import numpy as np


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    err = pred - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float((err**2).sum())
    return {
        "mse": float((err**2).mean()),
        "mae": float(np.abs(err).mean()),
        # R^2 is undefined for a constant target; report 0 (no better than the mean) there.
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0,
    }


# What each rank sums over its shard of a regression split, for its model and its baseline:
# the metrics follow exactly from these totals, with no rank holding the whole split.
REGRESSION_SUMS = ("n", "sq_err", "abs_err", "y", "y_sq", "base_sq_err", "base_abs_err")


def regression_sums(pred: np.ndarray, y: np.ndarray, base: np.ndarray) -> np.ndarray:
    pred, y, base = (np.asarray(a, np.float64) for a in (pred, y, base))
    err, berr = pred - y, base - y
    return np.array([len(y), (err**2).sum(), np.abs(err).sum(), y.sum(), (y**2).sum(),
                     (berr**2).sum(), np.abs(berr).sum()])


def regression_from_sums(sums: np.ndarray) -> dict:
    """The regression metrics of a whole split from the totals of REGRESSION_SUMS (equal to
    regression_metrics on the concatenated split up to the order of the additions)."""
    n, sq, ab, sy, syy, bsq, bab = (float(x) for x in sums)
    ss_tot = syy - sy * sy / n if n else 0.0

    def of(sq_err: float, abs_err: float) -> dict[str, float]:
        return {"mse": sq_err / n, "mae": abs_err / n,
                "r2": 1.0 - sq_err / ss_tot if ss_tot > 0 else 0.0}

    metrics = of(sq, ab)
    metrics["loss"] = sq / n  # MSE is the regression loss
    metrics["baseline_persistence"] = of(bsq, bab)
    return metrics


def roc_auc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic, ties counted as half."""
    score, y = np.asarray(score, np.float64), np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5  # one class only: no ranking to judge
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(len(score), dtype=np.float64)
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def confusion_matrix(pred_label: np.ndarray, y: np.ndarray) -> list[list[int]]:
    """[[TN, FP], [FN, TP]] (rows: true class, columns: predicted class)."""
    y = np.asarray(y).astype(int)
    p = np.asarray(pred_label).astype(int)
    return [[int(((y == t) & (p == q)).sum()) for q in (0, 1)] for t in (0, 1)]


def classification_metrics(prob: np.ndarray, y: np.ndarray,
                           threshold: float = 0.5) -> dict[str, float]:
    prob = np.asarray(prob, np.float64)
    y = np.asarray(y).astype(int)
    label = (prob >= threshold).astype(int)
    (tn, fp), (fn, tp) = confusion_matrix(label, y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": float((tp + tn) / len(y)),
        "auc": roc_auc(prob, y),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }


def evaluate_split(task: str, output: np.ndarray, y: np.ndarray, baseline: np.ndarray,
                   loss: float, threshold: float = 0.5) -> dict:
    """Metrics of the model's raw outputs (values or logits) and of the naive baseline."""
    if task == "regression":
        metrics = regression_metrics(output, y)
        metrics["loss"] = loss
        metrics["baseline_persistence"] = regression_metrics(baseline, y)
        return metrics
    prob = 0.5 * (1.0 + np.tanh(np.asarray(output, np.float64) / 2))  # sigmoid, no overflow
    metrics = classification_metrics(prob, y, threshold)
    metrics["loss"] = loss
    metrics["confusion_matrix"] = confusion_matrix(prob >= threshold, y)
    metrics["baseline_majority"] = classification_metrics(baseline, y, threshold)
    return metrics
