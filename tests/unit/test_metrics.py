import numpy as np
import pytest

from raybench import metrics


def test_regression_metrics_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.5, 2.0, 2.0, 4.0])
    m = metrics.regression_metrics(pred, y)
    # errors 0.5, 0, -1, 0 -> mse 1.25/4, mae 1.5/4; ss_tot = 5
    assert m["mse"] == pytest.approx(0.3125)
    assert m["mae"] == pytest.approx(0.375)
    assert m["r2"] == pytest.approx(1 - 1.25 / 5)


def test_auc_by_hand_with_ties():
    y = np.array([0, 0, 1, 1])
    assert metrics.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), y) == pytest.approx(0.75)
    # one positive tied with one negative counts half: pairs (p,n): 4 pairs, 3 won, 1 tie
    assert metrics.roc_auc(np.array([0.1, 0.5, 0.5, 0.9]), y) == pytest.approx(3.5 / 4)
    assert metrics.roc_auc(np.ones(4), y) == pytest.approx(0.5)
    assert metrics.roc_auc(np.array([0.2, 0.3]), np.array([1, 1])) == 0.5


def test_classification_metrics_by_hand():
    y = np.array([1, 1, 1, 0, 0])
    prob = np.array([0.9, 0.6, 0.2, 0.7, 0.1])
    m = metrics.classification_metrics(prob, y, threshold=0.5)
    # TP=2 FN=1 FP=1 TN=1
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert metrics.confusion_matrix(prob >= 0.5, y) == [[1, 1], [1, 2]]


def test_evaluate_split_carries_baselines():
    y = np.array([1.0, 0.0, 1.0])
    out = metrics.evaluate_split("classification", np.array([5.0, -5.0, 5.0]), y,
                                 np.ones(3), 0.1)
    assert out["accuracy"] == 1.0 and out["baseline_majority"]["accuracy"] == pytest.approx(2 / 3)
    reg = metrics.evaluate_split("regression", np.array([1.0, 2.0]), np.array([1.0, 2.0]),
                                 np.array([0.0, 0.0]), 0.0)
    assert reg["r2"] == 1.0 and reg["baseline_persistence"]["mse"] == pytest.approx(2.5)


def test_regression_metrics_from_per_rank_totals_equal_the_whole_split():
    """What each rank sums over its shard, added up, gives the metrics of the whole split:
    evaluation never gathers the split itself."""
    rng = np.random.default_rng(3)
    pred, y, base = rng.normal(size=(3, 1000))
    whole = metrics.evaluate_split("regression", pred, y, base, float(np.mean((pred - y) ** 2)))
    shards = [slice(0, 300), slice(300, 999), slice(999, 1000)]
    sums = sum(metrics.regression_sums(pred[s], y[s], base[s]) for s in shards)
    parts = metrics.regression_from_sums(sums)
    for key in ("mse", "mae", "r2", "loss"):
        assert parts[key] == pytest.approx(whole[key], rel=1e-12)
    for key in ("mse", "mae", "r2"):
        assert parts["baseline_persistence"][key] == pytest.approx(
            whole["baseline_persistence"][key], rel=1e-12)
