"""The real `ratio-cnn` CLI end to end on a small synthetic dataset: local folders and S3."""
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from ratio_cnn.job import OUTPUTS
from ratio_cnn.model import SimpleCNN
from ratio_cnn.storage import open_storage
from conftest import SMALL_SPLITS, run_cli

pytestmark = pytest.mark.slow
FAST = ["--epochs", "2", "--batch-size", "16", *SMALL_SPLITS]


def check_job_outputs(storage, prefix: str, ratio: int) -> dict:
    """Every output the issue lists, with contents that agree with one another."""
    assert {f"{prefix}/{name}" for name in (*OUTPUTS, "metrics.json")} <= set(storage.list(prefix))
    metrics = json.loads(storage.get(f"{prefix}/metrics.json"))
    counts = metrics["data"]["counts"]
    assert counts["train"] == {"malignant": 12, "benign": 12 * ratio}
    assert counts["val"] == counts["test"] == {"malignant": 6, "benign": 20}
    for split in ("val", "test"):
        m = metrics[split]
        assert set(m) >= {"loss", "accuracy", "precision", "recall", "f1", "roc_auc", "average_precision",
                          "confusion_matrix", "threshold"}
        assert sum(m["confusion_matrix"].values()) == 26
        assert 0 <= m["roc_auc"] <= 1
    assert metrics["data"]["manifest_digest"].startswith("sha256:")
    assert metrics["config"]["ratio"] == ratio and metrics["environment"]["torch"] == torch.__version__
    assert metrics["timings"]["train_seconds"] > 0

    history = pd.read_csv(io.BytesIO(storage.get(f"{prefix}/history.csv")))
    assert list(history.columns[:5]) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
    assert list(history["epoch"]) == [1, 2]
    assert history["val_loss"].iloc[-1] == pytest.approx(metrics["val"]["loss"], rel=1e-5)

    predictions = pd.read_csv(io.BytesIO(storage.get(f"{prefix}/predictions.csv")))
    assert list(predictions.columns) == ["split", "image", "label", "probability"]
    assert predictions.groupby("split").size().to_dict() == {"test": 26, "val": 26}
    test = predictions[predictions["split"] == "test"]
    predicted_positive = int((test["probability"] >= 0.5).sum())
    cm = metrics["test"]["confusion_matrix"]
    assert predicted_positive == cm["tp"] + cm["fp"]

    for figure in ("confusion_matrix.png", "curves.png"):
        assert Image.open(io.BytesIO(storage.get(f"{prefix}/{figure}"))).size[0] > 300

    state = torch.load(io.BytesIO(storage.get(f"{prefix}/model.pt")), weights_only=True)
    SimpleCNN().load_state_dict(state)
    return metrics


def test_train_from_local_folders(small_dataset, tmp_path):
    result = run_cli("train", "--ratio", "2", "--data", str(small_dataset), "--out", str(tmp_path / "out"),
                     "--run-id", "r1", "--device", "cpu", *FAST)
    assert result.returncode == 0, result.stderr
    metrics = check_job_outputs(open_storage(str(tmp_path / "out")), "r1/ratio-2", ratio=2)

    # Same seed on the CPU, same metrics.
    again = run_cli("train", "--ratio", "2", "--data", str(small_dataset), "--out", str(tmp_path / "out"),
                    "--run-id", "r2", "--device", "cpu", *FAST)
    assert again.returncode == 0, again.stderr
    repeat = json.loads((tmp_path / "out/r2/ratio-2/metrics.json").read_text())
    for split in ("val", "test"):
        assert repeat[split] == metrics[split]

    # A finished job is never overwritten.
    third = run_cli("train", "--ratio", "2", "--data", str(small_dataset), "--out", str(tmp_path / "out"),
                    "--run-id", "r1", *FAST)
    assert third.returncode == 2 and "already exists" in third.stderr


def test_defaults_need_no_configuration(small_dataset, tmp_path):
    """With no --data/--out the job uses data/synthetic and results/ under the working directory."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic").symlink_to(small_dataset)
    result = run_cli("train", "--ratio", "1", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [job] = list((tmp_path / "results").glob("*/ratio-1"))
    assert (job / "metrics.json").is_file()


def test_synth_then_train_through_s3(s3, moto_endpoint, tmp_path):
    """Dataset written to and read from S3 over real HTTP, outputs uploaded back."""
    s3.create_bucket(Bucket="ratio-data")
    s3.create_bucket(Bucket="ratio-results")
    made = run_cli("data", "synth", "--out", "s3://ratio-data/synthetic", "--malignant", "24", "--benign", "80")
    assert made.returncode == 0, made.stderr
    result = run_cli("train", "--ratio", "3", "--data", "s3://ratio-data/synthetic",
                     "--out", "s3://ratio-results/runs", "--run-id", "s3run", *FAST)
    assert result.returncode == 0, result.stderr
    check_job_outputs(open_storage("s3://ratio-results/runs"), "s3run/ratio-3", ratio=3)


def test_ingest_folder_layout_then_train(tmp_path):
    source = tmp_path / "src"
    for label, count, colour in (("benign", 70, (200, 160, 140)), ("malignant", 30, (90, 50, 40))):
        (source / label).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (200, 150), tuple(c + i % 7 for c in colour)).save(source / label / f"{label}{i}.png")
    result = run_cli("data", "ingest", str(source), "--out", str(tmp_path / "ds"))
    assert result.returncode == 0, result.stderr
    manifest = pd.read_csv(tmp_path / "ds" / "manifest.csv")
    assert manifest["label"].value_counts().to_dict() == {"benign": 70, "malignant": 30}
    with Image.open(tmp_path / "ds" / manifest["image"][0]) as img:
        assert (img.mode, img.size) == ("RGB", (128, 128))
    trained = run_cli("train", "--ratio", "1", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "out"),
                      "--epochs", "1", *SMALL_SPLITS)
    assert trained.returncode == 0, trained.stderr


def test_help_for_every_command():
    for command in (["train"], ["data", "synth"], ["data", "ingest"], ["report"]):
        result = run_cli(*command, "--help")
        assert result.returncode == 0 and "usage: ratio-cnn" in result.stdout
    assert "--train-malignant" in run_cli("train", "--help").stdout
