"""The numbers behind the report, from what the jobs wrote (results.py) through stats.py.

For every (ratio, strategy, model): the seeds' mean with a t interval, the test set's own
noise as a bootstrap interval, operating points chosen on val, and ROC/PR bands. Across
them: paired differences (same test images, same seeds) between ratios and against the
baseline variant, each with a bootstrap interval over test images and seeds. And the few
numbers the findings state from those: what the prior-shift correction removes, the widest
interval over seeds, how many exclusions of 0 chance alone would give, which comparisons
differ in ranking. report.py only words them.
"""
from dataclasses import dataclass, field

import numpy as np

from ratio_cnn import stats
from ratio_cnn.config import ratio_name
from ratio_cnn.results import Predictions, RatioResult, Variant, load_predictions
from ratio_cnn.stats import Interval
from ratio_cnn.storage import Storage

RESAMPLES = 2000  # bootstrap resamples: percentiles of 95% intervals settle to ~0.005 by then
BOOTSTRAP_SEED = 0  # the same resamples every time the report is built
COMPARED = ("recall", "precision", "f1", "roc_auc", "average_precision")
BASELINE = "none/simple"  # today's training: what strategies and models are compared against
RECALL_TARGET = 0.80
CHANCE = 0.05  # how often a 95% interval excludes 0 when nothing differs
RANKING = ("roc_auc", "average_precision")  # threshold-free: how well a model ranks images


@dataclass
class OperatingPoint:
    rule: str
    thresholds: np.ndarray  # (S,) probability thresholds, one per seed
    threshold: Interval  # their mean over seeds
    test: dict[str, Interval]  # precision, recall, f1 at those thresholds: mean over seeds, t interval


@dataclass
class VariantAnalysis:
    ratio: float
    variant: Variant
    test: Predictions
    seed_intervals: dict[str, dict[str, Interval | None]]  # split -> metric -> t interval over seeds
    bootstrap: dict[str, Interval]  # test metric -> interval over resampled test images
    operating_points: dict[str, OperatingPoint]  # by rule key
    roc: tuple
    pr: tuple

    @property
    def label(self) -> str:
        return f"1:{ratio_name(self.ratio)}"

    @property
    def malignant_share(self) -> float:
        """Of the test images: the precision of a model that guesses, where PR curves bottom out."""
        return self.test.labels.mean()


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
class Analysis:
    ratios: list[float]  # those that finished
    variant_names: list[str]
    baseline: str
    cells: dict[tuple[float, str], VariantAnalysis]
    ratio_comparisons: list[Comparison] = field(default_factory=list)
    corrected_comparisons: list[Comparison] = field(default_factory=list)
    variant_comparisons: list[Comparison] = field(default_factory=list)
    correction_effects: list[CorrectionEffect] = field(default_factory=list)  # empty with fewer than two ratios
    widest_recall: Interval | None = None  # the baseline's widest test-recall interval over seeds
    tests: int = 0  # intervals between ratios: each could exclude 0 by chance
    chance_exclusions: float = 0.0  # how many of them would, on average, if no ratio made a difference
    ranking_differs: list[Comparison] = field(default_factory=list)  # ratio comparisons real in ROC-AUC or AP
    ranks_better: list[Comparison] = field(default_factory=list)  # variants with a real gain in ROC-AUC or AP
    ranks_worse: list[Comparison] = field(default_factory=list)  # variants with a real loss in ROC-AUC or AP

    @property
    def baseline_cells(self) -> list[VariantAnalysis]:
        """The baseline variant at every ratio that has it, lowest ratio first."""
        return [self.cells[(r, self.baseline)] for r in self.ratios if (r, self.baseline) in self.cells]


def analyse(run: Storage, results: list[RatioResult], threshold: float) -> Analysis:
    done = [r for r in results if r.metrics]
    names = list(dict.fromkeys(v.name for r in done for v in r.variants))
    baseline = BASELINE if BASELINE in names else names[0]
    cells = {}
    for r in done:
        counts = r.metrics["data"]["counts"]["val"]
        for v in r.variants:
            cells[(r.ratio, v.name)] = analyse_variant(run, r, v, threshold, counts)
    analysis = Analysis([r.ratio for r in done], names, baseline, cells)

    # Ratios against each other, with the baseline variant: the study's question.
    ratios = [r for r in analysis.ratios if (r, baseline) in cells]
    pairs = [(ratios[-1], ratios[0])] if len(ratios) > 2 else []
    pairs += [(b, a) for a, b in zip(ratios, ratios[1:])]
    for high, low in pairs:
        a, b = cells[(high, baseline)], cells[(low, baseline)]
        analysis.ratio_comparisons.append(compare(a, b, a.label, b.label, "at_threshold"))
        analysis.corrected_comparisons.append(compare(a, b, a.label, b.label, "prior_shift"))
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


def analyse_variant(run: Storage, result: RatioResult, variant: Variant, threshold: float,
                    eval_counts: dict) -> VariantAnalysis:
    val = load_predictions(run, result, variant, "val")
    test = load_predictions(run, result, variant, "test")
    seeds = [variant.seeds[s] for s in test.seeds]
    seed_intervals = {split: {m: stats.seed_interval([s[split][m] for s in seeds], None if m == "loss" else 1.0) for m in stats.METRICS}
                      for split in ("val", "test")}

    # Operating points: chosen on val for each seed, applied to that seed's test predictions.
    rules = {
        "at_threshold": ("threshold", np.full(len(seeds), threshold)),
        "best_f1": ("best F1 on val", np.array([stats.best_f1_threshold(val.labels, row) for row in val.logits])),
        "recall": (f"val recall ≥ {RECALL_TARGET:.2f}",
                   np.array([stats.recall_threshold(val.labels, row, RECALL_TARGET) for row in val.logits])),
        # The logit shifted by log(evaluation odds) - log(training odds), then 0.5.
        "prior_shift": ("0.5 after prior-shift correction", np.array([
            stats.prior_shift_threshold(s["train"]["odds"], 1.0, eval_counts["malignant"], eval_counts["benign"])
            for s in seeds])),
    }
    operating_points = {}
    for key, (rule, thresholds) in rules.items():
        per_seed = stats.metric_matrix(test.labels, test.logits, np.ones((1, len(test.labels))), thresholds)
        operating_points[key] = OperatingPoint(rule, thresholds, stats.seed_interval(thresholds),
                                               {m: stats.seed_interval(per_seed[m][:, 0]) for m in ("precision", "recall", "f1")})
    return VariantAnalysis(
        ratio=result.ratio, variant=variant, test=test, seed_intervals=seed_intervals,
        bootstrap=stats.bootstrap_intervals(test.labels, test.logits, threshold, RESAMPLES, BOOTSTRAP_SEED),
        operating_points=operating_points, roc=stats.roc_band(test.labels, test.logits),
        pr=stats.pr_band(test.labels, test.logits))


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
    """The baseline's test-recall interval over seeds with the largest high − low."""
    # `or` reads a bound of 0.0 as missing, like None: kept so that no reported number changes
    return max((c.seed_intervals["test"]["recall"] for c in a.cells.values()
                if c.variant.name == a.baseline and c.seed_intervals["test"]["recall"]),
               key=lambda i: (i.high or i.mean) - (i.low or i.mean), default=None)


def compare(a: VariantAnalysis, b: VariantAnalysis, label_a: str, label_b: str, rule: str) -> Comparison:
    """A - B on the test images both saw, over the seeds both trained (paired on both)."""
    seeds = [s for s in a.test.seeds if s in b.test.seeds]
    images = [n for n in a.test.images if n in set(b.test.images)]
    ta, tb = a.test.subset(seeds, images), b.test.subset(seeds, images)
    thresholds = [point.thresholds[[point_seeds.index(s) for s in seeds]]
                  for point, point_seeds in ((a.operating_points[rule], a.test.seeds),
                                             (b.operating_points[rule], b.test.seeds))]
    differences = stats.paired_differences(ta.labels, ta.logits, tb.logits, *thresholds, RESAMPLES, BOOTSTRAP_SEED)
    return Comparison(label_a, label_b, rule, {m: differences[m] for m in COMPARED})
