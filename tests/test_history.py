"""Nightly history: a run is compared with the previous complete run on the same data and
configuration, a planted regression is flagged at the top, and index.md lists every run."""
import json

from ratio_cnn.report import write_report
from runs import noisy_logits, write_job

SEEDS = (0, 1, 2)


def study(out, run_id: str, separation: float = 1.5, epochs: int = 5, ratios=(1, 3)):
    for ratio in ratios:
        logits = {s: (noisy_logits(100 * ratio + 10 * s + 1, separation), noisy_logits(100 * ratio + 10 * s + 2,
                                                                                        separation)) for s in SEEDS}
        metrics = write_job(out / run_id, ratio, logits)
        metrics["config"]["epochs"] = epochs
        (out / run_id / f"ratio-{ratio}" / "metrics.json").write_text(json.dumps(metrics))
    return write_report(str(out / run_id))


def test_a_second_night_is_compared_with_the_first(tmp_path):
    first = study(tmp_path, "night-1")
    assert "No earlier complete run on the same data and configuration" in first.markdown
    second = study(tmp_path, "night-2")  # the same models and data: nothing changed
    assert "## Against the previous run" in second.markdown and "Run `night-1`" in second.markdown
    assert second.changes and not second.regressions
    assert all(c.difference.mean == 0 and c.difference.low == 0 for c in second.changes)
    assert "Regression" not in second.markdown


def test_a_planted_regression_is_flagged_at_the_top(tmp_path):
    study(tmp_path, "night-1", separation=2.0)
    worse = study(tmp_path, "night-2", separation=0.7)  # malignant images now rank far worse
    flagged = {(c.cell, c.metric) for c in worse.regressions}
    assert ("1:1 none/simple", "roc_auc") in flagged and ("1:3 none/simple", "average_precision") in flagged
    title, blank, flag = worse.markdown.splitlines()[:3]
    assert flag.startswith("> **⚠ Regression against run `night-1`**: 1:1 none/simple ROC-AUC")
    assert "⚠ |" in worse.markdown.split("## Against the previous run")[1]


def test_only_complete_runs_with_the_same_configuration_are_compared(tmp_path):
    study(tmp_path, "night-1")
    study(tmp_path, "other-epochs", epochs=10)  # another configuration
    partial = tmp_path / "partial"
    study(tmp_path, "partial", ratios=(1,))
    (partial / "run.json").write_text(json.dumps({"run_id": "partial", "ratios": [1, 3]}))  # 1:3 never ran
    write_report(str(partial))
    third = study(tmp_path, "night-2")
    assert "Run `night-1`" in third.markdown  # not the later other-epochs nor the incomplete partial run


def test_the_index_lists_every_run(tmp_path):
    study(tmp_path, "night-1")
    study(tmp_path, "night-2")
    index = (tmp_path / "index.md").read_text()
    assert index.index("`night-2`") < index.index("`night-1`")  # newest first
    row = next(line for line in index.splitlines() if "`night-1`" in line)
    assert "| yes |" in row and "5 epochs, seeds 3, none × simple" in row and "1:1 0." in row and "1:3 0." in row
    assert json.loads((tmp_path / "night-2" / "summary.json").read_text())["complete"] is True
