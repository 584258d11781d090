"""report.md is built from what the jobs wrote: Findings first, intervals everywhere, the study's lines."""
import json

import numpy as np
import pytest

from ratio_cnn.report import split_line, write_report
from conftest import run_cli
from runs import noisy_logits, write_job

SEEDS = (0, 1, 2)


def job(run, ratio, separation, offset=0.0, **kwargs):
    """A job whose seeds rank malignant images `separation` apart; `offset` moves every logit."""
    noise = lambda s, split: int(1000 * ratio) + 10 * s + split  # noqa: E731 - other noise per ratio and seed
    logits = {s: (noisy_logits(noise(s, 1), separation, offset), noisy_logits(noise(s, 2), separation, offset))
              for s in SEEDS}
    return write_job(run, ratio, logits, **kwargs)


def test_split_line_is_the_studys():
    m = {"loss": 0.123456, "accuracy": 0.91238, "precision": 0.25, "recall": 0.6, "f1": 0.352941}
    assert split_line("Val", m) == "Val Loss: 0.1235 | Acc: 91.24% | Precision: 0.2500 | Recall: 0.6000 | F1: 0.3529"


def test_a_planted_ranking_gain_is_real_and_equal_ratios_are_noise(tmp_path):
    run = tmp_path / "run-x"
    job(run, 1, separation=0.5)
    job(run, 2, separation=0.5)  # the same model as 1:1 on other noise: no real difference in ranking
    job(run, 5, separation=2.0)  # ranks malignant images far better
    written = write_report(str(run))
    c = {(x.a, x.b): x for x in written.analysis.ratio_comparisons}
    assert c[("1:5", "1:1")].differences["roc_auc"].low > 0.1  # found, with the right sign
    assert c[("1:2", "1:1")].differences["roc_auc"].low < 0 < c[("1:2", "1:1")].differences["roc_auc"].high
    report = written.markdown
    assert report.index("## Findings") < report.index("## Summary") < report.index("## 1:1 ratio")
    assert "**1:5 vs 1:1**: real differences in" in report and "ROC-AUC (+0." in report
    equal = next(line for line in report.splitlines() if line.startswith("- **1:2 vs 1:1**"))
    assert "within noise for" in equal and "ROC-AUC (" not in equal  # real ones are listed with their interval


def test_the_prior_shift_correction_removes_an_effect_that_is_only_the_operating_point(tmp_path):
    run = tmp_path / "run-p"
    # The same ranking at both ratios; the 1:5 model's logits sit log(5) lower, as a model
    # trained at 1:5 odds does: at 0.5 its recall drops, after the correction it does not.
    job(run, 1, separation=2.0, offset=0.0)
    job(run, 5, separation=2.0, offset=-np.log(5))
    written = write_report(str(run))
    [at_half] = written.analysis.ratio_comparisons
    [corrected] = written.analysis.corrected_comparisons
    assert at_half.differences["recall"].high < 0  # a real drop at the fixed threshold
    assert abs(corrected.differences["recall"].mean) < 0.5 * abs(at_half.differences["recall"].mean)
    assert "the correction removes" in written.markdown
    recall = written.analysis.correction_effects[0]
    assert recall.metric == "recall" and recall.removed > 0.5
    points = written.analysis.cells[(5.0, "none/simple")].operating_points
    assert points["prior_shift"].threshold.mean == pytest.approx(1 / (1 + 0.05 * 5))  # sigmoid(log(1/5) - log(0.05))
    assert points["recall"].thresholds.shape == (3,)


@pytest.mark.slow  # the real CLI
def test_report_command_reads_only_the_run_folder(tmp_path):
    run = tmp_path / "run-y"
    job(run, 1, separation=1.0)
    job(run, 3, separation=1.2)
    (run / "ratio-5").mkdir()
    (run / "ratio-5" / "error.json").write_text(json.dumps({"error": "S3 refused to read s3://b/x"}))
    (run / "run.json").write_text(json.dumps({"run_id": "run-y", "ratios": [1, 2, 3, 5]}))

    result = run_cli("report", "--run", str(run))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{run}/report.md"
    report = (run / "report.md").read_text()
    assert report.index("## Findings") < report.index("## Summary") < report.index("## Operating points") \
        < report.index("## 1:1 ratio (293 malignant, 293 benign)") < report.index("## 1:2 ratio — failed") \
        < report.index("## 1:3 ratio (293 malignant, 879 benign)")
    # The study's lines, now the mean over seeds, each followed by its interval.
    section = report.split("## 1:3 ratio")[1]
    test_line = next(line for line in section.splitlines() if line.startswith("Test Loss:"))
    assert test_line.count("|") == 4 and "Acc:" in test_line and "%" in test_line
    assert section.split(test_line)[1].lstrip().startswith("95% interval over 3 seeds: Loss [")
    assert "| 1:3 | 293 + 879 |" in report and "[" in report.split("| 1:3 | 293 + 879 |")[1].split("\n")[0]
    assert "Reason: no job wrote anything in its folder" in report  # 1:2 was asked for, wrote nothing
    assert "Reason: S3 refused to read s3://b/x" in report
    assert "![1:3 confusion matrices, seed 0](ratio-3/none/simple/confusion_matrix.png)" in report
    assert "curves_by_seed.png" in report and "best F1 on val" in report and "prior-shift" in report
    for figure in ("metrics_by_ratio.png", "roc.png", "pr.png"):
        assert (run / figure).stat().st_size > 10_000, figure


def test_strategies_and_models_are_compared_with_the_baseline(tmp_path):
    run = tmp_path / "run-v"
    for ratio in (1, 2):
        job(run, ratio, separation=1.0)
        job(run, ratio, separation=2.5, strategy="augment", model="upgraded", append=True)
    written = write_report(str(run))
    assert written.analysis.variant_names == ["none/simple", "augment/upgraded"]
    [gain] = [c for c in written.analysis.variant_comparisons if c.a == "1:2 augment/upgraded"]
    assert gain.differences["average_precision"].low > 0
    assert "## Strategies and models" in written.markdown
    assert "ranks better than the baseline (a real gain in ROC-AUC or AP): 1:1 augment/upgraded, " \
           "1:2 augment/upgraded" in written.markdown
    assert "### augment, upgraded" in written.markdown


@pytest.mark.slow  # the real CLI
def test_report_of_a_folder_that_is_no_run(tmp_path):
    result = run_cli("report", "--run", str(tmp_path))
    assert result.returncode == 2 and "holds no ratio-<N>/ folders" in result.stderr


def test_one_seed_gives_means_without_intervals(tmp_path):
    run = tmp_path / "run-1"
    for ratio in (1, 2):
        write_job(run, ratio, {0: (noisy_logits(1, 1.0), noisy_logits(2, 1.0))})
    report = write_report(str(run)).markdown
    assert "95% interval over 1 seeds: Loss [n/a]" in report
