import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ratio_cnn import stats
from ratio_cnn.evaluate import binary_metrics


def sigmoid(logits):
    return 1 / (1 + np.exp(-np.asarray(logits, dtype=float)))


def logit(probabilities):
    p = np.asarray(probabilities, dtype=float)
    return np.log(p / (1 - p))


def evaluation_labels(positives=50, negatives=1000):
    return np.r_[np.ones(positives, int), np.zeros(negatives, int)]


def model_logits(rng, labels, difficulty, seeds=5, boost=0.0):
    """(seeds, n) logits: a per-image difficulty every model shares, each seed's own calibration offset and
    per-image noise, positives raised by boost."""
    seed_offset = rng.normal(0, 0.3, size=(seeds, 1))
    return difficulty + boost * labels - 3 + seed_offset + rng.normal(0, 0.5, size=(seeds, labels.size))


def image_difficulty(rng, labels):
    return 1.5 * labels + rng.normal(0, 1, labels.size)


def unit(labels):
    return np.ones((1, len(labels)))


# ---------------------------------------------------------------- metric_matrix

@pytest.mark.parametrize("rounding", [None, 0.5])
def test_unit_weights_agree_with_binary_metrics_and_scikit_learn(rounding):
    rng = np.random.default_rng(1)
    labels = (rng.random(400) < 0.15).astype(int)
    logits = rng.normal(-1 + 1.5 * labels, 1.5, size=(3, labels.size))
    if rounding:  # a coarse model: many tied scores, within and across classes
        logits = np.round(logits / rounding) * rounding
    thresholds = np.array([0.3, 0.5, 0.7])  # one operating point per seed
    m = stats.metric_matrix(labels, logits, unit(labels), thresholds)
    for s, probability in enumerate(sigmoid(logits)):
        expected = binary_metrics(labels, probability, thresholds[s])
        for name in ("accuracy", "precision", "recall", "f1"):
            assert m[name][s, 0] == pytest.approx(expected[name], abs=1e-12), name
        assert m["roc_auc"][s, 0] == pytest.approx(roc_auc_score(labels, probability), abs=1e-12)
        assert m["average_precision"][s, 0] == pytest.approx(average_precision_score(labels, probability), abs=1e-12)
        bce = -np.mean(labels * np.log(probability) + (1 - labels) * np.log(1 - probability))
        assert m["loss"][s, 0] == pytest.approx(bce, rel=1e-9)
    assert set(m) == set(stats.METRICS) and all(v.shape == (3, 1) for v in m.values())


def test_integer_weights_act_as_repeated_images():
    rng = np.random.default_rng(2)
    labels = (rng.random(120) < 0.3).astype(int)
    logits = np.round(rng.normal(labels, 1.0, size=(2, labels.size)), 1)  # ties
    weights = rng.integers(0, 4, size=(3, labels.size))  # zeros included
    m = stats.metric_matrix(labels, logits, weights, 0.5)
    for b, w in enumerate(weights):
        repeated_labels = np.repeat(labels, w)
        repeated = stats.metric_matrix(repeated_labels, np.repeat(logits, w, axis=1), unit(repeated_labels), 0.5)
        for name in stats.METRICS:
            np.testing.assert_allclose(m[name][:, b], repeated[name][:, 0], rtol=0, atol=1e-12, err_msg=name)
        for s, probability in enumerate(sigmoid(logits)):
            assert m["roc_auc"][s, b] == pytest.approx(roc_auc_score(labels, probability, sample_weight=w), abs=1e-12)
            assert m["average_precision"][s, b] == pytest.approx(
                average_precision_score(labels, probability, sample_weight=w), abs=1e-12)


def test_ranking_metrics_are_nan_without_weight_on_both_classes_and_counts_ties_half():
    labels = np.array([1, 0, 1, 0])
    logits = np.array([[2.0, 2.0, 1.0, -1.0]])  # one positive tied with a negative
    weights = np.array([[1, 1, 1, 1], [0, 1, 0, 1]])
    m = stats.metric_matrix(labels, logits, weights, 0.5)
    # pairs: (2.0 vs 2.0) half, (2.0 vs -1) one, (1.0 vs 2.0) none, (1.0 vs -1) one -> 2.5 of 4
    assert m["roc_auc"][0, 0] == 2.5 / 4
    # the tie group {2.0: one pos, one neg} has precision 1/2; at 1.0 precision 2/3
    assert m["average_precision"][0, 0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert np.isnan(m["roc_auc"][0, 1]) and np.isnan(m["average_precision"][0, 1])


def test_nothing_predicted_gives_zero_precision_and_f1():
    labels = np.array([1, 0, 0])
    m = stats.metric_matrix(labels, np.array([[-2.0, -1.0, 0.0]]), unit(labels), 0.9)
    assert (m["precision"][0, 0], m["recall"][0, 0], m["f1"][0, 0]) == (0.0, 0.0, 0.0)
    assert m["accuracy"][0, 0] == pytest.approx(2 / 3)


def test_loss_is_stable_for_extreme_logits():
    labels = np.array([0, 1])
    m = stats.metric_matrix(labels, np.array([[800.0, -800.0]]), unit(labels), 0.5)
    assert m["loss"][0, 0] == pytest.approx(800.0)


@pytest.mark.parametrize("logits, weights, message", [
    (np.zeros((2, 3)), np.ones((1, 4)), "logits must have shape"),
    (np.array([[0.0, np.nan, 0.0, 1.0]]), np.ones((1, 4)), "non-finite"),
    (np.zeros((1, 4)), -np.ones((1, 4)), "non-negative"),
    (np.zeros((1, 4)), np.ones(4), "weights must have shape"),
])
def test_bad_inputs_name_the_problem(logits, weights, message):
    with pytest.raises(ValueError, match=message):
        stats.metric_matrix(np.array([1, 0, 1, 0]), logits, weights, 0.5)


# ---------------------------------------------------------------- resampling

def test_stratified_resampling_keeps_each_class_count_and_follows_its_seed():
    labels = evaluation_labels(positives=7, negatives=40)
    weights = stats.resample_weights(labels, resamples=300, seed=5)
    assert weights.shape == (300, labels.size) and weights.dtype.kind == "i"
    assert (weights[:, labels == 1].sum(axis=1) == 7).all()
    assert (weights[:, labels == 0].sum(axis=1) == 40).all()
    assert (weights != 1).any(axis=1).all()  # every row is a real resample, not the original set
    np.testing.assert_array_equal(weights, stats.resample_weights(labels, resamples=300, seed=5))
    assert not np.array_equal(weights, stats.resample_weights(labels, resamples=300, seed=6))
    # each image is drawn 1 time per resample on average
    assert weights.mean() == pytest.approx(1.0) and weights[:, labels == 1].mean(axis=0) == pytest.approx(1, abs=0.2)


def test_seed_resampling_draws_valid_indices_by_seed():
    rows = stats.resample_seeds(5, resamples=400, seed=1)
    assert rows.shape == (400, 5) and rows.min() == 0 and rows.max() == 4
    np.testing.assert_array_equal(rows, stats.resample_seeds(5, resamples=400, seed=1))
    assert not np.array_equal(rows, stats.resample_seeds(5, resamples=400, seed=2))


# ---------------------------------------------------------------- intervals

def test_t_interval_matches_hand_computation():
    interval = stats.t_interval([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.302653, sd = 1
    assert interval.mean == 2.0 and interval.n == 3
    assert interval.high - interval.mean == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)
    assert interval.mean - interval.low == pytest.approx(2.4841, abs=1e-4)
    assert not interval.excludes_zero and stats.verdict(interval) == "within noise"  # [-0.48, 4.48]
    assert interval.to_dict() == {"mean": 2.0, "low": interval.low, "high": interval.high, "n": 3}


def test_t_interval_of_one_seed_is_undefined_and_non_finite_values_raise():
    single = stats.t_interval([0.7])
    assert (single.mean, single.low, single.high, single.n) == (0.7, None, None, 1)
    assert not single.excludes_zero and stats.verdict(single) == "n/a"
    with pytest.raises(ValueError, match="non-finite"):
        stats.t_interval([0.5, np.nan])


def test_verdict_reads_the_interval():
    assert stats.verdict(stats.Interval(-0.1, -0.2, -0.01, 5)) == "real"
    assert stats.verdict(stats.Interval(0.1, -0.01, 0.2, 5)) == "within noise"
    assert stats.verdict(stats.Interval(0.0, 0.0, 0.2, 5)) == "within noise"  # touching zero is not excluding it


def test_bootstrap_intervals_cover_the_estimate_and_narrow_with_more_images():
    rng = np.random.default_rng(3)
    widths = []
    for positives, negatives in [(10, 200), (50, 1000)]:
        labels = evaluation_labels(positives, negatives)
        logits = model_logits(rng, labels, image_difficulty(rng, labels))
        intervals = stats.bootstrap_intervals(labels, logits, 0.2, resamples=500)
        point = stats.metric_matrix(labels, logits, unit(labels), 0.2)
        for name, interval in intervals.items():
            assert interval.mean == pytest.approx(point[name].mean())
            assert interval.low <= interval.mean <= interval.high, name
            assert interval.n == 5
        widths.append(intervals["roc_auc"].high - intervals["roc_auc"].low)
    assert widths[1] < 0.7 * widths[0]


def test_identical_models_differ_by_exactly_zero():
    rng = np.random.default_rng(4)
    labels = evaluation_labels()
    logits = model_logits(rng, labels, image_difficulty(rng, labels))
    thresholds = np.full(5, 0.3)
    for name, interval in stats.paired_differences(labels, logits, logits.copy(), thresholds, thresholds,
                                                   resamples=200).items():
        assert (interval.mean, interval.low, interval.high) == (0.0, 0.0, 0.0), name
        assert stats.verdict(interval) == "within noise"


def test_a_planted_improvement_is_real_and_a_tiny_one_within_noise():
    rng = np.random.default_rng(5)
    labels = evaluation_labels()
    difficulty = image_difficulty(rng, labels)
    baseline = model_logits(rng, labels, difficulty)
    better = model_logits(rng, labels, difficulty, boost=1.5)
    barely = model_logits(rng, labels, difficulty, boost=0.02)
    found = stats.paired_differences(labels, baseline, better, 0.5, 0.5, resamples=1000)
    for name in ("roc_auc", "average_precision", "recall"):
        assert found[name].high < 0 and stats.verdict(found[name]) == "real", name  # A - B: the baseline is worse
    missed = stats.paired_differences(labels, baseline, barely, 0.5, 0.5, resamples=1000)
    for name in ("roc_auc", "average_precision", "recall"):
        assert stats.verdict(missed[name]) == "within noise", name


def test_one_lucky_seed_is_not_a_real_difference():
    rng = np.random.default_rng(10)
    labels = evaluation_labels()
    a = model_logits(rng, labels, image_difficulty(rng, labels))
    b = a.copy()
    b[0] += 2.0 * labels  # only seed 0 of B is better, on every image
    found = stats.paired_differences(labels, a, b, 0.5, 0.5, resamples=1000)["roc_auc"]
    # resampling images alone would call this real; a third of seed resamples leave seed 0 out
    assert found.mean < 0 and found.high == 0.0 and stats.verdict(found) == "within noise"


def test_paired_interval_rarely_excludes_zero_when_models_do_not_differ():
    rng = np.random.default_rng(6)
    labels = evaluation_labels(positives=20, negatives=200)
    excluded = []
    for _ in range(150):
        difficulty = image_difficulty(rng, labels)
        a, b = model_logits(rng, labels, difficulty), model_logits(rng, labels, difficulty)
        found = stats.paired_differences(labels, a, b, 0.3, 0.3, resamples=200, seed=int(rng.integers(1 << 30)))
        excluded.append([found[name].excludes_zero for name in ("roc_auc", "recall")])
    share = np.mean(excluded, axis=0)
    assert (share < 0.15).all(), share


def test_paired_differences_rejects_misaligned_models():
    labels = evaluation_labels(5, 20)
    with pytest.raises(ValueError, match="share one"):
        stats.paired_differences(labels, np.zeros((3, 25)), np.zeros((2, 25)), 0.5, 0.5)


# ---------------------------------------------------------------- operating points

def test_best_f1_threshold_by_hand():
    labels = np.array([1, 1, 0, 1, 0, 0])
    probabilities = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2])
    # F1 at each threshold: 1/2, 4/5, 2/3, 6/7, 3/4, 2/3
    threshold = stats.best_f1_threshold(labels, logit(probabilities))
    assert threshold == pytest.approx(0.6, rel=1e-12)
    # the threshold reproduces its own F1 under the module's comparison
    m = stats.metric_matrix(labels, logit(probabilities)[None], unit(labels), threshold)
    assert m["f1"][0, 0] == pytest.approx(6 / 7)


def test_best_f1_threshold_takes_the_higher_of_equal_f1s():
    labels = np.array([0, 1, 0, 0, 0, 1])
    probabilities = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    # F1 = 1/2 at 0.8 (1 of 2 predicted) and again at 0.4 (2 of 6 predicted), lower in between
    assert stats.best_f1_threshold(labels, logit(probabilities)) == pytest.approx(0.8, rel=1e-12)


@pytest.mark.parametrize("target, expected", [(0.5, 0.8), (0.75, 0.6), (0.8, 0.4), (1.0, 0.4)])
def test_recall_threshold_is_the_highest_reaching_the_target(target, expected):
    labels = np.array([1, 1, 0, 1, 0, 1, 0])
    logits = logit([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    threshold = stats.recall_threshold(labels, logits, target)
    assert threshold == pytest.approx(expected, rel=1e-12)
    assert stats.metric_matrix(labels, logits[None], unit(labels), threshold)["recall"][0, 0] >= target


def test_operating_points_need_malignant_validation_images():
    with pytest.raises(ValueError, match="no malignant"):
        stats.best_f1_threshold(np.zeros(4, int), np.zeros(4))


def test_prior_shift_threshold():
    assert stats.prior_shift_threshold(1, 1, 50, 1000) == pytest.approx(1 / 1.05)  # ≈ 0.952
    assert stats.prior_shift_threshold(50, 1000, 50, 1000) == 0.5
    assert stats.prior_shift_threshold(500.0, 500.0, 3, 3) == 0.5
    # thresholding raw probabilities there is predicting at 0.5 on the corrected logits
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, 1000)
    threshold = stats.prior_shift_threshold(300, 700, 50, 1000)
    corrected = logits + np.log(50 / 1000) - np.log(300 / 700)
    np.testing.assert_array_equal(sigmoid(logits) >= threshold, sigmoid(corrected) >= 0.5)
    with pytest.raises(ValueError, match="positive"):
        stats.prior_shift_threshold(0, 10, 5, 5)


# ---------------------------------------------------------------- curves

def test_roc_band_is_monotone_and_brackets_its_mean():
    rng = np.random.default_rng(8)
    labels = evaluation_labels(30, 300)
    logits = model_logits(rng, labels, image_difficulty(rng, labels), seeds=4)
    grid, mean, low, high = stats.roc_band(labels, logits)
    assert grid.shape == mean.shape == low.shape == high.shape == (101,)
    assert (np.diff(mean) >= 0).all() and mean[-1] == 1.0
    assert (low <= mean).all() and (mean <= high).all() and (low < high).any()
    # one seed on a fine grid: the area under the read-off curve is the ROC-AUC
    fine = np.linspace(0, 1, 20001)
    _, curve, _, _ = stats.roc_band(labels, logits[:1], fine)
    assert np.trapezoid(curve, fine) == pytest.approx(roc_auc_score(labels, sigmoid(logits[0])), abs=1e-3)


def test_roc_band_reads_a_vertical_step_at_its_top():
    labels = np.array([1, 1, 0, 0])
    _, mean, _, _ = stats.roc_band(labels, np.array([[3.0, 2.0, -1.0, -2.0]]), grid=[0.0, 0.5, 1.0])
    np.testing.assert_array_equal(mean, [1.0, 1.0, 1.0])


def test_pr_band_uses_interpolated_precision():
    labels = np.array([1, 0, 1, 0])
    logits = logit([0.9, 0.8, 0.7, 0.6])[None]
    # (recall, precision) points: (1/2, 1), (1/2, 1/2), (1, 2/3), (1, 1/2)
    grid, mean, low, high = stats.pr_band(labels, logits, grid=[0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(mean, [1, 1, 1, 2 / 3, 2 / 3])
    np.testing.assert_array_equal(low, mean)
    rng = np.random.default_rng(9)
    labels = evaluation_labels(30, 300)
    grid, mean, low, high = stats.pr_band(labels, model_logits(rng, labels, image_difficulty(rng, labels), seeds=4))
    assert mean.shape == (101,) and (np.diff(mean) <= 0).all()
    assert (low <= mean).all() and (mean <= high).all()
