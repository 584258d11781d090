"""The validity statistics of stats.py (subgroups, shortcuts, calibration) on constructed cases."""
import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, recall_score, roc_auc_score

from ratio_cnn import stats


def logit(probabilities):
    p = np.asarray(probabilities, dtype=float)
    return np.log(p / (1 - p))


def unit(labels):
    return np.ones((1, len(labels)))


def brute_force_within_auc(labels, probability, groups, w):
    """Every malignant–benign pair of one group, weighted by both images' weights; ties count half."""
    ordered = tied = pairs = 0.0
    for i in np.flatnonzero(labels == 1):
        for j in np.flatnonzero((labels == 0) & (groups == groups[i])):
            pair = w[i] * w[j]
            pairs += pair
            ordered += pair * (probability[i] > probability[j])
            tied += pair * (probability[i] == probability[j])
    return (ordered + tied / 2) / pairs, pairs


def shortcut_data(rng, per_group=400):
    """Three sources with malignant shares of 60%, 25% and 5%, the share each image's source carries."""
    shares = np.array([0.60, 0.25, 0.05])
    groups = np.repeat(np.array(["a", "b", "c"]), per_group)
    labels = (rng.random(groups.size) < np.repeat(shares, per_group)).astype(int)
    return labels, groups, np.repeat(shares, per_group)


# ---------------------------------------------------------------- within-group ranking

def test_within_group_auc_counts_same_group_pairs_with_ties_and_weights():
    rng = np.random.default_rng(3)
    labels = (rng.random(90) < 0.35).astype(int)
    groups = rng.choice(["x", "y", "z"], size=labels.size)
    logits = np.round(rng.normal(labels, 1.0, size=(2, labels.size)), 1)  # ties within and across classes
    weights = np.vstack([np.ones(labels.size), rng.integers(0, 4, size=(3, labels.size))])  # zeros included
    within = stats.within_group_ranking(labels, logits, groups, weights)
    assert within["roc_auc"].shape == (2, 4) and within["pairs"].shape == (4,)
    for b, w in enumerate(weights):
        for s, probability in enumerate(stats.sigmoid(logits)):
            auc, pairs = brute_force_within_auc(labels, probability, groups, w)
            assert within["roc_auc"][s, b] == pytest.approx(auc, abs=1e-12)
            assert within["pairs"][b] == pytest.approx(pairs)


def test_within_group_auc_is_the_pair_weighted_mean_of_subgroup_aucs_from_metric_matrix():
    rng = np.random.default_rng(4)
    labels = (rng.random(300) < 0.3).astype(int)
    groups = rng.integers(0, 3, labels.size)
    logits = rng.normal(labels + groups, 1.0, size=(3, labels.size))
    weights = stats.resample_weights(labels, 5, seed=1)
    per_group, pairs = [], []
    for g in range(3):
        m = groups == g
        # a subgroup's own metrics: metric_matrix on its images, as scikit-learn on the subset
        subgroup = stats.metric_matrix(labels[m], logits[:, m], weights[:, m], 0.5)
        for s, probability in enumerate(stats.sigmoid(logits[:, m])):
            for b, w in enumerate(weights[:, m]):
                assert subgroup["roc_auc"][s, b] == pytest.approx(
                    roc_auc_score(labels[m], probability, sample_weight=w), abs=1e-12)
                assert subgroup["average_precision"][s, b] == pytest.approx(
                    average_precision_score(labels[m], probability, sample_weight=w), abs=1e-12)
        per_group.append(subgroup["roc_auc"])
        pairs.append((labels[m] @ weights[:, m].T) * ((1 - labels[m]) @ weights[:, m].T))
    expected = sum(a * p for a, p in zip(per_group, pairs)) / sum(pairs)
    within = stats.within_group_ranking(labels, logits, groups, weights)["roc_auc"]
    np.testing.assert_allclose(within, expected, rtol=0, atol=1e-12)


def test_one_group_is_the_overall_roc_auc():
    rng = np.random.default_rng(5)
    labels = (rng.random(200) < 0.2).astype(int)
    logits = np.round(rng.normal(labels, 1.0, size=(2, labels.size)), 1)
    weights = stats.resample_weights(labels, 4, seed=2)
    within = stats.within_group_ranking(labels, logits, np.full(labels.size, "all"), weights)["roc_auc"]
    np.testing.assert_allclose(within, stats.metric_matrix(labels, logits, weights, 0.5)["roc_auc"], rtol=0, atol=1e-12)
    plain = stats.within_group_ranking(labels, logits, np.zeros(labels.size), unit(labels))["roc_auc"]
    np.testing.assert_allclose(plain[:, 0], [roc_auc_score(labels, p) for p in stats.sigmoid(logits)], atol=1e-12)


def test_integer_weights_act_as_repeated_images_within_groups():
    rng = np.random.default_rng(6)
    labels = (rng.random(80) < 0.4).astype(int)
    groups = rng.integers(0, 4, labels.size)
    logits = np.round(rng.normal(labels, 1.0, size=(2, labels.size)), 1)
    weights = rng.integers(0, 3, size=(3, labels.size))
    within = stats.within_group_ranking(labels, logits, groups, weights)
    for b, w in enumerate(weights):
        repeated = stats.within_group_ranking(np.repeat(labels, w), np.repeat(logits, w, axis=1),
                                              np.repeat(groups, w), np.ones((1, w.sum())))
        np.testing.assert_allclose(within["roc_auc"][:, b], repeated["roc_auc"][:, 0], rtol=0, atol=1e-12)
        assert within["pairs"][b] == repeated["pairs"][0]


def test_groups_of_one_class_add_no_pair_and_no_pair_at_all_is_nan():
    labels = np.array([1, 0, 1, 1, 0, 0])
    groups = np.array(["a", "a", "b", "b", "c", "c"])  # only "a" holds both classes
    logits = np.array([[2.0, 1.0, -5.0, -5.0, 9.0, 9.0]])
    within = stats.within_group_ranking(labels, logits, groups, np.array([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]]))
    assert within["roc_auc"][0, 0] == 1.0 and within["pairs"].tolist() == [1.0, 0.0]
    assert np.isnan(within["roc_auc"][0, 1])


def test_a_planted_shortcut_ranks_overall_but_not_within_its_groups():
    rng = np.random.default_rng(7)
    labels, groups, share = shortcut_data(rng)
    # the model learnt the source and nothing of the lesion
    logits = logit(share + rng.normal(0, 0.01, size=(3, labels.size)))
    overall = stats.metric_matrix(labels, logits, unit(labels), 0.5)["roc_auc"].mean()
    within = stats.within_group_interval(labels, logits, groups, resamples=300)
    difference = stats.within_minus_overall(labels, logits, groups, resamples=300)
    assert overall > 0.75
    assert abs(within.mean - 0.5) < 0.06 and within.low < 0.5 < within.high
    assert difference.mean == pytest.approx(within.mean - overall, abs=1e-12)
    assert difference.high < -0.15


def test_a_model_that_ranks_inside_every_group_keeps_its_ranking_within_them():
    rng = np.random.default_rng(8)
    labels, groups, _ = shortcut_data(rng)
    logits = rng.normal(2.0 * labels - 1, 1.0, size=(3, labels.size))  # the lesion only, whatever the source
    difference = stats.within_minus_overall(labels, logits, groups, resamples=300)
    assert abs(difference.mean) < 0.02 and difference.high - difference.low < 0.04
    assert difference.low < 0.01 and difference.high > -0.01


def test_within_group_difference_pairs_two_models_as_paired_differences():
    rng = np.random.default_rng(9)
    labels, groups, share = shortcut_data(rng, per_group=150)
    lesion = rng.normal(2.0 * labels - 1, 1.0, size=(3, labels.size))
    shortcut = logit(share + rng.normal(0, 0.01, size=(3, labels.size)))
    zero = stats.within_group_difference(labels, lesion, lesion, groups, resamples=200)
    assert (zero.mean, zero.low, zero.high) == (0.0, 0.0, 0.0)
    better = stats.within_group_difference(labels, lesion, shortcut, groups, resamples=200)
    assert better.low > 0.2
    # one group: the same resamples, hence the same interval, as paired_differences' ROC-AUC
    one_group = stats.within_group_difference(labels, lesion, shortcut, np.zeros(labels.size), resamples=200, seed=4)
    assert one_group == stats.paired_differences(labels, lesion, shortcut, 0.5, 0.5, resamples=200, seed=4)["roc_auc"]


# ---------------------------------------------------------------- the column alone

def test_column_alone_scores_by_training_share_and_unseen_values_by_the_overall_share():
    counts = {"a": (30, 10), "b": (0, 50), "c": (20, 0), "empty": (0, 0)}
    scores = stats.column_alone_scores(counts, ["a", "b", "c", "new", "empty", "a"])
    np.testing.assert_allclose(scores, [0.75, 0.0, 1.0, 50 / 110, 50 / 110, 0.75])


def test_column_alone_ranking_equals_scikit_learn_on_the_shares_with_zeros_ones_and_ties():
    rng = np.random.default_rng(10)
    values = rng.choice(["a", "b", "c", "d"], size=300)
    labels = (rng.random(values.size) < np.select([values == "a", values == "b"], [0.9, 0.1], 0.3)).astype(int)
    counts = {"a": (40, 0), "b": (0, 60), "c": (10, 20), "d": (5, 10)}  # shares 1, 0 and a tie of 1/3
    scores = stats.column_alone_scores(counts, values)
    scores[:30] = np.repeat([0.0, 0.005, 1.0, 0.995], [5, 10, 5, 10])  # next to 0 and 1, still ranked apart
    intervals = stats.column_alone_intervals(labels, scores, resamples=300)
    assert intervals["roc_auc"].mean == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert intervals["average_precision"].mean == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    for interval in intervals.values():
        assert interval.low < interval.mean < interval.high
    weights = stats.resample_weights(labels, 3, seed=5)
    resampled = stats.metric_matrix(labels, stats._score_logits(scores), weights, 0.5)
    for b, w in enumerate(weights):
        assert resampled["roc_auc"][0, b] == pytest.approx(roc_auc_score(labels, scores, sample_weight=w), abs=1e-12)


def test_model_minus_column_alone_is_the_paired_ranking_gain():
    rng = np.random.default_rng(11)
    labels, groups, share = shortcut_data(rng, per_group=200)
    scores = stats.column_alone_scores({"a": (60, 40), "b": (25, 75), "c": (5, 95)}, groups)
    lesion = rng.normal(3.0 * labels - 1, 1.0, size=(3, labels.size))
    gain = stats.model_minus_column_alone(labels, lesion, scores, resamples=300)
    expected = np.mean([roc_auc_score(labels, p) for p in stats.sigmoid(lesion)]) - roc_auc_score(labels, scores)
    assert gain["roc_auc"].mean == pytest.approx(expected, abs=1e-12)
    assert gain["roc_auc"].low > 0 and gain["average_precision"].low > 0
    # a model that learnt the source ranks no better than the source
    copy = stats.model_minus_column_alone(labels, logit(share + rng.normal(0, 1e-3, (3, labels.size))), scores,
                                          resamples=300)
    assert copy["roc_auc"].low < 0 < copy["roc_auc"].high


# ---------------------------------------------------------------- subgroup recall and specificity

def test_subgroup_recall_and_specificity_equal_scikit_learn():
    rng = np.random.default_rng(12)
    labels = (rng.random(200) < 0.3).astype(int)
    source = rng.integers(0, 2, labels.size)
    logits = rng.normal(labels, 1.0, size=(2, labels.size))
    thresholds = np.array([0.4, 0.6])
    predicted = stats.sigmoid(logits) >= thresholds[:, None]
    for value in (0, 1):
        malignant, benign = (labels == 1) & (source == value), (labels == 0) & (source == value)
        recall = stats.subgroup_rate(labels[malignant], logits[:, malignant], unit(labels[malignant]), thresholds)
        specificity = stats.subgroup_rate(labels[benign], logits[:, benign], unit(labels[benign]), thresholds)
        m = source == value
        for s in range(2):
            assert recall[s, 0] == pytest.approx(recall_score(labels[m], predicted[s, m]), abs=1e-12)
            assert specificity[s, 0] == pytest.approx(recall_score(labels[m], predicted[s, m], pos_label=0), abs=1e-12)
            assert specificity[s, 0] == pytest.approx((~predicted[s, benign]).mean(), abs=1e-12)


def test_subgroup_rate_weights_are_repeated_images_and_mixed_classes_are_refused():
    labels = np.zeros(5, int)
    logits = np.array([[-2.0, -1.0, 0.5, 1.0, 3.0]])
    weights = np.array([[1, 0, 2, 1, 1], [3, 1, 0, 0, 1]])
    specificity = stats.subgroup_rate(labels, logits, weights, 0.5)
    np.testing.assert_allclose(specificity, [[1 / 5, 4 / 5]])  # probability >= 0.5 from the third image on
    with pytest.raises(ValueError, match="one class"):
        stats.subgroup_rate(np.array([0, 1]), np.zeros((1, 2)), np.ones((1, 2)), 0.5)


# ---------------------------------------------------------------- calibration

def test_brier_equals_scikit_learn_with_and_without_weights():
    rng = np.random.default_rng(13)
    labels = (rng.random(150) < 0.3).astype(int)
    logits = rng.normal(labels - 1, 1.5, size=(2, labels.size))
    weights = np.vstack([np.ones(labels.size), rng.integers(0, 4, labels.size)])
    brier = stats.calibration_matrix(labels, logits, weights)["brier"]
    for s, probability in enumerate(stats.sigmoid(logits)):
        for b, w in enumerate(weights):
            assert brier[s, b] == pytest.approx(brier_score_loss(labels, probability, sample_weight=w), abs=1e-12)


def test_ece_by_hand():
    labels = np.array([0, 0, 1, 1, 1, 0, 1])
    probability = np.array([0.05, 0.08, 0.15, 0.5, 0.55, 0.58, 0.95])  # 0.5 is exact: logit 0
    # bins [0, .1]: 2 images, observed 0 against 0.065; (.1, .2]: 1, 1 against .15; (.4, .5]: 1, 1 against .5;
    # (.5, .6]: 2, 0.5 against 0.565; (.9, 1]: 1, 1 against .95
    expected = (2 * 0.065 + 0.85 + 0.5 + 2 * 0.065 + 0.05) / 7
    ece = stats.calibration_matrix(labels, logit(probability)[None], unit(labels))["ece"]
    assert ece[0, 0] == pytest.approx(expected, abs=1e-12)
    coarse = stats.calibration_matrix(labels, logit(probability)[None], unit(labels), bins=1)["ece"]
    assert coarse[0, 0] == pytest.approx(abs(labels.mean() - probability.mean()), abs=1e-12)


def test_calibration_weights_act_as_repeated_images():
    rng = np.random.default_rng(14)
    labels = (rng.random(60) < 0.4).astype(int)
    logits = rng.normal(labels, 1.5, size=(3, labels.size))
    weights = rng.integers(0, 4, size=(4, labels.size))
    weighted = stats.calibration_matrix(labels, logits, weights)
    for b, w in enumerate(weights):
        repeated = stats.calibration_matrix(np.repeat(labels, w), np.repeat(logits, w, axis=1), np.ones((1, w.sum())))
        for name in ("brier", "ece"):
            np.testing.assert_allclose(weighted[name][:, b], repeated[name][:, 0], rtol=0, atol=1e-12)


def test_reliability_curve_equals_scikit_learns_calibration_curve():
    rng = np.random.default_rng(15)
    labels = (rng.random(400) < 0.3).astype(int)
    logits = rng.normal(2 * labels - 2, 1.0, size=(3, labels.size))
    logits[:, :20] = 0.0  # probability exactly 0.5, on a bin edge
    curve = stats.reliability_curve(labels, logits)
    np.testing.assert_allclose(curve["centre"], np.arange(0.05, 1, 0.1))
    assert curve["count"].sum(axis=1).tolist() == [labels.size] * 3
    for s, probability in enumerate(stats.sigmoid(logits)):
        observed, predicted = calibration_curve(labels, probability, n_bins=10)
        filled = curve["count"][s] > 0
        np.testing.assert_allclose(curve["observed"][s, filled], observed, atol=1e-12)
        np.testing.assert_allclose(curve["mean_predicted"][s, filled], predicted, atol=1e-12)
        assert np.isnan(curve["observed"][s, ~filled]).all()


def test_prior_shift_logits_at_one_half_pick_what_the_prior_shift_threshold_picks():
    rng = np.random.default_rng(16)
    logits = rng.normal(0, 2, size=(3, 500))
    counts = (100, 200, 50, 1000)  # trained at 1:2, evaluated at 1:20
    corrected = stats.prior_shift_logits(logits, *counts)
    np.testing.assert_allclose(corrected, logits + np.log(50 / 1000) - np.log(100 / 200))
    threshold = stats.prior_shift_threshold(*counts)
    assert ((stats.sigmoid(corrected) >= 0.5) == (stats.sigmoid(logits) >= threshold)).all()
    with pytest.raises(ValueError, match="positive"):
        stats.prior_shift_logits(logits, 0, 200, 50, 1000)


def test_calibration_intervals_and_the_paired_effect_of_the_prior_shift_correction():
    rng = np.random.default_rng(17)
    labels = np.r_[np.ones(100, int), np.zeros(1000, int)]
    # calibrated for a 1:1 training set: the evaluation set's 1:10 prior makes the raw probabilities too high
    lesion = 1.5 * labels + rng.normal(0, 1, labels.size) - 0.75
    raw = lesion + rng.normal(0, 0.2, size=(3, labels.size))
    corrected = stats.prior_shift_logits(raw, 1, 1, 100, 1000)
    before = stats.calibration_intervals(labels, raw, resamples=300)
    point = stats.calibration_matrix(labels, raw, unit(labels))
    for name in ("brier", "ece"):
        assert before[name].mean == pytest.approx(point[name].mean(), abs=1e-12)
        assert before[name].low < before[name].mean < before[name].high
    change = stats.calibration_differences(labels, corrected, raw, resamples=300)
    assert change["ece"].high < -0.1 and change["brier"].high < 0
    zero = stats.calibration_differences(labels, raw, raw, resamples=50)
    assert (zero["ece"].low, zero["ece"].high) == (0.0, 0.0)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, message", [
    (lambda: stats.within_group_ranking([0, 1], np.zeros((1, 2)), ["a"], np.ones((1, 2))), "one value per image"),
    (lambda: stats.within_group_ranking([0, 1], np.zeros((1, 2)), ["a", None], np.ones((1, 2))), "missing"),
    (lambda: stats.within_group_ranking([0, 1], np.zeros((1, 2)), ["a", "b"], np.zeros((1, 2))), "positive total"),
    (lambda: stats.column_alone_scores({}, ["a"]), "no image"),
    (lambda: stats.column_alone_scores({"a": (-1, 3)}, ["a"]), "non-negative"),
    (lambda: stats.column_alone_intervals([0, 1], [0.5, 1.5]), r"\[0, 1\]"),
    (lambda: stats.calibration_matrix([0, 1], np.zeros((1, 2)), np.ones((1, 2)), bins=0), "bins"),
    (lambda: stats.within_group_difference([0, 1], np.zeros((1, 2)), np.zeros((2, 2)), ["a", "a"]), "share one"),
])
def test_bad_inputs_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()
