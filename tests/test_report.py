"""report.md is built from what the jobs wrote, in the study's own format."""
import json

from ratio_cnn.report import split_line
from conftest import run_cli


def fake_metrics(ratio: int, f1: float) -> dict:
    split = {"loss": 0.25, "accuracy": 0.9124, "precision": 0.25, "recall": 0.6, "f1": f1, "roc_auc": 0.8,
             "average_precision": 0.3, "confusion_matrix": {"tn": 900, "fp": 90, "fn": 20, "tp": 30},
             "threshold": 0.5}
    return {"ratio": ratio, "run_id": "r", "config": {"epochs": 3, "batch_size": 32, "lr": 1e-4, "seed": 0,
                                                      "threshold": 0.5},
            "data": {"uri": "data/x", "manifest_digest": "sha256:" + "ab" * 32, "skipped_images": [],
                     "counts": {"train": {"malignant": 293, "benign": 293 * ratio}}},
            "val": split, "test": split, "environment": {"device": "cpu", "torch": "2"}}


def test_split_line_is_the_studys():
    m = {"loss": 0.123456, "accuracy": 0.91238, "precision": 0.25, "recall": 0.6, "f1": 0.352941}
    assert split_line("Val", m) == "Val Loss: 0.1235 | Acc: 91.24% | Precision: 0.2500 | Recall: 0.6000 | F1: 0.3529"


def test_report_command_reads_only_the_run_folder(tmp_path):
    run = tmp_path / "run-x"
    for ratio, f1 in ((1, 0.35), (3, 0.41)):
        (run / f"ratio-{ratio}").mkdir(parents=True)
        (run / f"ratio-{ratio}" / "metrics.json").write_text(json.dumps(fake_metrics(ratio, f1)))
    (run / "ratio-5").mkdir()
    (run / "ratio-5" / "error.json").write_text(json.dumps({"error": "S3 refused to read s3://b/x"}))
    (run / "run.json").write_text(json.dumps({"run_id": "run-x", "ratios": [1, 2, 3, 5]}))

    result = run_cli("report", "--run", str(run))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{run}/report.md"
    report = (run / "report.md").read_text()
    assert report.index("## Summary") < report.index("## 1:1 ratio (293 malignant, 293 benign)") \
        < report.index("## 1:2 ratio — failed") < report.index("## 1:3 ratio (293 malignant, 879 benign)")
    assert "Test Loss: 0.2500 | Acc: 91.24% | Precision: 0.2500 | Recall: 0.6000 | F1: 0.4100" in report
    assert "| 1:3 | 293 + 879 |" in report and "| 1:5 | failed |" in report
    assert "Reason: no metrics.json: the job did not finish" in report  # 1:2 was asked for, wrote nothing
    assert "Reason: S3 refused to read s3://b/x" in report
    assert "![1:3 confusion matrices](ratio-3/confusion_matrix.png)" in report
    assert (run / "metrics_by_ratio.png").stat().st_size > 10_000


def test_report_of_a_folder_that_is_no_run(tmp_path):
    result = run_cli("report", "--run", str(tmp_path))
    assert result.returncode == 2 and "holds no ratio-<N>/ folders" in result.stderr
