"""The numbers behind the report, from what the jobs wrote (results.py) through stats.py.

For every (ratio, strategy, model): the seeds' mean with a t interval, the test set's own
noise as a bootstrap interval, operating points chosen on val, and ROC/PR bands. Across
them: paired differences (same test images, same seeds) between ratios and against the
baseline variant, each with a bootstrap interval over test images and seeds. And the few
numbers the findings state from those: what the prior-shift correction removes, the widest
interval over seeds, how many exclusions of 0 chance alone would give, which comparisons
differ in ranking. report.py only words them.

Whether the answer is real (jobs written since the validity checks; older ones get none of
this, so their report reads as it did), for the baseline variant: calibration before and
after the prior-shift correction; for each grouping column of the test images (source,
diagnosis, ...) every value's own ranking and rates and the ratios' differences within it,
and the shortcut check (the column alone, the model within its values); how the split was
made; and each extra evaluation set (`eval:<NAME>`) analysed like test, by the same code.
"""
from dataclasses import dataclass, field, replace

import numpy as np

from ratio_cnn import stats
from ratio_cnn.config import ratio_name
from ratio_cnn.results import COST_KEYS, EVAL_PREFIX, Predictions, RatioResult, Variant, load_predictions
from ratio_cnn.stats import Interval
from ratio_cnn.storage import Storage

RESAMPLES = 2000  # bootstrap resamples: percentiles of 95% intervals settle to ~0.005 by then
BOOTSTRAP_SEED = 0  # the same resamples every time the report is built
COMPARED = ("recall", "precision", "f1", "roc_auc", "average_precision")
BASELINE = "none/simple"  # today's training: what strategies and models are compared against
RECALL_TARGET = 0.80
CHANCE = 0.05  # how often a 95% interval excludes 0 when nothing differs
RANKING = ("roc_auc", "average_precision")  # threshold-free: how well a model ranks images
MIN_IMAGES = 5  # fewer images of a class in a subgroup: its counts, but no interval and no verdict
MAX_VALUES = 20  # a column with more distinct test values names images or lesions, not groups
SUBGROUP_RULES = ("at_threshold", "prior_shift")  # the operating points a subgroup's rates are read at




@dataclass
class OperatingPoint:
    rule: str
    thresholds: np.ndarray  # (S,) probability thresholds, one per seed, chosen on val
    threshold: Interval  # their mean over seeds
    evaluated: dict[str, Interval]  # precision, recall, f1 on the evaluated set at them: mean over seeds, t interval


@dataclass
class VariantAnalysis:
    ratio: float
    variant: Variant
    split: str  # the evaluated set: "test" or "eval:<NAME>"
    evaluated: Predictions  # on that set
    corrected: Predictions  # the same, each logit prior-shift corrected
    seed_intervals: dict[str, dict[str, Interval | None]]  # "val" and the split -> metric -> t interval over seeds
    bootstrap: dict[str, Interval]  # metric on the evaluated set -> interval over its resampled images
    operating_points: dict[str, OperatingPoint]  # by rule key
    roc: tuple
    pr: tuple

    @property
    def label(self) -> str:
        return f"1:{ratio_name(self.ratio)}"

    @property
    def malignant_share(self) -> float:
        """Of the evaluated images: the precision of a model that guesses, where PR curves bottom out."""
        return self.evaluated.labels.mean()

    @property
    def ranks_above_chance(self) -> bool:
        """Its ROC-AUC interval over the evaluated images lies above 0.5."""
        auc = self.bootstrap["roc_auc"]
        return auc.low is not None and auc.low > 0.5


@dataclass
class Comparison:
    a: str  # e.g. "1:5" or "1:2 pos_weight/simple"
    b: str
    rule: str  # which operating point the threshold metrics use
    differences: dict[str, Interval]  # A - B

    def real(self, metric: str) -> bool:
        return stats.verdict(self.differences[metric]) == "real"


@dataclass
class CorrectionEffect:
    """One threshold metric's difference between the extreme ratios, before and after the prior-shift correction."""
    metric: str
    at_threshold: Interval  # highest ratio − lowest, at the threshold
    corrected: Interval  # the same after the correction
    removed: float  # share of the difference the correction removes: < 0 if it grows, NaN if there was none


@dataclass
class Estimate:
    """One metric's mean over seeds, with its interval over seeds and its interval over the evaluated images."""
    seeds: Interval | None
    images: Interval | None


@dataclass
class ReliabilityBand:
    """A reliability diagram over seeds, per probability bin; NaN in a bin no seed's images fall in."""
    predicted: np.ndarray  # (bins,) mean predicted probability, averaged over the seeds with images there
    observed: np.ndarray  # (bins,) malignant share, likewise
    low: np.ndarray  # (bins,) the lowest seed's malignant share
    high: np.ndarray  # (bins,) the highest seed's


@dataclass
class CalibrationCell:
    label: str  # the ratio
    raw: dict[str, Estimate]  # "brier", "ece" of the probabilities as trained
    corrected: dict[str, Estimate]  # after the prior-shift correction
    correction: dict[str, Interval]  # corrected − raw, paired on images and seeds
    reliability: dict[str, ReliabilityBand]  # "raw", "corrected"


@dataclass
class Calibration:
    """The baseline variant's calibration on one evaluated set."""
    cells: list[CalibrationCell]  # lowest ratio first
    raw_difference: dict[str, Interval] | None  # highest ratio − lowest, as trained; None with one ratio
    corrected_difference: dict[str, Interval] | None  # the same after the correction
    improved: list[str]  # ratios whose ECE the correction lowers beyond the noise
    worsened: list[str]  # ratios whose ECE it raises beyond the noise


@dataclass
class SubgroupValue:
    """One value of a grouping column at one ratio: its test images' own metrics."""
    value: str  # "" where the column was empty
    malignant: int
    benign: int
    ranking: dict[str, Estimate]  # roc_auc, average_precision; empty with < MIN_IMAGES of either class
    recall: dict[str, Estimate]  # of its malignant images, by SUBGROUP_RULES key; empty with < MIN_IMAGES of them
    specificity: dict[str, Estimate]  # of its benign images, likewise


@dataclass
class ColumnCheck:
    """One grouping column at one ratio (baseline variant): its subgroups and the shortcut check."""
    column: str
    label: str  # the ratio
    values: list[SubgroupValue]  # most images first
    overall: Interval  # the model's ROC-AUC over every test image (interval over images)
    within: Interval | None  # its ROC-AUC over the malignant–benign pairs that share a value; None without one
    within_minus_overall: Interval | None  # paired on images and seeds
    column_alone: dict[str, Interval] | None  # ROC-AUC, AP of each image's value's training malignant share
    model_minus_column: dict[str, Interval] | None  # the model's minus the column alone's, paired
    determines_label: bool = False  # every training value holds one class: the column restates the label


    @property
    def ranks_worse_within(self) -> bool:
        """Clearly: the interval of within − overall lies below 0."""
        d = self.within_minus_overall
        return d is not None and d.high is not None and d.high < 0

    @property
    def column_ranks_as_well(self) -> bool:
        """The model's ROC-AUC gain over the column alone has an interval that reaches or lies below 0."""
        d = self.model_minus_column
        return d is not None and d["roc_auc"].low is not None and d["roc_auc"].low <= 0

    @property
    def shortcut(self) -> bool:
        return self.ranks_worse_within or self.column_ranks_as_well


@dataclass
class SubgroupComparison:
    """Two ratios within one value of a grouping column (A − B, paired on its images and the seeds)."""
    column: str
    value: str
    a: str
    b: str
    malignant: int
    benign: int
    differences: dict[str, Interval]  # roc_auc, average_precision, recall, specificity (at the threshold): those
    # that have MIN_IMAGES of the classes they need

    def real(self, metric: str) -> bool:
        return stats.verdict(self.differences[metric]) == "real"


@dataclass
class RankingVerdict:
    """Whether one ratio's model ranks test images better than chance and than the best column alone."""
    label: str
    roc_auc: Interval  # over test images
    above_chance: bool  # its interval lies above 0.5
    best_column: str | None  # the column whose value alone ranks test images best at this ratio
    column_alone: Interval | None  # that column's ROC-AUC
    model_minus_column: Interval | None  # paired ROC-AUC gain of the model over it

    @property
    def beats_best_column(self) -> bool:
        d = self.model_minus_column
        return d is not None and d.low is not None and d.low > 0


@dataclass
class SplitDescription:
    """How the jobs split the data (data.split in metrics.json), and the near-duplicates that crossed it."""
    rule: str  # "stable-hash": by each image's identity, not the manifest's row order
    group_by: str | None  # no value of this column straddles train, val and test
    holdout: str | None  # "COL=VALUE": never trained on nor used for val or test
    twins_column: str | None  # the near-duplicate group column, when the data had one
    grouped: bool  # whether the split kept near-duplicate groups together
    test_twins: dict[str, int]  # ratio -> test images with a near-duplicate in that ratio's training sample
    val_twins: dict[str, int]  # likewise for val


@dataclass
class Validity:
    """Subgroups and the shortcut check on test, for the baseline variant; how the split was made."""
    metadata: list[str]  # the metadata columns of the test predictions
    asked: bool  # whether the configuration named the subgroups; else every column with 2–MAX_VALUES test values
    columns: list[str]  # those grouped by
    missing: list[str]  # subgroups the configuration names that predictions.csv lacks
    checks: list[ColumnCheck]  # every column at every ratio
    comparisons: list[SubgroupComparison]  # ratio pairs as the report's (extremes, neighbours), per column and value
    verdicts: list[RankingVerdict]  # one per ratio
    split: SplitDescription | None  # None when the jobs did not say

    @property
    def shortcuts(self) -> list[ColumnCheck]:
        return [c for c in self.checks if c.shortcut]


@dataclass
class EvaluationSet:
    """An extra evaluation set as the jobs described it (data.eval_sets)."""
    name: str
    uri: str
    counts: dict[str, int]  # malignant, benign
    overlap: dict[str, int]  # ratio -> its images that are also in that job's training data
    notes: list[str]  # what the jobs said about the overlap, each once


@dataclass
class Analysis:
    ratios: list[float]  # those that finished (that evaluated this set)
    variant_names: list[str]
    baseline: str
    cells: dict[tuple[float, str], VariantAnalysis]
    ratio_comparisons: list[Comparison] = field(default_factory=list)
    corrected_comparisons: list[Comparison] = field(default_factory=list)
    variant_comparisons: list[Comparison] = field(default_factory=list)
    correction_effects: list[CorrectionEffect] = field(default_factory=list)  # empty with fewer than two ratios
    widest_recall: Interval | None = None  # the baseline's widest recall interval over seeds
    tests: int = 0  # intervals between ratios: each could exclude 0 by chance
    chance_exclusions: float = 0.0  # how many of them would, on average, if no ratio made a difference
    ranking_differs: list[Comparison] = field(default_factory=list)  # ratio comparisons real in ROC-AUC or AP
    ranks_better: list[Comparison] = field(default_factory=list)  # variants with a real gain in ROC-AUC or AP
    ranks_worse: list[Comparison] = field(default_factory=list)  # variants with a real loss in ROC-AUC or AP
    split: str = "test"  # the evaluated set
    evaluation_set: EvaluationSet | None = None  # an extra set's description; None for test
    calibration: Calibration | None = None  # None for jobs from before the validity checks
    validity: Validity | None = None  # likewise; only on test
    extra_sets: list["Analysis"] = field(default_factory=list)  # one per extra evaluation set, baseline variant only
    costs: dict = field(default_factory=dict)  # run_costs: by ratio label, and "run"; empty for jobs before costs

    @property
    def baseline_cells(self) -> list[VariantAnalysis]:
        """The baseline variant at every ratio that has it, lowest ratio first."""
        return [self.cells[(r, self.baseline)] for r in self.ratios if (r, self.baseline) in self.cells]


def analyse(run: Storage, results: list[RatioResult], threshold: float, checks: bool = True) -> Analysis:
    """Every number of the report. checks=False leaves out calibration, subgroups, the shortcut check and the
    extra evaluation sets (history.py needs only the previous run's cells)."""
    done = [r for r in results if r.metrics]
    names = list(dict.fromkeys(v.name for r in done for v in r.variants))
    baseline = BASELINE if BASELINE in names else names[0]
    analysis = analyse_set(run, done, names, baseline, threshold, "test")
    analysis.costs = run_costs(done)
    if checks and any("split" in r.metrics["data"] for r in done):
        analysis.calibration = calibration(analysis)
        analysis.validity = validity(analysis, done)
        for name in dict.fromkeys(n for r in done for n in r.metrics["data"].get("eval_sets", {})):
            evaluated_by = [r for r in done if name in r.metrics["data"].get("eval_sets", {})]
            extra = analyse_set(run, evaluated_by, [baseline], baseline, threshold, EVAL_PREFIX + name)
            extra.evaluation_set = describe_set(name, evaluated_by)
            extra.calibration = calibration(extra)
            analysis.extra_sets.append(extra)
    return analysis


def run_costs(done: list[RatioResult]) -> dict:
    """Each finished job's costs (metrics.json's, docs/operations.md) by its `1:N` label, and the run's:
    every count and second summed, wall time the longest job's. Empty when no job recorded them."""
    by_ratio = {f"1:{ratio_name(r.ratio)}": r.metrics["costs"] for r in done if isinstance(r.metrics.get("costs"), dict)}
    if not by_ratio:
        return {}
    # Summed over the jobs, but wall time: the run's is its longest job's (they run side by side).
    total = {k: sum(c.get(k, 0) for c in by_ratio.values()) for k in COST_KEYS}
    total["wall_seconds"] = max(c.get("wall_seconds", 0.0) for c in by_ratio.values())
    total["device"] = ",".join(sorted({str(c.get("device", "?")) for c in by_ratio.values()}))
    return {**by_ratio, "run": total}


def analyse_set(run: Storage, done: list[RatioResult], names: list[str], baseline: str, threshold: float,
                split: str) -> Analysis:
    """The variants `names` on one evaluated set (test or `eval:<NAME>`): cells, then comparisons between them."""
    cells = {}
    for r in done:
        for v in r.variants:
            if v.name in names:
                cells[(r.ratio, v.name)] = analyse_variant(run, r, v, threshold, prior_counts(r.metrics, split), split)
    analysis = Analysis([r.ratio for r in done], names, baseline, cells, split=split)

    # Ratios against each other, with the baseline variant: the study's question.
    for high, low in ratio_pairs(analysis.baseline_cells):
        analysis.ratio_comparisons.append(compare(high, low, high.label, low.label, "at_threshold"))
        analysis.corrected_comparisons.append(compare(high, low, high.label, low.label, "prior_shift"))
    # Every other strategy and model against the baseline at the same ratio.
    for (ratio, name), cell in cells.items():
        if name != baseline and (ratio, baseline) in cells:
            label = f"1:{ratio_name(ratio)}"
            analysis.variant_comparisons.append(
                compare(cell, cells[(ratio, baseline)], f"{label} {name}", f"{label} {baseline}", "at_threshold"))

    analysis.correction_effects = correction_effects(analysis)
    analysis.widest_recall = widest_recall(analysis)
    analysis.tests = len(analysis.ratio_comparisons) * len(COMPARED)
    analysis.chance_exclusions = CHANCE * analysis.tests
    analysis.ranking_differs = [c for c in analysis.ratio_comparisons if any(c.real(m) for m in RANKING)]
    analysis.ranks_better = [c for c in analysis.variant_comparisons
                             if any(c.real(m) and c.differences[m].mean > 0 for m in RANKING)]
    analysis.ranks_worse = [c for c in analysis.variant_comparisons
                            if any(c.real(m) and c.differences[m].mean < 0 for m in RANKING)]
    return analysis


def ratio_pairs(cells: list[VariantAnalysis]) -> list[tuple[VariantAnalysis, VariantAnalysis]]:
    """(higher ratio, lower ratio) to compare: the extremes (with more than two ratios), then each neighbour."""
    pairs = [(cells[-1], cells[0])] if len(cells) > 2 else []
    return pairs + [(b, a) for a, b in zip(cells, cells[1:])]


def prior_counts(metrics: dict, split: str) -> dict:
    """The malignant and benign counts the prior-shift correction aims at: val's for test (the report never reads
    test's labels to choose anything), an extra set's own for it (a known prior, not its predictions)."""
    if split.startswith(EVAL_PREFIX):
        return metrics["data"]["eval_sets"][split.removeprefix(EVAL_PREFIX)]["counts"]
    return metrics["data"]["counts"]["val"]


def seed_metrics(seed: dict, split: str) -> dict:
    """One seed's metrics.json entry for a split: val, test, or an extra set's under `eval`."""
    return seed["eval"][split.removeprefix(EVAL_PREFIX)] if split.startswith(EVAL_PREFIX) else seed[split]


def analyse_variant(run: Storage, result: RatioResult, variant: Variant, threshold: float, prior: dict,
                    split: str = "test") -> VariantAnalysis:
    """One variant on one evaluated set; every threshold is chosen on the job's own val set."""
    val = load_predictions(run, result, variant, "val")
    evaluated = load_predictions(run, result, variant, split)
    seeds = [variant.seeds[s] for s in evaluated.seeds]
    seed_intervals = {name: {m: stats.seed_interval([seed_metrics(s, name)[m] for s in seeds],
                                                    None if m == "loss" else 1.0) for m in stats.METRICS}
                      for name in ("val", split)}

    # Operating points: chosen on val for each seed, applied to that seed's predictions on the evaluated set.
    rules = {
        "at_threshold": ("threshold", np.full(len(seeds), threshold)),
        "best_f1": ("best F1 on val", np.array([stats.best_f1_threshold(val.labels, row) for row in val.logits])),
        "recall": (f"val recall ≥ {RECALL_TARGET:.2f}",
                   np.array([stats.recall_threshold(val.labels, row, RECALL_TARGET) for row in val.logits])),
        # The logit shifted by log(evaluation odds) - log(training odds), then 0.5.
        "prior_shift": ("0.5 after prior-shift correction", np.array([
            stats.prior_shift_threshold(s["train"]["odds"], 1.0, prior["malignant"], prior["benign"]) for s in seeds])),
    }
    operating_points = {}
    ones = np.ones((1, len(evaluated.labels)))
    for key, (rule, thresholds) in rules.items():
        per_seed = stats.metric_matrix(evaluated.labels, evaluated.logits, ones, thresholds)
        operating_points[key] = OperatingPoint(rule, thresholds, stats.seed_interval(thresholds),
                                               {m: stats.seed_interval(per_seed[m][:, 0]) for m in ("precision", "recall", "f1")})
    corrected = np.stack([stats.prior_shift_logits(row, s["train"]["odds"], 1.0, prior["malignant"], prior["benign"])
                          for row, s in zip(evaluated.logits, seeds)])
    return VariantAnalysis(
        ratio=result.ratio, variant=variant, split=split, evaluated=evaluated,
        corrected=replace(evaluated, logits=corrected), seed_intervals=seed_intervals,
        bootstrap=stats.bootstrap_intervals(evaluated.labels, evaluated.logits, threshold, RESAMPLES, BOOTSTRAP_SEED),
        operating_points=operating_points, roc=stats.roc_band(evaluated.labels, evaluated.logits),
        pr=stats.pr_band(evaluated.labels, evaluated.logits))


def correction_effects(a: Analysis) -> list[CorrectionEffect]:
    """Recall, precision and F1 of the first ratio comparison (the extremes), at the threshold and corrected."""
    if not a.ratio_comparisons:
        return []
    effects = []
    for metric in ("recall", "precision", "f1"):
        before, after = a.ratio_comparisons[0].differences[metric], a.corrected_comparisons[0].differences[metric]
        removed = 1 - abs(after.mean) / abs(before.mean) if abs(before.mean) > 1e-9 else float("nan")
        effects.append(CorrectionEffect(metric, before, after, removed))
    return effects


def widest_recall(a: Analysis) -> Interval | None:
    """The baseline's recall interval over seeds (on the evaluated set) with the largest high − low."""
    def width(i: Interval) -> float:
        return 0.0 if i.low is None else i.high - i.low

    return max((c.seed_intervals[c.split]["recall"] for c in a.cells.values()
                if c.variant.name == a.baseline and c.seed_intervals[c.split]["recall"]), key=width, default=None)


def paired(a: VariantAnalysis, b: VariantAnalysis) -> tuple[list[int], list[str]]:
    """The seeds both trained and the evaluated images both saw, in A's order."""
    images_b = set(b.evaluated.images)
    return [s for s in a.evaluated.seeds if s in b.evaluated.seeds], [n for n in a.evaluated.images if n in images_b]


def seed_thresholds(cell: VariantAnalysis, rule: str, seeds: list[int]) -> np.ndarray:
    """The operating point's thresholds of those seeds."""
    return cell.operating_points[rule].thresholds[[cell.evaluated.seeds.index(s) for s in seeds]]


def compare(a: VariantAnalysis, b: VariantAnalysis, label_a: str, label_b: str, rule: str) -> Comparison:
    """A - B on the evaluated images both saw, over the seeds both trained (paired on both)."""
    seeds, images = paired(a, b)
    ta, tb = a.evaluated.subset(seeds, images), b.evaluated.subset(seeds, images)
    differences = stats.paired_differences(ta.labels, ta.logits, tb.logits, seed_thresholds(a, rule, seeds),
                                           seed_thresholds(b, rule, seeds), RESAMPLES, BOOTSTRAP_SEED)
    return Comparison(label_a, label_b, rule, {m: differences[m] for m in COMPARED})


# ---------------------------------------------------------------- calibration

def calibration(a: Analysis) -> Calibration:
    """Brier score and ECE of the baseline at every ratio, as trained and prior-shift corrected (each seed's
    training odds to the evaluated set's prior, as the prior-shift operating point), and between the extremes."""
    cells = a.baseline_cells
    out = []
    for c in cells:
        change = stats.calibration_differences(c.evaluated.labels, c.corrected.logits, c.evaluated.logits,
                                               RESAMPLES, BOOTSTRAP_SEED)
        out.append(CalibrationCell(c.label, calibration_estimates(c.evaluated), calibration_estimates(c.corrected),
                                   change, {"raw": reliability_band(c.evaluated),
                                            "corrected": reliability_band(c.corrected)}))
    raw_difference = corrected_difference = None
    if len(cells) > 1:
        high, low = cells[-1], cells[0]
        seeds, images = paired(high, low)
        raw_difference, corrected_difference = (
            stats.calibration_differences(high_p.labels, high_p.logits, low_p.logits, RESAMPLES, BOOTSTRAP_SEED)
            for high_p, low_p in ((high.evaluated.subset(seeds, images), low.evaluated.subset(seeds, images)),
                                  (high.corrected.subset(seeds, images), low.corrected.subset(seeds, images))))
    return Calibration(out, raw_difference, corrected_difference,
                       improved=[c.label for c in out if c.correction["ece"].high is not None
                                 and c.correction["ece"].high < 0],
                       worsened=[c.label for c in out if c.correction["ece"].low is not None
                                 and c.correction["ece"].low > 0])


def calibration_estimates(p: Predictions) -> dict[str, Estimate]:
    per_seed = stats.calibration_matrix(p.labels, p.logits, np.ones((1, len(p.labels))))
    images = stats.calibration_intervals(p.labels, p.logits, RESAMPLES, BOOTSTRAP_SEED)
    return {m: Estimate(stats.seed_interval(per_seed[m][:, 0]), images[m]) for m in ("brier", "ece")}


def reliability_band(p: Predictions) -> ReliabilityBand:
    curve = stats.reliability_curve(p.labels, p.logits)
    filled = curve["count"] > 0  # (S, bins)
    seeds_there = filled.sum(axis=0)
    empty = seeds_there == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        predicted, observed = (np.where(empty, np.nan, np.where(filled, curve[k], 0).sum(axis=0) / seeds_there)
                               for k in ("mean_predicted", "observed"))
    low = np.where(empty, np.nan, np.where(filled, curve["observed"], np.inf).min(axis=0))
    high = np.where(empty, np.nan, np.where(filled, curve["observed"], -np.inf).max(axis=0))
    return ReliabilityBand(predicted, observed, low, high)


# ---------------------------------------------------------------- subgroups and the shortcut check

def validity(a: Analysis, done: list[RatioResult]) -> Validity:
    """The baseline variant on test, per grouping column: every value's metrics, the ratios within each value,
    and the shortcut check; then, per ratio, whether it ranks above chance and above the best column alone."""
    cells = a.baseline_cells
    metrics = {r.ratio: r.metrics for r in done}
    metadata = [c for c in cells[0].evaluated.metadata if all(c in cell.evaluated.metadata for cell in cells)]
    asked = done[0].metrics["config"].get("subgroups", [])
    if asked:
        columns, missing = [c for c in asked if c in metadata], [c for c in asked if c not in metadata]
    else:
        test_values = cells[0].evaluated.metadata
        columns, missing = [c for c in metadata if 2 <= len(set(test_values[c]) - {""}) <= MAX_VALUES], []
    checks = [column_check(c, column, metrics[c.ratio]["data"].get("train_values", {}).get(column))
              for column in columns for c in cells]
    comparisons = [comparison for column in columns for high, low in ratio_pairs(cells)
                   for comparison in subgroup_comparisons(high, low, column)]
    verdicts = []
    for c in cells:
        alone = [k for k in checks if k.label == c.label and k.column_alone]
        best = max(alone, key=lambda k: k.column_alone["roc_auc"].mean, default=None)
        verdicts.append(RankingVerdict(c.label, c.bootstrap["roc_auc"], c.ranks_above_chance,
                                       best.column if best else None, best.column_alone["roc_auc"] if best else None,
                                       best.model_minus_column["roc_auc"] if best else None))
    return Validity(metadata, bool(asked), columns, missing, checks, comparisons, verdicts, describe_split(done))


def values_by_size(groups: np.ndarray) -> list[str]:
    """A column's values, the most images first."""
    values, counts = np.unique(groups, return_counts=True)
    return [str(v) for _, v in sorted(zip(-counts, values))]


def column_check(cell: VariantAnalysis, column: str, train_values: dict | None) -> ColumnCheck:
    p = cell.evaluated
    groups = p.metadata[column]
    values = [subgroup_value(cell, groups == value, value) for value in values_by_size(groups)]
    within = difference = alone = gain = None
    if any(v.malignant and v.benign for v in values):  # else no pair shares a value
        within = stats.within_group_interval(p.labels, p.logits, groups, RESAMPLES, BOOTSTRAP_SEED)
        difference = stats.within_minus_overall(p.labels, p.logits, groups, RESAMPLES, BOOTSTRAP_SEED)
    # A column whose every training value holds one class (a diagnosis: melanoma is malignant) is the
    # label written another way, not something an image could give away: no column-alone score for it.
    determines_label = bool(train_values) and all(min(c["malignant"], c["benign"]) == 0 for c in train_values.values())
    if train_values and not determines_label:
        scores = stats.column_alone_scores({v: (c["malignant"], c["benign"]) for v, c in train_values.items()}, groups)
        alone = stats.column_alone_intervals(p.labels, scores, RESAMPLES, BOOTSTRAP_SEED)
        gain = stats.model_minus_column_alone(p.labels, p.logits, scores, RESAMPLES, BOOTSTRAP_SEED)
    return ColumnCheck(column, cell.label, values, cell.bootstrap["roc_auc"], within, difference, alone, gain,
                       determines_label)


def subgroup_value(cell: VariantAnalysis, mask: np.ndarray, value: str) -> SubgroupValue:
    p = cell.evaluated.where(mask)
    malignant = int(p.labels.sum())
    benign = len(p.labels) - malignant
    ranking = {}
    if malignant >= MIN_IMAGES and benign >= MIN_IMAGES:
        per_seed = stats.metric_matrix(p.labels, p.logits, np.ones((1, len(p.labels))), 0.5)
        images = stats.bootstrap_intervals(p.labels, p.logits, 0.5, RESAMPLES, BOOTSTRAP_SEED)
        ranking = {m: Estimate(stats.seed_interval(per_seed[m][:, 0]), images[m]) for m in RANKING}
    return SubgroupValue(value, malignant, benign, ranking, class_rates(cell, p.where(p.labels == 1)),
                         class_rates(cell, p.where(p.labels == 0)))


def class_rates(cell: VariantAnalysis, p: Predictions) -> dict[str, Estimate]:
    """Recall of a subgroup's malignant images, or specificity of its benign ones, at each of SUBGROUP_RULES."""
    if len(p.labels) < MIN_IMAGES:
        return {}
    rates = {}
    for rule in SUBGROUP_RULES:
        thresholds = cell.operating_points[rule].thresholds
        per_seed = stats.subgroup_rate(p.labels, p.logits, np.ones((1, len(p.labels))), thresholds)[:, 0]
        # subgroup_rate's own metric: on one class's images, recall or (benign) accuracy, which is specificity
        metric = "recall" if p.labels[0] == 1 else "accuracy"
        images = stats.bootstrap_intervals(p.labels, p.logits, thresholds, RESAMPLES, BOOTSTRAP_SEED)[metric]
        rates[rule] = Estimate(stats.seed_interval(per_seed), images)
    return rates


def subgroup_comparisons(a: VariantAnalysis, b: VariantAnalysis, column: str) -> list[SubgroupComparison]:
    """A − B within each value of the column: ranking, and recall and specificity at the threshold."""
    seeds, images = paired(a, b)
    pa, pb = a.evaluated.subset(seeds, images), b.evaluated.subset(seeds, images)
    thresholds = [seed_thresholds(cell, "at_threshold", seeds) for cell in (a, b)]
    groups = pa.metadata[column]
    comparisons = []
    for value in values_by_size(groups):
        in_value = groups == value
        malignant = int(pa.labels[in_value].sum())
        benign = int(in_value.sum()) - malignant
        differences = {}
        if malignant >= MIN_IMAGES:
            d = stats.paired_differences(pa.labels[in_value], pa.logits[:, in_value], pb.logits[:, in_value],
                                         *thresholds, RESAMPLES, BOOTSTRAP_SEED)
            differences["recall"] = d["recall"]
            if benign >= MIN_IMAGES:
                differences.update({m: d[m] for m in RANKING})
        if benign >= MIN_IMAGES:
            kept = in_value & (pa.labels == 0)
            d = stats.paired_differences(pa.labels[kept], pa.logits[:, kept], pb.logits[:, kept], *thresholds,
                                         RESAMPLES, BOOTSTRAP_SEED)
            differences["specificity"] = d["accuracy"]  # on benign images alone accuracy is specificity
        comparisons.append(SubgroupComparison(column, value, a.label, b.label, malignant, benign, differences))
    return comparisons


# ---------------------------------------------------------------- the split and the extra sets, as the jobs said

def describe_split(done: list[RatioResult]) -> SplitDescription | None:
    split = done[0].metrics["data"].get("split")
    if split is None:
        return None
    twins = {f"1:{ratio_name(r.ratio)}": (r.metrics["data"].get("split") or {}).get("near_duplicates") for r in done}
    twins = {label: t for label, t in twins.items() if t}
    first = next(iter(twins.values()), None)
    return SplitDescription(split["rule"], split.get("group_by"), split.get("holdout"),
                            first["column"] if first else None, bool(first and first["grouped"]),
                            {label: t["test_with_twin_in_train"] for label, t in twins.items()},
                            {label: t["val_with_twin_in_train"] for label, t in twins.items()})


def describe_set(name: str, done: list[RatioResult]) -> EvaluationSet:
    described = {f"1:{ratio_name(r.ratio)}": r.metrics["data"]["eval_sets"][name] for r in done}
    first = next(iter(described.values()))
    return EvaluationSet(name, first["uri"], first["counts"],
                         {label: d["overlap_with_train"] for label, d in described.items()},
                         list(dict.fromkeys(d["overlap_note"] for d in described.values() if d.get("overlap_note"))))
