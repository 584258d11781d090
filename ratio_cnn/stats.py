"""Statistics for the report: intervals over seeds, bootstraps over test images, paired differences.

Pure numpy on `labels` (n,) of 0/1 (1 = malignant, the positive class) and `logits` (S, n),
one row per seed of one model. Every metric is a function of the float64 probability
1 / (1 + exp(-logit)); "at threshold t" means probability >= t, the same comparison the
operating points below are chosen with, so a threshold they return reproduces its own
recall or F1 exactly.

A bootstrap resample is a row of image counts (weights), not a copy of the data: every
resample of every seed then comes out of a few (dense or sparse) matrix products, with no
loop over resamples.
"""
from dataclasses import asdict, dataclass

import numpy as np
from scipy import sparse
from scipy.stats import t as student_t
from sklearn.metrics import precision_recall_curve, roc_curve

METRICS = ("loss", "accuracy", "precision", "recall", "f1", "roc_auc", "average_precision")


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval; `low`/`high` are None where none exists (one seed)."""

    mean: float
    low: float | None
    high: float | None
    n: int  # values, or seeds, behind the estimate

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict:
        return asdict(self)


def verdict(interval: Interval) -> str:
    """How the report words a difference: "real", "within noise", or "n/a" with no interval."""
    if interval.low is None:
        return "n/a"
    return "real" if interval.excludes_zero else "within noise"


def t_interval(values, level: float = 0.95) -> Interval:
    """Mean of (n,) values (one per seed) ± t_{(1+level)/2, n-1} · sd / √n, sd with ddof=1."""
    _check_level(level)
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"t_interval needs a non-empty 1-D array of values, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"t_interval got non-finite values {values.tolist()}; drop or fix the failed seeds")
    mean = float(values.mean())
    if values.size == 1:
        return Interval(mean, None, None, 1)
    half = student_t.ppf((1 + level) / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return Interval(mean, mean - float(half), mean + float(half), values.size)


def seed_interval(values, high: float | None = 1.0) -> Interval | None:
    """Mean over seeds with a 95% t interval, cut to the range the metric cannot leave: [0, 1], or
    [0, inf) with high=None (the loss). With 2 or 3 seeds a t interval easily reaches past it.
    None where no seed has a value (ROC-AUC of a single-class set); values that are None are left out.

    The one rule for an interval over seeds: metrics.json and the report both use it.
    """
    values = [v for v in values if v is not None]
    if not values:
        return None
    i = t_interval(values)
    if i.low is None:
        return i
    return Interval(i.mean, max(i.low, 0.0), i.high if high is None else min(i.high, high), i.n)


# ---------------------------------------------------------------- resampling

def resample_weights(labels, resamples: int = 2000, seed=0) -> np.ndarray:
    """(B, n) int counts: row b redraws each class's images with replacement, as many as it holds.

    Stratified because the evaluation set's composition (50 malignant, 1000 benign) is fixed
    by design; only which images stand for each class varies. `seed` is anything
    numpy.random.default_rng accepts. Stored image-major (a transposed (n, B) array), the
    layout metric_matrix reads in order.
    """
    labels = _check_labels(labels)
    rng = np.random.default_rng(seed)
    counts = np.zeros((labels.size, resamples), dtype=np.int64)
    for members in (np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)):
        if members.size == 0:
            continue
        draws = rng.integers(members.size, size=(resamples, members.size))
        # one bincount for all resamples: image j drawn in resample b counts in bin j * B + b
        bins = draws * resamples + np.arange(resamples)[:, None]
        counts[members] = np.bincount(bins.ravel(), minlength=bins.size).reshape(members.size, resamples)
    return counts.T


def resample_seeds(n_seeds: int, resamples: int = 2000, seed=0) -> np.ndarray:
    """(B, S) seed indices drawn with replacement, one row per resample."""
    return np.random.default_rng(seed).integers(n_seeds, size=(resamples, n_seeds))


# ---------------------------------------------------------------- metrics

def metric_matrix(labels, logits, weights, thresholds) -> dict[str, np.ndarray]:
    """Every metric of METRICS for every seed under every row of image weights: {metric: (S, B)}.

    labels (n,); logits (S, n); weights (B, n), non-negative, each a count of how often an
    image is repeated (np.ones((1, n)) for the plain estimate); thresholds a probability or
    (S,) probabilities, one per seed. Precision, recall and F1 are 0 where undefined, as in
    evaluate.binary_metrics; ROC-AUC and average precision are NaN for a row without
    weight on both classes. Ties and weights are handled as scikit-learn's sample_weight.
    """
    y, logits = _check_inputs(labels, logits)
    weights = np.asarray(weights)
    if weights.ndim != 2 or weights.shape[1] != y.size:
        raise ValueError(f"weights must have shape (resamples, {y.size}), got {weights.shape}")
    # (n, B): with images as rows every product below streams through memory in order
    w_t = np.ascontiguousarray(weights.T, dtype=float)
    total = w_t.sum(axis=0)  # (B,)
    if (w_t < 0).any() or not (total > 0).all():
        raise ValueError("weights must be non-negative with a positive total in every row")
    thresholds = np.asarray(thresholds, dtype=float)
    if thresholds.ndim > 1 or thresholds.size not in (1, len(logits)):
        raise ValueError(f"thresholds must be one probability or one per seed ({len(logits)}), got {thresholds.shape}")
    probability = sigmoid(logits)

    positives = y @ w_t  # (B,)
    predicted = (probability >= thresholds.reshape(-1, 1)).astype(float)  # (S, n)
    tp = (predicted * y) @ w_t  # (S, B)
    fp = predicted @ w_t - tp
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, np.broadcast_to(positives, tp.shape))
    # binary cross-entropy from logits without overflow, as torch's *_with_logits computes it
    losses = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))  # (S, n)
    ranking = [_ranking_metrics(y, p, w_t) for p in probability]
    return {
        "loss": losses @ w_t / total,
        "accuracy": (tp + (total - positives) - fp) / total,
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "roc_auc": np.array([auc for auc, _ in ranking]),
        "average_precision": np.array([ap for _, ap in ranking]),
    }


def _ranking_metrics(y: np.ndarray, probability: np.ndarray, w_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted ROC-AUC and average precision of one seed's (n,) scores under (n, B) weights: two (B,).

    Both depend only on where each image falls among the positives' distinct scores
    u_0 > u_1 > ... > u_{U-1}: bin 2k holds the images strictly between u_{k-1} and u_k,
    bin 2k+1 those tied with u_k (every positive sits in an odd bin). One sparse product
    then gives every resample's negative and positive weight per bin, so no resample is
    sorted and ties are exact.
    """
    distinct = np.unique(probability[y == 1])  # ascending
    if distinct.size == 0:
        return np.full(w_t.shape[1], np.nan), np.full(w_t.shape[1], np.nan)
    above = distinct.size - np.searchsorted(distinct, probability, side="right")  # distinct positive scores above
    tied = np.searchsorted(distinct, probability, side="right") - np.searchsorted(distinct, probability, side="left")
    n_bins = 2 * distinct.size + 1
    rows = 2 * above + tied + n_bins * y.astype(int)  # negatives in rows [0, n_bins), positives after
    one_hot = sparse.csr_array((np.ones(y.size), (rows, np.arange(y.size))), shape=(2 * n_bins, y.size))
    per_bin = one_hot @ w_t  # (2 * n_bins, B)
    pos_in = per_bin[n_bins + 1 :: 2]  # (U, B): positive weight at each distinct score, highest first
    neg_through = np.cumsum(per_bin[:n_bins], axis=0)
    neg_above, neg_at_or_above = neg_through[0:-1:2], neg_through[1::2]  # (U, B), relative to each u_k
    pos_through = np.cumsum(pos_in, axis=0)
    positives, negatives = pos_through[-1], neg_through[-1]
    # a positive outranks the negatives below it and ties half of those level with it, as roc_auc_score
    ranked_pairs = (pos_in * (negatives - (neg_above + neg_at_or_above) / 2)).sum(axis=0)
    # average_precision_score steps only at distinct scores: a positive counts the precision at its own score
    hits = (pos_in * _ratio(pos_through, pos_through + neg_at_or_above)).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = np.where(positives * negatives > 0, ranked_pairs / (positives * negatives), np.nan)
        ap = np.where(positives * negatives > 0, hits / positives, np.nan)
    return auc, ap


# ---------------------------------------------------------------- intervals

def bootstrap_intervals(labels, logits, thresholds, resamples: int = 2000, seed=0,
                        level: float = 0.95) -> dict[str, Interval]:
    """Each metric's mean over seeds with a percentile interval over resampled test images.

    The seeds stay fixed: the interval is the evaluation set's own noise, the part more
    seeds cannot shrink. logits (S, n); thresholds as in metric_matrix.
    """
    _check_level(level)
    weights = resample_weights(labels, resamples, seed)
    point = metric_matrix(labels, logits, np.ones((1, weights.shape[1])), thresholds)
    resampled = metric_matrix(labels, logits, weights, thresholds)
    return {m: _percentile_interval(point[m].mean(), resampled[m].mean(axis=0), level, len(logits)) for m in METRICS}


def paired_differences(labels, logits_a, logits_b, thresholds_a, thresholds_b, resamples: int = 2000, seed=0,
                       level: float = 0.95) -> dict[str, Interval]:
    """Each metric's mean over seeds of (A − B), with a percentile interval over images and seeds jointly.

    logits_a and logits_b are (S, n) of two models on the same images, row s of both
    started from the same initial weights. Resample b draws one image weighting and one
    seed resample and applies both to A and B alike, so what the two share (hard images,
    lucky initialisations) cancels in the difference.
    """
    _check_level(level)
    shape_a, shape_b = np.shape(logits_a), np.shape(logits_b)
    if shape_a != shape_b or len(shape_a) != 2:
        raise ValueError(f"logits_a and logits_b must share one (seeds, images) shape, got {shape_a} and {shape_b}")
    n_seeds, n_images = shape_a
    images_seed, seeds_seed = np.random.SeedSequence(seed).spawn(2)
    weights = resample_weights(labels, resamples, images_seed)
    seed_rows = resample_seeds(n_seeds, resamples, seeds_seed)  # (B, S)
    ones = np.ones((1, n_images))
    point_a = metric_matrix(labels, logits_a, ones, thresholds_a)
    point_b = metric_matrix(labels, logits_b, ones, thresholds_b)
    a = metric_matrix(labels, logits_a, weights, thresholds_a)
    b = metric_matrix(labels, logits_b, weights, thresholds_b)
    resample_columns = np.arange(resamples)[:, None]
    intervals = {}
    for m in METRICS:
        difference = a[m] - b[m]  # (S, B)
        resampled = difference[seed_rows, resample_columns].mean(axis=1)  # (B,)
        intervals[m] = _percentile_interval((point_a[m] - point_b[m]).mean(), resampled, level, n_seeds)
    return intervals


def _percentile_interval(point: float, resampled: np.ndarray, level: float, n: int) -> Interval:
    if not np.isfinite(resampled).all():
        return Interval(float(point), None, None, n)
    low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(point), float(low), float(high), n)


# ---------------------------------------------------------------- operating points

def best_f1_threshold(labels, logits) -> float:
    """The distinct predicted probability that, as a threshold, maximises F1; ties go to the higher one.

    labels (n,) and logits (n,) of one seed on the validation set.
    """
    thresholds, tp, predicted, positives = _operating_points(labels, logits)
    # 2·tp / (predicted + positives) is F1; integer ratios make equal F1s compare equal
    return float(thresholds[np.argmax(2 * tp / (predicted + positives))])


def recall_threshold(labels, logits, target: float = 0.80) -> float:
    """The highest distinct predicted probability whose recall, as a threshold, is >= target."""
    if not 0 < target <= 1:
        raise ValueError(f"target recall must be in (0, 1], got {target}")
    thresholds, tp, _, positives = _operating_points(labels, logits)
    return float(thresholds[np.flatnonzero(tp / positives >= target)[0]])


def prior_shift_threshold(train_positive: float, train_negative: float, eval_positive: float,
                          eval_negative: float) -> float:
    """Raw-probability threshold equal to predicting at 0.5 after correcting for the change of prior.

    Corrected logit = logit + log(eval odds) − log(train odds), so the raw threshold is
    sigmoid(log a − log b) = a / (a + b) with a, b the training and evaluation odds
    (positive / negative). Counts may be effective (class-weighted) floats.
    """
    counts = (train_positive, train_negative, eval_positive, eval_negative)
    if not all(np.isfinite(c) and c > 0 for c in counts):
        raise ValueError(f"class counts must be positive, got {counts}")
    train_odds, eval_odds = train_positive / train_negative, eval_positive / eval_negative
    return float(train_odds / (train_odds + eval_odds))


def _operating_points(labels, logits) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One seed's distinct probabilities (descending); true and all predicted positives at each; positives."""
    if np.ndim(logits) != 1:
        raise ValueError(f"an operating point is chosen on one seed's (n,) logits, got shape {np.shape(logits)}")
    y, logits = _check_inputs(labels, np.reshape(logits, (1, -1)))
    if y.sum() == 0:
        raise ValueError("the validation labels hold no malignant image: no operating point can be chosen")
    probability = sigmoid(logits[0])
    order = np.argsort(-probability, kind="stable")
    ranked = probability[order]
    ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))  # last index of each run of equal scores
    return ranked[ends], np.cumsum(y[order])[ends], ends + 1, y.sum()


# ---------------------------------------------------------------- curves for figures

def roc_band(labels, logits, grid=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each seed's ROC curve read at the false-positive rates of grid (default 101 points on [0, 1]).

    Returns (grid, mean_tpr, low_tpr, high_tpr), the band being min and max over seeds.
    """
    y, logits = _check_inputs(labels, logits)
    grid = _unit_grid(grid)
    curves = []
    for probability in sigmoid(logits):
        fpr, tpr, _ = roc_curve(y, probability)
        # np.interp reads a repeated fpr at its last point: a vertical step counts at its top
        curves.append(np.interp(grid, fpr, tpr))
    curves = np.array(curves)
    return grid, curves.mean(axis=0), curves.min(axis=0), curves.max(axis=0)


def pr_band(labels, logits, grid=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each seed's interpolated precision (best precision at any recall >= r) at the recalls of grid.

    Returns (grid, mean_precision, low_precision, high_precision), the band being min and
    max over seeds.
    """
    y, logits = _check_inputs(labels, logits)
    grid = _unit_grid(grid)
    curves = []
    for probability in sigmoid(logits):
        precision, recall, _ = precision_recall_curve(y, probability)
        # drop the (recall 0, precision 1) end scikit-learn appends: no threshold reaches it
        precision, recall = precision[:-1], recall[:-1]  # recall falls along the arrays
        best_so_far = np.maximum.accumulate(precision)  # best precision over recall >= recall[i]
        reaching = recall.size - np.searchsorted(recall[::-1], grid, side="left")  # points with recall >= r
        curves.append(best_so_far[reaching - 1])
    curves = np.array(curves)
    return grid, curves.mean(axis=0), curves.min(axis=0), curves.max(axis=0)


# ---------------------------------------------------------------- validity: subgroups, shortcuts, calibration
#
# Whether the ranking is the lesion's or a column's. A column is any per-image value (source,
# diagnosis, near-duplicate group). A subgroup's own metrics are the functions above on its
# images alone: metric_matrix / bootstrap_intervals / paired_differences on labels[m],
# logits[:, m] give its ROC-AUC, AP and ratio differences, resampled within the subgroup.

def within_group_ranking(labels, logits, groups, weights) -> dict[str, np.ndarray]:
    """ROC-AUC over the malignant–benign pairs that share a group value: {"roc_auc": (S, B), "pairs": (B,)}.

    The model's ranking once the grouping column cannot help (a stratified AUC): the
    pair-weighted mean of each group's own ROC-AUC, ties counted half as in roc_auc_score.
    groups (n,) holds one value per image (fill missing values first); weights (B, n) as in
    metric_matrix. "pairs" is each row's weight of within-group pairs; ROC-AUC is NaN where
    it is 0. With one group this is metric_matrix's ROC-AUC.
    """
    y, logits = _check_inputs(labels, logits)
    w_t = _image_major_weights(weights, y.size)
    codes = _group_codes(groups, y.size)
    probability = sigmoid(logits)
    ranked = np.zeros((len(logits), w_t.shape[1]))  # (S, B) within-group pairs the model orders right
    pairs = np.zeros(w_t.shape[1])
    for group in range(codes.max() + 1):
        members = codes == group
        y_group, w_group = y[members], w_t[members]
        if y_group.min() == y_group.max():
            continue  # one class only: no pair to rank
        group_pairs = (y_group @ w_group) * ((1 - y_group) @ w_group)  # (B,)
        pairs += group_pairs
        for s, p in enumerate(probability):
            auc, _ = _ranking_metrics(y_group, p[members], w_group)
            ranked[s] += np.where(group_pairs > 0, auc, 0) * group_pairs
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"roc_auc": np.where(pairs > 0, ranked / pairs, np.nan), "pairs": pairs}


def within_group_interval(labels, logits, groups, resamples: int = 2000, seed=0, level: float = 0.95) -> Interval:
    """Within-group ROC-AUC's mean over seeds with a percentile interval over resampled test images (seeds fixed)."""
    y, logits = _check_inputs(labels, logits)
    return _image_intervals(y, lambda w: {"roc_auc": within_group_ranking(y, logits, groups, w)["roc_auc"]},
                            len(logits), resamples, seed, level)["roc_auc"]


def within_minus_overall(labels, logits, groups, resamples: int = 2000, seed=0, level: float = 0.95) -> Interval:
    """Within-group minus overall ROC-AUC of one model: mean over seeds, percentile interval over images and seeds.

    Clearly below 0 when part of the ranking comes from telling the groups apart. Resampled
    as paired_differences: the same images and seeds on both sides.
    """
    y, logits = _check_inputs(labels, logits)
    one_group = np.zeros(y.size)

    def difference(w):
        within = within_group_ranking(y, logits, groups, w)["roc_auc"]
        return {"roc_auc": within - within_group_ranking(y, logits, one_group, w)["roc_auc"]}

    return _paired_intervals(y, difference, len(logits), resamples, seed, level)["roc_auc"]


def within_group_difference(labels, logits_a, logits_b, groups, resamples: int = 2000, seed=0,
                            level: float = 0.95) -> Interval:
    """Within-group ROC-AUC of model A minus model B (two ratios), resampled as paired_differences."""
    y, logits_a, logits_b = _check_pair(labels, logits_a, logits_b)

    def difference(w):
        return {"roc_auc": within_group_ranking(y, logits_a, groups, w)["roc_auc"]
                - within_group_ranking(y, logits_b, groups, w)["roc_auc"]}

    return _paired_intervals(y, difference, len(logits_a), resamples, seed, level)["roc_auc"]


def column_alone_scores(train_counts: dict, test_values) -> np.ndarray:
    """Each test image scored by its column value's malignant share in the training data: (n,) in [0, 1].

    train_counts maps a value to its (malignant, benign) training images. A value training
    never saw (or saw with no image) gets the share of all training images.
    """
    counts = {value: (float(m), float(b)) for value, (m, b) in train_counts.items()}
    if not all(np.isfinite(c) and c >= 0 for pair in counts.values() for c in pair):
        raise ValueError(f"training counts must be non-negative (malignant, benign) pairs, got {train_counts}")
    malignant = sum(m for m, _ in counts.values())
    total = sum(m + b for m, b in counts.values())
    if total == 0:
        raise ValueError("the training counts hold no image: no malignant share to score by")
    share = {value: m / (m + b) for value, (m, b) in counts.items() if m + b > 0}
    return np.array([share.get(value, malignant / total) for value in test_values], dtype=float)


def column_alone_intervals(labels, scores, resamples: int = 2000, seed=0, level: float = 0.95) -> dict[str, Interval]:
    """ROC-AUC and average precision of the column-alone scores, with bootstrap_intervals' interval over images."""
    intervals = bootstrap_intervals(labels, _score_logits(scores), 0.5, resamples, seed, level)
    return {m: intervals[m] for m in ("roc_auc", "average_precision")}


def model_minus_column_alone(labels, logits, scores, resamples: int = 2000, seed=0,
                             level: float = 0.95) -> dict[str, Interval]:
    """The model's ROC-AUC and average precision minus the column alone's, resampled as paired_differences."""
    y, logits = _check_inputs(labels, logits)
    column_logits = _score_logits(scores)

    def difference(w):
        model, column = metric_matrix(y, logits, w, 0.5), metric_matrix(y, column_logits, w, 0.5)
        return {m: model[m] - column[m] for m in ("roc_auc", "average_precision")}  # (S, B) − (1, B)

    return _paired_intervals(y, difference, len(logits), resamples, seed, level)


def subgroup_rate(labels, logits, weights, thresholds) -> np.ndarray:
    """Recall of an all-malignant subgroup, or specificity (true-negative rate) of an all-benign one: (S, B).

    labels, logits and weights are the subgroup's images only (say the malignant images of one
    source); thresholds as in metric_matrix. np.ones((1, n)) gives one value per seed,
    resample_weights(labels) the subgroup's bootstrap, bootstrap_intervals its interval.
    """
    y = _check_labels(labels)
    if y.size == 0 or y.min() != y.max():
        raise ValueError("a subgroup rate needs images of one class: pass its malignant or its benign images")
    m = metric_matrix(y, logits, weights, thresholds)
    return m["recall"] if y[0] == 1 else m["accuracy"]  # on benign images alone accuracy is specificity


def calibration_matrix(labels, logits, weights, bins: int = 10) -> dict[str, np.ndarray]:
    """Brier score and expected calibration error of every seed under every row of weights: {"brier", "ece"}: (S, B).

    ECE uses `bins` equal-width probability bins, each (a, b] as in scikit-learn's
    calibration_curve (the first also holds 0): Σ (bin weight / total) · |observed share −
    mean probability|, which is Σ |Σ labels − Σ probabilities| / total over the bins.
    """
    y, logits = _check_inputs(labels, logits)
    w_t = _image_major_weights(weights, y.size)
    probability = sigmoid(logits)
    _, observed, predicted = _bin_sums(y, probability, w_t, bins)  # (S, bins, B)
    total = w_t.sum(axis=0)
    return {"brier": (probability - y) ** 2 @ w_t / total,
            "ece": np.abs(observed - predicted).sum(axis=1) / total}


def calibration_intervals(labels, logits, resamples: int = 2000, seed=0, level: float = 0.95,
                          bins: int = 10) -> dict[str, Interval]:
    """Brier score and ECE: mean over seeds, percentile interval over resampled test images (seeds fixed)."""
    y, logits = _check_inputs(labels, logits)
    return _image_intervals(y, lambda w: calibration_matrix(y, logits, w, bins), len(logits), resamples, seed, level)


def calibration_differences(labels, logits_a, logits_b, resamples: int = 2000, seed=0, level: float = 0.95,
                            bins: int = 10) -> dict[str, Interval]:
    """Brier score and ECE of A minus B, resampled as paired_differences: two ratios, or one model's
    prior-shift corrected logits (A) against its raw ones (B)."""
    y, logits_a, logits_b = _check_pair(labels, logits_a, logits_b)

    def difference(w):
        a, b = calibration_matrix(y, logits_a, w, bins), calibration_matrix(y, logits_b, w, bins)
        return {m: a[m] - b[m] for m in a}

    return _paired_intervals(y, difference, len(logits_a), resamples, seed, level)


def reliability_curve(labels, logits, bins: int = 10) -> dict[str, np.ndarray]:
    """Each seed's reliability diagram over calibration_matrix's bins, for a band over seeds.

    Returns "centre" (bins,) and, each (S, bins), "count" of images, "mean_predicted"
    probability and "observed" malignant share, the last two NaN in an empty bin. Non-empty
    bins give scikit-learn's calibration_curve(strategy="uniform").
    """
    y, logits = _check_inputs(labels, logits)
    count, observed, predicted = (s[..., 0] for s in _bin_sums(y, sigmoid(logits), np.ones((y.size, 1)), bins))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"centre": (np.arange(bins) + 0.5) / bins, "count": count,
                "mean_predicted": np.where(count > 0, predicted / count, np.nan),
                "observed": np.where(count > 0, observed / count, np.nan)}


def prior_shift_logits(logits, train_positive: float, train_negative: float, eval_positive: float,
                       eval_negative: float) -> np.ndarray:
    """Logits corrected for the change of prior: logit + log(eval odds) − log(train odds).

    The same counts as prior_shift_threshold: a corrected probability >= 0.5 picks the images
    whose raw probability is >= that threshold (up to rounding exactly at it).
    """
    counts = (train_positive, train_negative, eval_positive, eval_negative)
    if not all(np.isfinite(c) and c > 0 for c in counts):
        raise ValueError(f"class counts must be positive, got {counts}")
    shift = np.log(eval_positive / eval_negative) - np.log(train_positive / train_negative)
    return np.asarray(logits, dtype=np.float64) + shift


def _bin_sums(y: np.ndarray, probability: np.ndarray, w_t: np.ndarray, bins: int):
    """Per seed and probability bin: weight, labels and probabilities summed under (n, B) weights, three (S, bins, B)."""
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"calibration needs a positive whole number of bins, got {bins!r}")
    n_seeds, n = probability.shape
    edges = np.linspace(0, 1, bins + 1)
    rows = (np.searchsorted(edges[1:-1], probability) + bins * np.arange(n_seeds)[:, None]).ravel()
    columns = np.tile(np.arange(n), n_seeds)

    def summed(values):  # (S, n) values -> (S, bins, B), one sparse product for every seed and resample
        one_hot = sparse.csr_array((np.ravel(values), (rows, columns)), shape=(n_seeds * bins, n))
        return (one_hot @ w_t).reshape(n_seeds, bins, -1)

    return summed(np.ones_like(probability)), summed(np.broadcast_to(y, probability.shape)), summed(probability)


def _image_intervals(y, metrics, n_seeds: int, resamples: int, seed, level: float) -> dict[str, Interval]:
    """bootstrap_intervals for any metrics(weights) -> {name: (S, B)}: seeds fixed, test images resampled."""
    _check_level(level)
    weights = resample_weights(y, resamples, seed)
    point, resampled = metrics(np.ones((1, y.size))), metrics(weights)
    return {m: _percentile_interval(point[m].mean(), resampled[m].mean(axis=0), level, n_seeds) for m in point}


def _paired_intervals(y, differences, n_seeds: int, resamples: int, seed, level: float) -> dict[str, Interval]:
    """paired_differences for any differences(weights) -> {name: (S, B)}, with the resamples it draws from `seed`."""
    _check_level(level)
    images_seed, seeds_seed = np.random.SeedSequence(seed).spawn(2)
    weights = resample_weights(y, resamples, images_seed)
    seed_rows = resample_seeds(n_seeds, resamples, seeds_seed)  # (B, S)
    point, resampled = differences(np.ones((1, y.size))), differences(weights)
    resample_columns = np.arange(resamples)[:, None]
    return {m: _percentile_interval(point[m].mean(), resampled[m][seed_rows, resample_columns].mean(axis=1),
                                    level, n_seeds) for m in point}


def _score_logits(scores) -> np.ndarray:
    """(1, n) logits of scores in [0, 1]; 0 and 1 clipped to finite logits that keep every order and tie
    (shares of a training set are never within 1e-12 of 0 or 1 unless they are 0 or 1)."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1 or not ((scores >= 0) & (scores <= 1)).all():
        raise ValueError(f"scores must be a 1-D array of shares in [0, 1], got shape {scores.shape}")
    clipped = np.clip(scores, 1e-12, 1 - 1e-12)
    return np.log(clipped / (1 - clipped))[None, :]


def _check_pair(labels, logits_a, logits_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape_a, shape_b = np.shape(logits_a), np.shape(logits_b)
    if shape_a != shape_b or len(shape_a) != 2:
        raise ValueError(f"logits_a and logits_b must share one (seeds, images) shape, got {shape_a} and {shape_b}")
    y, logits_a = _check_inputs(labels, logits_a)
    return y, logits_a, _check_inputs(labels, logits_b)[1]


def _group_codes(groups, n: int) -> np.ndarray:
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must hold one value per image ({n}), got shape {groups.shape}")
    try:
        return np.unique(groups, return_inverse=True)[1]
    except TypeError as error:  # None among strings, say
        raise ValueError("groups must be values of one comparable type; fill missing values first") from error


def _image_major_weights(weights, n: int) -> np.ndarray:
    """(B, n) weights as float (n, B), checked as metric_matrix checks them."""
    weights = np.asarray(weights)
    if weights.ndim != 2 or weights.shape[1] != n:
        raise ValueError(f"weights must have shape (resamples, {n}), got {weights.shape}")
    w_t = np.ascontiguousarray(weights.T, dtype=float)
    if (w_t < 0).any() or not (w_t.sum(axis=0) > 0).all():
        raise ValueError("weights must be non-negative with a positive total in every row")
    return w_t


# ---------------------------------------------------------------- helpers

def sigmoid(logits) -> np.ndarray:
    """The probability of a logit, in float64: every probability the project reports is this one."""
    with np.errstate(over="ignore"):  # exp(-logit) overflows to inf for logit < -709: probability 0
        return 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64)))


def _unit_grid(grid) -> np.ndarray:
    if grid is None:
        return np.linspace(0, 1, 101)
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 1 or not ((grid >= 0) & (grid <= 1)).all():
        raise ValueError(f"a curve's grid must be a 1-D array of rates in [0, 1], got {grid!r}")
    return grid


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (precision with nothing predicted)."""
    return np.divide(numerator, denominator, out=np.zeros(np.broadcast(numerator, denominator).shape),
                     where=denominator > 0)


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be a 1-D array of 0/1 (1 = malignant), got shape {labels.shape}")
    return labels.astype(float)


def _check_inputs(labels, logits) -> tuple[np.ndarray, np.ndarray]:
    y = _check_labels(labels)
    logits = np.asarray(logits, dtype=float)
    if logits.ndim != 2 or logits.shape[1] != y.size:
        raise ValueError(f"logits must have shape (seeds, {y.size}) to match the labels, got {logits.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("logits hold non-finite values; a diverged run cannot be scored")
    return y, logits


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
