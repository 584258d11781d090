"""The report's validity checks on constructed run folders: a planted shortcut is flagged at the top of the
Findings, subgroup and calibration numbers equal scikit-learn and hand computations, extra evaluation sets get
their own sections with thresholds chosen on val, the split is stated, and older runs render without any of it."""
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, recall_score, roc_auc_score

from ratio_cnn import stats
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.report import write_report
from runs import ExtraSet, write_job

SEEDS = (0, 1, 2)
SPLIT = {"rule": "stable-hash", "group_by": None, "holdout": None, "near_duplicates": None}


def sourced_labels(groups: dict[str, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and a `source` value per image: groups maps a source to its (malignant, benign) images."""
    y = np.concatenate([np.r_[np.ones(m, int), np.zeros(b, int)] for m, b in groups.values()])
    source = np.concatenate([[name] * (m + b) for name, (m, b) in groups.items()])
    return y, source


# Source a: half malignant; source b: one in twelve. Telling them apart ranks images without looking at lesions.
SOURCES = {"a": (60, 60), "b": (15, 165)}
TRAIN_VALUES = {"source": {"a": {"malignant": 100, "benign": 100}, "b": {"malignant": 30, "benign": 330}}}


def validity_job(run, ratio, logits_of, y, metadata, data=None, **kwargs):
    """A job written as jobs write since the validity checks; logits_of(seed, split) gives each seed's logits."""
    logits = {s: (logits_of(s, 1), logits_of(s, 2)) for s in SEEDS}
    return write_job(run, ratio, logits, y=y, metadata=metadata,
                     data={"columns": list(metadata), "train_values": TRAIN_VALUES, "split": SPLIT, **(data or {})},
                     **kwargs)


def shortcut_logits(y, source, ratio):
    """A model that learnt the source and nothing of the lesion: its logit is the source's malignant share."""
    share = np.array([{"a": 0.5, "b": 15 / 180}[s] for s in source])
    return lambda seed, split: (np.log(share / (1 - share))
                                + np.random.default_rng([int(ratio), seed, split]).normal(0, 0.05, len(y)))


def lesion_logits(y, ratio):
    """A model that ranks by the lesion alone, whatever the source."""
    return lambda seed, split: 1.5 * (2 * y - 1) + np.random.default_rng([int(ratio), seed, split]).normal(0, 1, len(y))


def test_a_planted_shortcut_opens_the_findings(tmp_path):
    run = tmp_path / "run-s"
    y, source = sourced_labels(SOURCES)
    for ratio in (1, 3):
        validity_job(run, ratio, shortcut_logits(y, source, ratio), y, {"source": list(source)})
    written = write_report(str(run))
    checks = written.analysis.validity.checks
    assert [(k.column, k.label) for k in checks] == [("source", "1:1"), ("source", "1:3")]
    for k in checks:
        assert k.overall.mean > 0.7 and abs(k.within.mean - 0.5) < 0.1
        assert k.within_minus_overall.high < 0  # clearly lower within the sources
        assert k.column_ranks_as_well and k.shortcut
    findings = written.markdown.split("## Findings\n\n")[1]
    assert findings.startswith("> **⚠ Shortcut (`source`)**: within each value of `source` the models rank clearly "
                               "worse than over all test images")
    assert "`source` alone, without looking at an image, ranks test images as well as the model" in findings
    assert findings.index("⚠ Shortcut") < findings.index("In plain words")
    verdict = next(line for line in findings.splitlines() if line.startswith("- **1:1** "))
    assert "ranks test images better than chance" in verdict and "not better than the best column alone, `source`" \
        in verdict
    shortcut = written.markdown.split("## Shortcut check")[1].split("\n## ")[0]
    assert "| `source` | 1:1 |" in shortcut and shortcut.count("| ⚠ |") == 2


def test_a_model_that_ranks_within_the_sources_is_not_flagged(tmp_path):
    run = tmp_path / "run-l"
    y, source = sourced_labels(SOURCES)
    for ratio in (1, 3):
        validity_job(run, ratio, lesion_logits(y, ratio), y, {"source": list(source)})
    written = write_report(str(run))
    validity = written.analysis.validity
    assert validity.checks and not validity.shortcuts
    for k in validity.checks:
        assert k.within_minus_overall.low < 0 < k.within_minus_overall.high
        assert k.model_minus_column["roc_auc"].low > 0.1
    assert "⚠ Shortcut" not in written.markdown
    assert "- **1:3** ranks test images better than chance" in written.markdown
    assert "better than the best column alone, `source`" in written.markdown


def test_subgroup_metrics_equal_scikit_learn_on_the_subset(tmp_path):
    run = tmp_path / "run-g"
    y, source = sourced_labels({"a": (30, 90), "b": (20, 110), "c": (2, 3)})  # c: too few for any interval
    site = np.where(np.arange(len(y)) % 2 == 0, "head", "trunk")
    logits = {ratio: {(s, split): noisy for s in SEEDS for split in (1, 2)
                      for noisy in [np.random.default_rng([ratio, s, split]).normal(0, 1, len(y)) + y - 1.5]}
              for ratio in (1, 2)}
    for ratio in (1, 2):
        validity_job(run, ratio, lambda s, split: logits[ratio][(s, split)], y,
                     {"source": list(source), "site": list(site), "lesion": [f"L{i}" for i in range(len(y))]},
                     config={"subgroups": ["source"]})
    written = write_report(str(run))
    validity = written.analysis.validity
    assert validity.columns == ["source"] and validity.asked  # as configured: not site, nor the identifier
    test = np.stack([logits[1][(s, 2)] for s in SEEDS])
    cell = written.analysis.cells[(1.0, "none/simple")]
    [check] = [k for k in validity.checks if k.label == "1:1"]
    values = {v.value: v for v in check.values}
    assert [v.value for v in check.values] == ["b", "a", "c"]  # most images first
    a = source == "a"
    probability = stats.sigmoid(test[:, a])
    auc = np.mean([roc_auc_score(y[a], p) for p in probability])
    ap = np.mean([average_precision_score(y[a], p) for p in probability])
    assert values["a"].ranking["roc_auc"].seeds.mean == pytest.approx(auc, abs=1e-12)
    assert values["a"].ranking["roc_auc"].images.mean == pytest.approx(auc, abs=1e-12)
    assert values["a"].ranking["average_precision"].seeds.mean == pytest.approx(ap, abs=1e-12)
    recall = np.mean([recall_score(y[a], p >= 0.5) for p in probability])
    assert values["a"].recall["at_threshold"].seeds.mean == pytest.approx(recall, abs=1e-12)
    thresholds = cell.operating_points["prior_shift"].thresholds
    specificity = np.mean([recall_score(y[a], p >= t, pos_label=0) for p, t in zip(probability, thresholds)])
    assert values["a"].specificity["prior_shift"].seeds.mean == pytest.approx(specificity, abs=1e-12)
    assert (values["c"].malignant, values["c"].benign) == (2, 3)
    assert values["c"].ranking == {} and values["c"].recall == {} and values["c"].specificity == {}

    section = written.markdown.split("## Subgroups")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| 1:1 | `a` | 30 + 90 | "))
    assert row.split(" | ")[3].startswith(f"{auc:.3f} [")
    assert "| 1:1 | `c` | 2 + 3 | too few for an interval | too few for an interval | too few for an interval |" in section
    [within_a] = [c for c in validity.comparisons if c.value == "a"]
    assert (within_a.a, within_a.b) == ("1:2", "1:1") and set(within_a.differences) == {
        "roc_auc", "average_precision", "recall", "specificity"}
    [within_c] = [c for c in validity.comparisons if c.value == "c"]
    assert within_c.differences == {}
    assert "| 1:2 − 1:1 | `c` | too few for an interval |" in section


def test_an_extra_set_gets_its_own_section_with_thresholds_chosen_on_val(tmp_path):
    run = tmp_path / "run-e"
    y, source = sourced_labels(SOURCES)
    external = np.r_[np.ones(30, int), np.zeros(120, int)]
    shifted = {(ratio, s): np.random.default_rng([ratio, s, 9]).normal(0, 1, len(external)) + 0.8 * external + 1.0
               for ratio in (1, 4) for s in SEEDS}  # scores sit higher there: thresholds chosen on it would differ
    for ratio in (1, 4):
        extra = ExtraSet(external, {s: shifted[(ratio, s)] for s in SEEDS}, overlap=3 if ratio == 4 else 0)
        validity_job(run, ratio, lesion_logits(y, ratio), y, {"source": list(source)},
                     extra_sets={"external": extra})
    written = write_report(str(run))
    [extra] = written.analysis.extra_sets
    assert extra.split == "eval:external" and extra.evaluation_set.counts == {"malignant": 30, "benign": 120}
    for ratio in (1.0, 4.0):
        test_cell, cell = written.analysis.cells[(ratio, "none/simple")], extra.cells[(ratio, "none/simple")]
        val = lesion_logits(y, ratio)
        for rule, choose in (("best_f1", stats.best_f1_threshold), ("recall", stats.recall_threshold)):
            on_val = [choose(y, val(s, 1)) for s in SEEDS]
            np.testing.assert_array_equal(cell.operating_points[rule].thresholds, on_val)
            np.testing.assert_array_equal(cell.operating_points[rule].thresholds,
                                          test_cell.operating_points[rule].thresholds)
            on_external = [choose(external, shifted[(int(ratio), s)]) for s in SEEDS]
            assert not np.allclose(on_val, on_external)
        odds = 293 / round(ratio * 293)
        assert cell.operating_points["prior_shift"].thresholds[0] == pytest.approx(
            stats.prior_shift_threshold(odds, 1.0, 30, 120))  # the set's own prior
        recall = np.mean([recall_score(external, stats.sigmoid(shifted[(int(ratio), s)]) >= t)
                          for s, t in zip(SEEDS, cell.operating_points["best_f1"].thresholds)])
        assert cell.operating_points["best_f1"].evaluated["recall"].mean == pytest.approx(recall, abs=1e-12)
        auc = np.mean([roc_auc_score(external, shifted[(int(ratio), s)]) for s in SEEDS])
        assert cell.bootstrap["roc_auc"].mean == pytest.approx(auc, abs=1e-12)
    assert [(c.a, c.b) for c in extra.ratio_comparisons] == [("1:4", "1:1")]

    report = written.markdown
    section = report.split("## Evaluation set `external`")[1].split("\n## ")[0]
    for heading in ("### Ratios compared on `external`", "### Summary on `external`",
                    "### Operating points on `external`", "### Calibration on `external`"):
        assert heading in section
    assert "never on this set" in section and "| 1:4 − 1:1 | 0.5 |" in section
    assert "> ⚠ Images also in the training data: 1:1 0, 1:4 3." in section
    assert "> **⚠ Evaluation set `external` overlaps training**" in report.split("In plain words")[0]
    assert "- **On `external`** (ROC-AUC over its images): 1:1 " in report
    assert (run / "reliability-external.png").stat().st_size > 10_000


def test_calibration_equals_a_hand_computation(tmp_path):
    run = tmp_path / "run-c"
    y, source = sourced_labels(SOURCES)
    for ratio in (1, 5):
        validity_job(run, ratio, lambda s, split: lesion_logits(y, ratio)(s, split) - np.log(ratio), y,
                     {"source": list(source)})
    written = write_report(str(run))
    calibration = written.analysis.calibration
    val_m, val_b = int(y.sum()), int(len(y) - y.sum())
    by_hand = {}
    for ratio in (1, 5):
        raw = np.stack([lesion_logits(y, ratio)(s, 2) - np.log(ratio) for s in SEEDS])
        odds = 293 / round(ratio * 293)
        corrected = raw + np.log(val_m / val_b) - np.log(odds)
        for kind, logits in (("raw", raw), ("corrected", corrected)):
            probability = 1 / (1 + np.exp(-logits))
            brier = np.mean([brier_score_loss(y, p) for p in probability])
            ece = np.mean([sum(abs(y[in_bin].sum() - p[in_bin].sum()) for k in range(10)
                               for in_bin in [((p > k / 10) | (k == 0)) & (p <= (k + 1) / 10)]) / len(y)
                           for p in probability])
            by_hand[(ratio, kind)] = brier, ece
    for cell, ratio in zip(calibration.cells, (1, 5)):
        for kind, estimates in (("raw", cell.raw), ("corrected", cell.corrected)):
            brier, ece = by_hand[(ratio, kind)]
            assert estimates["brier"].seeds.mean == pytest.approx(brier, abs=1e-12)
            assert estimates["brier"].images.mean == pytest.approx(brier, abs=1e-12)
            assert estimates["ece"].seeds.mean == pytest.approx(ece, abs=1e-12)
        assert cell.correction["brier"].mean == pytest.approx(by_hand[(ratio, "corrected")][0]
                                                              - by_hand[(ratio, "raw")][0], abs=1e-12)
    assert calibration.raw_difference["ece"].mean == pytest.approx(by_hand[(5, "raw")][1] - by_hand[(1, "raw")][1],
                                                                   abs=1e-12)
    section = written.markdown.split("## Calibration")[1].split("\n## ")[0]
    assert f"| 1:5 | as trained | {by_hand[(5, 'raw')][0]:.3f} [" in section
    assert "![Reliability diagrams, test](reliability.png)" in section
    assert (run / "reliability.png").stat().st_size > 10_000
    line = next(line for line in written.markdown.splitlines() if line.startswith("- **Calibration** (test"))
    assert f"1:1 {by_hand[(1, 'raw')][1]:.3f} → 1:5 {by_hand[(5, 'raw')][1]:.3f} as trained" in line


@pytest.mark.parametrize("grouped", [False, True])
def test_the_split_statement_says_how_many_test_images_have_a_near_duplicate_in_training(tmp_path, grouped):
    run = tmp_path / "run-n"
    y, source = sourced_labels(SOURCES)
    for ratio, twins in ((1, 2), (5, 9)):
        near = {"column": "near_dup_group", "test_with_twin_in_train": 0 if grouped else twins,
                "val_with_twin_in_train": 0 if grouped else 1, "grouped": grouped}
        validity_job(run, ratio, lesion_logits(y, ratio), y, {"source": list(source)},
                     data={"split": {**SPLIT, "group_by": "near_dup_group" if grouped else None,
                                     "near_duplicates": near}})
    report = write_report(str(run)).markdown
    statement = next(line for line in report.splitlines() if line.startswith("Split: "))
    assert "stable hash of each image's identity" in statement
    if grouped:
        assert "grouped by `near_dup_group`" in statement and "which removed them" in statement
        assert "test 1:1 0, 1:5 0" in statement and "⚠ Near-duplicates" not in report
    else:
        assert "not grouped" in statement and "test 1:1 2, 1:5 9; val 1:1 1, 1:5 1" in statement
        assert "> **⚠ Near-duplicates in training**" in report.split("In plain words")[0]
        assert "1:1 2, 1:5 9" in report.split("In plain words")[0]


def test_runs_without_the_new_keys_or_metadata_render_without_these_sections(tmp_path):
    y, _ = sourced_labels(SOURCES)
    old = tmp_path / "run-old"  # a job from before the validity checks
    for ratio in (1, 2):
        write_job(old, ratio, {s: (lesion_logits(y, ratio)(s, 1), lesion_logits(y, ratio)(s, 2)) for s in SEEDS}, y=y)
    written = write_report(str(old))
    assert written.analysis.validity is None and written.analysis.calibration is None
    for absent in ("Split:", "## Calibration", "## Subgroups", "## Shortcut check", "## Evaluation set", "⚠"):
        assert absent not in written.markdown
    assert not (old / "reliability.png").exists()

    plain = tmp_path / "run-plain"  # a job of today on data without metadata columns
    for ratio in (1, 2):
        write_job(plain, ratio, {s: (lesion_logits(y, ratio)(s, 1), lesion_logits(y, ratio)(s, 2)) for s in SEEDS}, y=y,
                  data={"columns": [], "train_values": {}, "split": SPLIT})
    report = write_report(str(plain)).markdown
    assert "## Calibration" in report and "## Subgroups" not in report
    assert "The data had no metadata columns (such as `source` or `diagnosis`)" in report
    assert "Near-duplicates: the data had no near-duplicate groups" in report
    assert "no metadata column to compare it with" in report


def test_metadata_is_read_as_written_and_malformed_new_keys_are_one_line_errors(tmp_path):
    run = tmp_path / "run-m"
    y, _ = sourced_labels(SOURCES)
    site = np.array(["NA", ""] * (len(y) // 2))  # a value that reads like a missing one, and a missing one
    for ratio in (1, 2):
        validity_job(run, ratio, lesion_logits(y, ratio), y, {"site": list(site)}, config={"subgroups": ["site"]})
    written = write_report(str(run))
    assert [v.value for v in written.analysis.validity.checks[0].values] == ["", "NA"]
    assert "| 1:1 | (missing) | " in written.markdown and "| 1:1 | `NA` | " in written.markdown

    metrics_path = run / "ratio-2" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["data"]["eval_sets"] = {"external": {"uri": "data/e", "counts": {"malignant": "30", "benign": 120},
                                                 "overlap_with_train": 0, "overlap_note": None}}
    metrics_path.write_text(json.dumps(metrics))
    with pytest.raises(RatioCnnError, match=r"ratio-2/metrics.json describes the evaluation set 'external'"):
        write_report(str(run))


def test_a_column_that_restates_the_label_is_a_subgroup_not_a_shortcut(tmp_path):
    run = tmp_path / "run-d"
    y, _ = sourced_labels(SOURCES)
    diagnosis = np.where(y == 1, "melanoma", "nevus")  # each value holds one class: the label written another way
    for ratio in (1, 3):
        validity_job(run, ratio, lesion_logits(y, ratio), y, {"diagnosis": list(diagnosis)}, data={"train_values": {
            "diagnosis": {"melanoma": {"malignant": 100, "benign": 0}, "nevus": {"malignant": 0, "benign": 300}}}})
    written = write_report(str(run))
    checks = written.analysis.validity.checks
    assert checks and all(k.determines_label and k.column_alone is None and not k.shortcut for k in checks)
    assert "⚠ Shortcut" not in written.markdown and "restates the label" in written.markdown
