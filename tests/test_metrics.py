import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, precision_score, recall_score,
                             roc_auc_score)

from ratio_cnn.evaluate import binary_metrics


def test_known_values_by_hand():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    probs = np.array([0.9, 0.6, 0.2, 0.7, 0.4, 0.3, 0.1, 0.05])
    m = binary_metrics(labels, probs, threshold=0.5)
    assert m["confusion_matrix"] == {"tn": 4, "fp": 1, "fn": 1, "tp": 2}
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # pairs (pos, neg) ranked right: 0.9 beats 5, 0.6 beats 4, 0.2 beats 2 -> 11 of 15
    assert m["roc_auc"] == pytest.approx(11 / 15)
    assert m["threshold"] == 0.5


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_agrees_with_scikit_learn(threshold):
    rng = np.random.default_rng(0)
    labels = (rng.random(500) < 0.1).astype(int)
    probs = np.clip(rng.normal(0.3 + 0.3 * labels, 0.2), 0, 1)
    m = binary_metrics(labels, probs, threshold)
    predicted = (probs >= threshold).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert m["precision"] == pytest.approx(precision_score(labels, predicted, zero_division=0))
    assert m["recall"] == pytest.approx(recall_score(labels, predicted))
    assert m["f1"] == pytest.approx(f1_score(labels, predicted, zero_division=0))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert m["average_precision"] == pytest.approx(average_precision_score(labels, probs))


def test_no_predicted_positives_gives_zero_not_nan():
    m = binary_metrics(np.array([1, 0, 0]), np.array([0.1, 0.2, 0.3]), 0.5)
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)


def test_single_class_has_no_threshold_free_metrics():
    m = binary_metrics(np.array([0, 0, 0]), np.array([0.1, 0.7, 0.3]), 0.5)
    assert m["roc_auc"] is None and m["average_precision"] is None
    assert m["confusion_matrix"] == {"tn": 2, "fp": 1, "fn": 0, "tp": 0}
