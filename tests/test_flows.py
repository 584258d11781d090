"""Flow logic on Prefect's test harness: fan-out, a failing ratio, the report, retries."""
import json

import pytest
from prefect.testing.utilities import prefect_test_harness

import flows.study as study
from ratio_cnn.config import TrainConfig
from ratio_cnn.errors import RatioCnnError, StorageUnavailable

SMALL_OPTIONS = dict(epochs=1, batch_size=16, train_malignant=12, val_malignant=6, val_benign=20,
                     test_malignant=6, test_benign=20, device="cpu")


@pytest.fixture(scope="session")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_study_in_process_with_a_failing_ratio(harness, small_dataset, tmp_path):
    out = tmp_path / "results"
    state = study.ratio_study(ratios=[1, 2, 50], data=str(small_dataset), out=str(out), run_id="run-a",
                              options=study.TrainingOptions(**SMALL_OPTIONS), return_state=True)
    # 1:50 needs 600 benign images the dataset lacks: it fails, the others and the report do not.
    assert state.is_failed() and "1:50" in state.message
    run = out / "run-a"
    assert (run / "ratio-1" / "metrics.json").is_file() and (run / "ratio-2" / "metrics.json").is_file()
    assert "needs 12 malignant and 600 benign" in json.loads((run / "ratio-50" / "error.json").read_text())["error"]
    report = (run / "report.md").read_text()
    assert "## 1:1 ratio (12 malignant, 12 benign)" in report and "## 1:2 ratio (12 malignant, 24 benign)" in report
    assert "## 1:50 ratio — failed" in report and "needs 12 malignant and 600 benign" in report
    assert json.loads((run / "run.json").read_text())["ratios"] == [1, 2, 50]
    assert not (out / "latest.json").exists()  # latest names complete runs only

    state = study.ratio_study(ratios=[1], data=str(small_dataset), out=str(out), run_id="run-b",
                              options=study.TrainingOptions(**SMALL_OPTIONS), return_state=True)
    assert state.is_completed()
    assert json.loads((out / "latest.json").read_text())["run_id"] == "run-b"
    assert (out / "run-a" / "report.md").read_text() == report  # runs never overwrite each other


def test_only_storage_outages_are_retried(harness, monkeypatch):
    calls = []

    def flaky(errors):
        def run_job(cfg):
            calls.append(cfg.ratio)
            if errors:
                raise errors.pop(0)
            return {"test": {"f1": 0.5, "roc_auc": 0.9}}
        return run_job

    cfg = TrainConfig(ratio=1)
    fast_retries = study.train_job.with_options(retry_delay_seconds=0)

    monkeypatch.setattr(study, "run_job", flaky([StorageUnavailable("endpoint down"), StorageUnavailable("again")]))
    assert fast_retries(cfg)["test"]["f1"] == 0.5
    assert len(calls) == 3

    calls.clear()
    monkeypatch.setattr(study, "run_job", flaky([RatioCnnError("bad manifest")]))
    with pytest.raises(RatioCnnError, match="bad manifest"):
        fast_retries(cfg)
    assert len(calls) == 1


def test_training_options_mirror_the_job_configuration():
    assert study.TrainingOptions().model_dump() == {
        k: v for k, v in TrainConfig(ratio=1).to_dict().items() if k not in study.PER_JOB
    }
