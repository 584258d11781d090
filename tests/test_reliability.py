"""Reliability, through the real CLI and real faults: one owner per job folder, resume after
SIGKILL, SIGTERM and Ctrl-C, hung and cut storage, a short outage, a full disk, paths that
would leave their root. docs/reliability.md lists every case and the test that shows it."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import SMALL_SPLITS, one_error_line, run_cli
from faults import CUT, FORWARD, HANG, CuttingProxy, SilentServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FAST = ["--batch-size", "16", "--workers", "4", "--device", "cpu", *SMALL_SPLITS]


def start_cli(*args: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    """`ratio-cnn …` in the background, its stderr in `log`."""
    with log.open("w") as err:
        return subprocess.Popen([sys.executable, "-m", "ratio_cnn.cli", *args], stdout=subprocess.DEVNULL,
                                stderr=err, env={**os.environ, **(env or {})})


def wait_for(condition, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def seed_metrics(job: Path, seed: int = 0) -> dict:
    return json.loads((job / "none" / "simple" / f"seed-{seed}" / "metrics.json").read_text())


# -----------------------------------------------------------------------------
# one owner per job folder


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_second_job_for_the_same_folder_stops_at_once_naming_the_owner(backend, small_dataset, tmp_path, request):
    if backend == "s3":
        client = request.getfixturevalue("s3")
        client.create_bucket(Bucket="owners")
        out = "s3://owners/runs"
        claim = lambda: "Contents" in client.list_objects_v2(Bucket="owners", Prefix="runs/dup/ratio-1/claim.json")  # noqa: E731
    else:
        out = str(tmp_path / "out")
        claim = (tmp_path / "out/dup/ratio-1/claim.json").exists
    common = ["train", "--ratio", "1", "--data", str(small_dataset), "--out", out, "--run-id", "dup", *FAST]
    first = start_cli(*common, "--epochs", "4", "--seeds", "1", log=tmp_path / "first.log")
    wait_for(claim, what="the first job's claim")
    first.send_signal(signal.SIGSTOP)  # held mid-run, however fast it trains (its claim stays fresh for 120 s)
    try:
        started = time.monotonic()
        second = run_cli(*common, "--epochs", "1", "--seeds", "1,")
    finally:
        first.send_signal(signal.SIGCONT)
    line = one_error_line(second, "is owned by a running job", f"pid {first.pid}", "since")
    assert time.monotonic() - started < 60, line  # it stops before loading data or training
    assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()

    from ratio_cnn.storage import open_storage

    storage = open_storage(out)
    keys = storage.list("dup/ratio-1/")
    assert "dup/ratio-1/metrics.json" in keys and "dup/ratio-1/error.json" not in keys
    assert not [k for k in keys if "seed-1" in k]  # nothing of the second job
    job = json.loads(storage.get("dup/ratio-1/metrics.json"))
    assert list(job["variants"][0]["seeds"]) == ["0"]

    again = run_cli(*common, "--epochs", "1", "--resume")
    one_error_line(again, "already exists: that job is complete")


# -----------------------------------------------------------------------------
# resume


def test_a_killed_job_resumes_to_exactly_the_metrics_of_an_uninterrupted_one(small_dataset, tmp_path):
    out = tmp_path / "out"
    common = ["train", "--ratio", "2", "--data", str(small_dataset), "--out", str(out), "--epochs", "4",
              "--seeds", "0,1", "--checkpoint-every", "0", *FAST]
    reference = run_cli(*common, "--run-id", "whole")
    assert reference.returncode == 0, reference.stderr

    job = out / "killed" / "ratio-2"
    victim = start_cli(*common, "--run-id", "killed", log=tmp_path / "killed.log")
    checkpoint = job / "none" / "simple" / "seed-1" / "checkpoint.pt"
    wait_for(checkpoint.exists, what="a checkpoint of seed 1")  # seed 0 is done, seed 1 is training
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert not (job / "metrics.json").exists() and not (job / "error.json").exists()
    report = run_cli("report", "--run", str(out / "killed"))
    assert report.returncode == 0, report.stderr
    assert "the job stopped without a word" in (out / "killed" / "report.md").read_text()

    plain = run_cli(*common, "--run-id", "killed")
    one_error_line(plain, "holds an earlier attempt of this job", "is gone", "--resume")
    changed = run_cli(*common, "--run-id", "killed", "--resume", "--lr", "0.001")
    one_error_line(changed, "cannot resume", "other lr")

    resumed = run_cli(*common, "--run-id", "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "seed 0: done by an earlier attempt" in resumed.stderr
    assert "seed 1: resuming after epoch" in resumed.stderr
    for seed in (0, 1):
        whole, again = seed_metrics(out / "whole" / "ratio-2", seed), seed_metrics(job, seed)
        assert (whole["val"], whole["test"]) == (again["val"], again["test"])
    assert not checkpoint.exists()


STUDY = """
import json, sys
import flows.study as study
from ratio_cnn.config import StudyConfig, StudyOptions
args = json.loads(sys.argv[1])
options = StudyOptions(**args.pop("options"))
state = study.ratio_study(StudyConfig(options=options, **args), return_state=True)
sys.exit(0 if state.is_completed() else 1)
"""


def test_a_killed_in_process_study_resumes_exactly(small_dataset, tmp_path):
    """The interrupted jobs ran side by side in one process, as the in-process study runs them."""
    out = tmp_path / "out"
    options = {"epochs": 3, "seeds": 1, "checkpoint_every": 0, "device": "cpu", "batch_size": 16, "workers": 4,
               **{f.removeprefix("--").replace("-", "_"): int(v) for f, v in zip(SMALL_SPLITS[::2], SMALL_SPLITS[1::2])}}
    args = {"ratios": [1, 2], "data": str(small_dataset), "out": str(out), "run_id": "study"}
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    with (tmp_path / "study.log").open("w") as log:
        victim = subprocess.Popen([sys.executable, "-c", STUDY, json.dumps(args | {"options": options})], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    checkpoints = [out / "study" / f"ratio-{r}" / "none" / "simple" / "seed-0" / "checkpoint.pt" for r in (1, 2)]
    wait_for(lambda: any(c.exists() for c in checkpoints), timeout=300, what="a checkpoint in the study")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)

    resumed = subprocess.run([sys.executable, "-c", STUDY, json.dumps(args | {"options": options | {"resume": True}})],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-5000:] + resumed.stderr[-5000:]
    assert "resuming after epoch" in resumed.stdout + resumed.stderr
    for ratio in (1, 2):
        # Side by side, each job had its share of the cores (flows.study.cpu_threads_per_job); float sums
        # split over another number of threads round differently, so alone it gets the same share.
        threads = json.loads((out / "study" / f"ratio-{ratio}" / "metrics.json").read_text())["environment"]["torch_threads"]
        assert threads == max(1, (os.cpu_count() or 1) // 2)
        alone = run_cli("train", "--ratio", str(ratio), "--data", str(small_dataset), "--out", str(out),
                        "--run-id", "alone", "--epochs", "3", "--seeds", "1", *FAST, env={"OMP_NUM_THREADS": str(threads)})
        assert alone.returncode == 0, alone.stderr
        a, b = seed_metrics(out / "study" / f"ratio-{ratio}"), seed_metrics(out / "alone" / f"ratio-{ratio}")
        assert (a["val"], a["test"]) == (b["val"], b["test"])


# -----------------------------------------------------------------------------
# signals


def test_sigterm_stops_a_job_within_seconds_and_records_why(small_dataset, tmp_path):
    out = tmp_path / "out"
    common = ["train", "--ratio", "1", "--data", str(small_dataset), "--out", str(out), "--run-id", "t",
              "--epochs", "30", "--checkpoint-every", "0", *FAST]
    job = start_cli(*common, log=tmp_path / "job.log")
    wait_for((out / "t/ratio-1/none/simple/seed-0/checkpoint.pt").exists, what="training")
    sent = time.monotonic()
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=30) == 143
    assert time.monotonic() - sent < 10
    error = json.loads((out / "t/ratio-1/error.json").read_text())
    assert error["state"] == "stopped" and "SIGTERM" in error["error"]
    assert json.loads((out / "t/ratio-1/claim.json").read_text())["state"] == "stopped"
    report = run_cli("report", "--run", str(out / "t"))
    assert report.returncode == 0, report.stderr
    assert "Reason: stopped by SIGTERM" in (out / "t/report.md").read_text()  # not "may still be running"

    resumed = run_cli(*common, "--resume", "--epochs", "2")
    one_error_line(resumed, "cannot resume", "other epochs")  # the same options, or nothing
    resumed = run_cli(*common, "--resume")  # continues from the checkpoint (30 epochs of 12 + 12 images)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stderr and not (out / "t/ratio-1/error.json").exists()


def test_ctrl_c_during_a_hung_download_stops_within_seconds(tmp_path):
    with SilentServer() as silent:
        env = {"AWS_ENDPOINT_URL": silent.url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
               "AWS_DEFAULT_REGION": "us-east-1"}
        log = tmp_path / "job.log"
        job = start_cli("train", "--ratio", "1", "--data", "s3://bucket/ds", "--out", str(tmp_path / "out"),
                        *FAST, log=log, env=env)
        wait_for(lambda: "reading the dataset" in log.read_text(), what="the data phase")
        time.sleep(0.5)
        sent = time.monotonic()
        job.send_signal(signal.SIGINT)
        assert job.wait(timeout=30) == 130
        assert time.monotonic() - sent < 5
    assert "interrupted" in log.read_text().splitlines()[-1]


# -----------------------------------------------------------------------------
# storage that hangs, cuts or goes away


def test_a_silent_endpoint_fails_in_bounded_time_naming_it(tmp_path):
    with SilentServer() as silent:
        env = {"AWS_ENDPOINT_URL": silent.url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
               "AWS_DEFAULT_REGION": "us-east-1"}
        started = time.monotonic()
        result = run_cli("train", "--ratio", "1", "--data", "s3://bucket/ds", "--out", str(tmp_path / "out"),
                         "--storage-timeout", "1", *FAST, env=env)
        assert time.monotonic() - started < 40
    one_error_line(result, silent.url, "did not answer within 1 s", "s3://bucket/ds")


def s3_dataset(s3, small_dataset, bucket: str) -> None:
    s3.create_bucket(Bucket=bucket)
    for path in small_dataset.rglob("*"):
        if path.is_file():
            s3.put_object(Bucket=bucket, Key=f"ds/{path.relative_to(small_dataset).as_posix()}", Body=path.read_bytes())


@pytest.mark.parametrize("action, says", [(HANG, "did not answer within 1 s"), (CUT, "dropped the connection")])
def test_storage_that_hangs_or_cuts_mid_download_fails_in_bounded_time(action, says, s3, moto_endpoint,
                                                                       small_dataset, tmp_path):
    s3_dataset(s3, small_dataset, f"faults-{action}")
    rule = lambda method, path: action if method == "GET" and path.endswith(".jpg") else FORWARD  # noqa: E731
    with CuttingProxy(moto_endpoint, rule=rule) as proxy:
        started = time.monotonic()
        result = run_cli("train", "--ratio", "1", "--data", f"s3://faults-{action}/ds", "--out",
                         str(tmp_path / "out"), "--storage-timeout", "1", "--run-id", "f", *FAST,
                         env={"AWS_ENDPOINT_URL": proxy.url})
        assert time.monotonic() - started < 60
    one_error_line(result, proxy.url, says, f"s3://faults-{action}/ds/")
    assert json.loads((tmp_path / "out/f/ratio-1/error.json").read_text())["type"] == "StorageUnavailable"


def test_a_short_outage_during_the_upload_is_ridden_out(s3, moto_endpoint, small_dataset, tmp_path):
    s3.create_bucket(Bucket="outage")
    state = {"started": False}

    def rule(method, path):
        if method == "PUT" and path.endswith("seed-0/model.pt") and not state["started"]:
            state["started"] = True
            proxy.outage(5)  # this request still goes through; the next 5 s answer 503
        return FORWARD

    with CuttingProxy(moto_endpoint, rule=rule) as proxy:
        result = run_cli("train", "--ratio", "1", "--data", str(small_dataset), "--out", "s3://outage/runs",
                         "--run-id", "o", "--epochs", "1", "--seeds", "2", *FAST, env={"AWS_ENDPOINT_URL": proxy.url})
    assert result.returncode == 0, result.stderr
    assert state["started"] and "trying again in" in result.stderr
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="outage", Prefix="runs/o/")["Contents"]}
    assert {"runs/o/ratio-1/metrics.json", "runs/o/ratio-1/none/simple/seed-1/model.pt"} <= keys


# -----------------------------------------------------------------------------
# outputs: checked before training, kept when writing fails


def test_an_unwritable_output_fails_before_the_data_phase(small_dataset, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = run_cli("train", "--ratio", "1", "--data", str(small_dataset), "--out", str(tmp_path / "a-file"),
                     "--epochs", "1", *FAST)
    one_error_line(result, str(tmp_path / "a-file"))
    assert "reading the dataset" not in result.stderr and "epoch" not in result.stderr


FULL_DISK = """
set -e
mount -t tmpfs -o size=2m tmpfs "$OUT"
set +e
"$PY" -m ratio_cnn.cli train $ARGS > "$LOGS/first.out" 2> "$LOGS/first.err"; echo $? > "$LOGS/first.rc"
find "$OUT" -name '.tmp-*' > "$LOGS/leftovers"
set -e
mount -o remount,size=600m "$OUT"
"$PY" -m ratio_cnn.cli train $ARGS --resume > "$LOGS/second.out" 2> "$LOGS/second.err"; echo $? > "$LOGS/second.rc"
cp -r "$OUT/." "$LOGS/copy"
"""


def test_a_full_disk_keeps_the_trained_model_and_a_retry_uploads_it_without_training(small_dataset, tmp_path):
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare with user namespaces to mount a small tmpfs")
    out, logs = tmp_path / "out", tmp_path / "logs"
    out.mkdir()
    (logs / "copy").mkdir(parents=True)
    args = (f"--ratio 1 --data {small_dataset} --out {out} --run-id full --epochs 1 " + " ".join(FAST))
    subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", FULL_DISK], check=True,
                   env={**os.environ, "OUT": str(out), "LOGS": str(logs), "PY": sys.executable, "ARGS": args},
                   timeout=600)
    first = subprocess.CompletedProcess([], int((logs / "first.rc").read_text()), "", (logs / "first.err").read_text())
    one_error_line(first, "No space left on device")
    assert (logs / "leftovers").read_text() == ""  # no temp file blocks the retry
    second = (logs / "second.err").read_text()
    assert (logs / "second.rc").read_text().strip() == "0", second
    assert "done by an earlier attempt" in second and "epoch 1/1" not in second  # uploaded, not trained again
    job = logs / "copy" / "full" / "ratio-1"
    assert (job / "metrics.json").is_file() and (job / "none/simple/seed-0/model.pt").stat().st_size > 60e6
    assert not (job / "error.json").exists()


# -----------------------------------------------------------------------------
# nothing outside its root


@pytest.mark.parametrize("run_id", ["..", ".", "a/../b", "x" * 300])
def test_run_ids_that_leave_the_output_folder_are_refused(run_id, small_dataset, tmp_path):
    out = tmp_path / "nest" / "out"
    result = run_cli("train", "--ratio", "1", "--data", str(small_dataset), "--out", str(out), "--run-id", run_id,
                     "--epochs", "1", *FAST)
    one_error_line(result, "is not a valid name")
    assert not (tmp_path / "nest").exists()


def test_a_manifest_image_outside_the_dataset_is_refused(small_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    (tmp_path / "secret.jpg").write_bytes((data / "malignant" / "synth-00000.jpg").read_bytes())
    manifest = (data / "manifest.csv").read_text().replace("malignant/synth-00000.jpg", "../secret.jpg")
    (data / "manifest.csv").write_text(manifest)
    result = run_cli("train", "--ratio", "1", "--data", str(data), "--out", str(tmp_path / "out"), *FAST)
    one_error_line(result, "manifest.csv line 2", "'../secret.jpg'", "'..'")


def test_an_ingest_csv_id_outside_the_source_is_refused(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "outside.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "train.csv").write_text("image_id,target\n../outside,1\n")
    result = run_cli("data", "ingest", str(images), "--csv", str(tmp_path / "train.csv"), "--out",
                     str(tmp_path / "ds"))
    one_error_line(result, f"{tmp_path / 'train.csv'} line 2", "'../outside'")
    assert not (tmp_path / "ds").exists()


def test_an_s3_uri_with_dot_dot_is_refused(tmp_path):
    result = run_cli("train", "--ratio", "1", "--data", "s3://bucket/a/../b", "--out", str(tmp_path / "out"), *FAST)
    one_error_line(result, "s3://bucket/a/../b", "'..'")


# -----------------------------------------------------------------------------
# every user error is one line: run folders handed to `ratio-cnn report`


@pytest.mark.parametrize("content, says", [
    (b"{not json", "is not valid JSON"),
    (b'{"ratio": 1, "variants": [], "data": {"counts": {}}}', "lacks"),
    (b"[1, 2]", "holds no JSON object"),
    (b'{"ratio": NaN}', "non-finite number NaN"),
])
def test_a_malformed_metrics_json_is_one_line(content, says, tmp_path):
    job = tmp_path / "run" / "ratio-1"
    job.mkdir(parents=True)
    (job / "metrics.json").write_bytes(content)
    one_error_line(run_cli("report", "--run", str(tmp_path / "run")), str(job / "metrics.json"), says)


def test_malformed_predictions_are_one_line(tmp_path):
    from runs import noisy_logits, write_job

    write_job(tmp_path / "run", 1, {0: (noisy_logits(1, 1.0), noisy_logits(2, 1.0))})
    predictions = tmp_path / "run/ratio-1/none/simple/seed-0/predictions.csv"
    table = pd.read_csv(predictions)
    table.loc[3, "logit"] = float("inf")
    table.to_csv(predictions, index=False)
    one_error_line(run_cli("report", "--run", str(tmp_path / "run")), str(predictions), "non-finite logits")


def test_a_ratio_folder_with_an_overlong_number_is_one_line(tmp_path):
    (tmp_path / "run" / ("ratio-" + "9" * 200)).mkdir(parents=True)  # no job names a folder so
    (tmp_path / "run" / ("ratio-" + "9" * 200) / "metrics.json").write_text("{}")
    one_error_line(run_cli("report", "--run", str(tmp_path / "run")), "holds no ratio-<N>/ folders")
