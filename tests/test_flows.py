"""Flow logic on Prefect's test harness: fan-out, a failing ratio, the report, retries."""
import json
import subprocess
import sys

import dataclasses

import pytest
from prefect.artifacts import Artifact
from prefect.exceptions import ParameterTypeError
from prefect.testing.utilities import prefect_test_harness
from prefect.utilities.callables import parameter_schema

import flows.study as study
from ratio_cnn.config import StudyConfig, StudyOptions, TrainConfig
from ratio_cnn.errors import RatioCnnError, StorageUnavailable
from ratio_cnn.job_folder import FolderBusy

SMALL_OPTIONS = dict(epochs=1, batch_size=16, train_malignant=12, val_malignant=6, val_benign=20,
                     test_malignant=6, test_benign=20, device="cpu", seeds=2)


@pytest.fixture(scope="session")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_study_in_process_with_a_failing_ratio(harness, small_dataset, tmp_path):
    out = tmp_path / "results"
    state = study.ratio_study(StudyConfig(ratios=[1, 2, 50], data=str(small_dataset), out=str(out), run_id="run-a",
                                          options=StudyOptions(**SMALL_OPTIONS)), return_state=True)
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

    state = study.ratio_study(StudyConfig(ratios=[1], data=str(small_dataset), out=str(out), run_id="run-b",
                                          options=StudyOptions(**SMALL_OPTIONS)), return_state=True)
    assert state.is_completed()
    assert json.loads((out / "latest.json").read_text())["run_id"] == "run-b"
    assert (out / "run-a" / "report.md").read_text() == report  # runs never overwrite each other

    # The next night, on the same data and configuration: compared with run-b (run-a was incomplete).
    state = study.ratio_study(StudyConfig(ratios=[1], data=str(small_dataset), out=str(out), run_id="run-c",
                                          options=StudyOptions(**SMALL_OPTIONS)), return_state=True)
    assert state.is_completed()
    published = Artifact.get("ratio-study-report").data
    assert "## Against the previous run" in published and "Run `run-b`" in published
    assert "Regression" not in published  # the same seeds on the CPU: the same numbers
    index = Artifact.get("ratio-study-index").data
    assert all(f"`{r}`" in index for r in ("run-a", "run-b", "run-c"))
    # index.md with its trend figure inline: an artifact cannot reach the file beside it.
    assert index == study.index_with_figure(str(out), (out / "index.md").read_text()) != (out / "index.md").read_text()


@pytest.mark.slow  # a Prefect server (the test harness)
def test_only_storage_outages_and_busy_folders_are_retried_and_retries_resume(harness, monkeypatch):
    calls = []

    def flaky(errors):
        def run_job(cfg, flow_run=None):
            calls.append(cfg.resume)
            if errors:
                raise errors.pop(0)
            return {"variants": [{"strategy": "none", "model": "simple",
                                  "summary": {"test": {"roc_auc": {"mean": 0.9}}}}]}
        return run_job

    cfg = TrainConfig(ratio=1)
    fast_retries = study.train_job.with_options(retry_delay_seconds=0)

    monkeypatch.setattr(study, "run_job", flaky([StorageUnavailable("endpoint down"), FolderBusy("owned by x")]))
    assert fast_retries(cfg)["test"] == {"none/simple": {"mean": 0.9}}
    assert calls == [False, True, True]  # every retry resumes what the failed attempt left

    calls.clear()
    monkeypatch.setattr(study, "run_job", flaky([RatioCnnError("bad manifest")]))
    with pytest.raises(RatioCnnError, match="bad manifest"):
        fast_retries(cfg)
    assert calls == [False]


def test_the_study_gives_every_job_a_job_configuration_with_the_study_seeds():
    jobs = StudyConfig(ratios="1,2", data="d", out="o", options=StudyOptions(epochs=3)).job_configs("r")
    assert [job.ratio for job in jobs] == [1.0, 2.0]
    assert jobs[1] == TrainConfig(ratio=2, data="d", out="o", run_id="r", epochs=3, seeds=5)
    assert TrainConfig(ratio=1).seeds == [0]  # one job's default: the study's differs in its replicates alone
    assert {f.name for f in dataclasses.fields(StudyOptions)} | {"ratio", "data", "out", "run_id"} == {
        f.name for f in dataclasses.fields(TrainConfig)}


def test_the_flows_take_their_configuration_as_a_form_and_as_json_parameters():
    schema = parameter_schema(study.ratio_study).model_dump()
    options = schema["definitions"]["StudyOptions"]
    assert set(options["properties"]) == {f.name for f in dataclasses.fields(StudyOptions)}
    assert options["properties"]["val_benign"]["description"].startswith("benign images in val")
    assert options["additionalProperties"] is False and schema["definitions"]["StudyConfig"]["additionalProperties"] is False
    assert schema["properties"]["study"]["default"]["options"]["seeds"] == [0, 1, 2, 3, 4]  # the form starts filled in

    given = {"study": {"ratios": [1, 2], "launch": "deployments", "options": {"device": "cuda", "epochs": 1}}}
    built = study.ratio_study.validate_parameters(given)["study"]
    assert built == StudyConfig(ratios=[1, 2], launch="deployments", options=StudyOptions(device="cuda", epochs=1))
    assert built.options.seeds == [0, 1, 2, 3, 4]  # an option left out keeps the study's default
    with pytest.raises(ParameterTypeError, match="study.options.epochz"):  # a misspelt option is no default
        study.ratio_study.validate_parameters({"study": {"options": {"epochz": 1}}})
    job = built.job_configs("r")[0]
    assert study.train_ratio.validate_parameters({"job": job.to_dict()})["job"] == job  # what run_deployment sends


@pytest.mark.slow  # a Prefect server (the test harness)
def test_a_run_id_that_leaves_the_output_folder_is_refused(harness, tmp_path):
    parameters = {"ratios": [1], "data": str(tmp_path), "out": str(tmp_path / "out"), "run_id": ".."}
    state = study.ratio_study(parameters, return_state=True)  # JSON, as a deployment run gets it
    assert state.is_failed() and "run id '..' is not a valid name" in state.message
    assert not list(tmp_path.rglob("run.json"))


@pytest.mark.slow  # a Prefect server (the test harness)
def test_bad_options_fail_the_study_before_any_job_starts(harness, tmp_path):
    options = StudyOptions(**SMALL_OPTIONS | {"strategies": ["none", "smote"]})
    state = study.ratio_study(StudyConfig(ratios=[1, 2], data=str(tmp_path), out=str(tmp_path / "out"), run_id="bad",
                                          options=options), return_state=True)
    assert state.is_failed() and "strategy none,smote: choose one or more of" in state.message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, message", [
    ("strategies=none,smote", "flows.study: error: strategy none,smote: choose one or more of"),
    ("seeds=0,0", "flows.study: error: seeds [0, 0] lists a seed twice"),
])
@pytest.mark.slow  # the study command in a subprocess
def test_the_study_command_refuses_bad_options_in_one_line_before_prefect_starts(option, message, tmp_path):
    result = subprocess.run([sys.executable, "-m", "flows.study", "--out", str(tmp_path / "out"), "--set", option],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith(message)
    assert not (tmp_path / "out").exists()
