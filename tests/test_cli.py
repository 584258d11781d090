"""The real `ratio-cnn` CLI end to end on a small synthetic dataset: local folders and S3."""
import io
import json

import pandas as pd
import pytest
import torch
from PIL import Image

from ratio_cnn.job_folder import SEED_FILES, WEIGHTS
from ratio_cnn.model import SimpleCNN
from ratio_cnn.storage import open_storage
from conftest import SMALL_SPLITS, run_cli

pytestmark = pytest.mark.slow
FAST = ["--epochs", "2", "--batch-size", "16", *SMALL_SPLITS]


def check_job_outputs(storage, prefix: str, ratio: int, seeds=(0,)) -> dict:
    """Every output of the job, per seed and per variant, with contents that agree with one another."""
    keys = set(storage.list(prefix))
    variant = f"{prefix}/none/simple"
    expected = {f"{prefix}/metrics.json", f"{prefix}/claim.json",
                *(f"{variant}/{name}" for name in ("confusion_matrix.png", "curves.png", "curves_by_seed.png")),
                *(f"{variant}/seed-{s}/{name}" for s in seeds for name in (*SEED_FILES, WEIGHTS, "metrics.json"))}
    assert expected <= keys, sorted(expected - keys)
    assert not any(k.endswith("checkpoint.pt") for k in keys)  # removed once a seed is done
    metrics = json.loads(storage.get(f"{prefix}/metrics.json"))
    counts = metrics["data"]["counts"]
    assert counts["train"] == {"malignant": 12, "benign": 12 * ratio}
    assert counts["val"] == counts["test"] == {"malignant": 6, "benign": 20}
    [v] = metrics["variants"]
    assert (v["strategy"], v["model"], sorted(v["seeds"])) == ("none", "simple", [str(s) for s in seeds])
    for seed in seeds:
        seed_metrics = json.loads(storage.get(f"{variant}/seed-{seed}/metrics.json"))
        assert seed_metrics == v["seeds"][str(seed)]
        for split in ("val", "test"):
            m = seed_metrics[split]
            assert set(m) >= {"loss", "accuracy", "precision", "recall", "f1", "roc_auc", "average_precision",
                              "confusion_matrix", "threshold"}
            assert sum(m["confusion_matrix"].values()) == 26
            assert 0 <= m["roc_auc"] <= 1
        history = pd.read_csv(io.BytesIO(storage.get(f"{variant}/seed-{seed}/history.csv")))
        assert list(history.columns[:5]) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
        assert list(history["epoch"]) == [1, 2]
        assert history["val_loss"].iloc[-1] == pytest.approx(seed_metrics["val"]["loss"], rel=1e-5)
        predictions = pd.read_csv(io.BytesIO(storage.get(f"{variant}/seed-{seed}/predictions.csv")))
        assert list(predictions.columns) == ["split", "image", "label", "logit", "probability"]
        assert predictions.groupby("split").size().to_dict() == {"test": 26, "val": 26}
        test = predictions[predictions["split"] == "test"]
        cm = seed_metrics["test"]["confusion_matrix"]
        assert int((test["probability"] >= 0.5).sum()) == cm["tp"] + cm["fp"]
        state = torch.load(io.BytesIO(storage.get(f"{variant}/seed-{seed}/model.pt")), weights_only=True)
        SimpleCNN().load_state_dict(state)
    summary = v["summary"]["test"]["f1"]
    assert summary["n"] == len(seeds)
    assert summary["mean"] == pytest.approx(sum(v["seeds"][str(s)]["test"]["f1"] for s in seeds) / len(seeds))
    for figure in ("confusion_matrix.png", "curves.png", "curves_by_seed.png"):
        assert Image.open(io.BytesIO(storage.get(f"{variant}/{figure}"))).size[0] > 300
    assert metrics["data"]["manifest_digest"].startswith("sha256:")
    assert metrics["config"]["ratio"] == ratio and metrics["environment"]["torch"] == torch.__version__
    assert json.loads(storage.get(f"{prefix}/claim.json"))["state"] == "finished"
    return metrics


def test_train_from_local_folders(small_dataset, tmp_path):
    out = tmp_path / "out"
    result = run_cli("train", "--ratio", "2", "--data", str(small_dataset), "--out", str(out),
                     "--run-id", "r1", "--device", "cpu", "--seeds", "0,3", *FAST)
    assert result.returncode == 0, result.stderr
    metrics = check_job_outputs(open_storage(str(out)), "r1/ratio-2", ratio=2, seeds=(0, 3))
    seed_zero = metrics["variants"][0]["seeds"]["0"]

    # Same seed on the CPU, same metrics, whatever other seeds run beside it.
    again = run_cli("train", "--ratio", "2", "--data", str(small_dataset), "--out", str(out),
                    "--run-id", "r2", "--device", "cpu", *FAST)
    assert again.returncode == 0, again.stderr
    assert "(0 downloaded, 0 decoded" in again.stderr  # the images came from the cache
    repeat = json.loads((out / "r2/ratio-2/none/simple/seed-0/metrics.json").read_text())
    for split in ("val", "test"):
        assert repeat[split] == seed_zero[split]

    # A finished job is never overwritten.
    third = run_cli("train", "--ratio", "2", "--data", str(small_dataset), "--out", str(out),
                    "--run-id", "r1", *FAST)
    assert third.returncode == 2 and "already exists" in third.stderr


def test_defaults_need_no_configuration(small_dataset, tmp_path):
    """With no --data/--out the job uses data/synthetic and results/ under the working directory."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic").symlink_to(small_dataset)
    result = run_cli("train", "--ratio", "1", "--device", "cpu", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [job] = list((tmp_path / "results").glob("*/ratio-1"))
    environment = json.loads((job / "metrics.json").read_text())["environment"]
    assert environment["precision"] == "fp32" and environment["eval_batch_size"] == 32  # a CPU's defaults


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


def test_every_strategy_is_one_flag_and_the_report_compares_them(small_dataset, tmp_path):
    strategies = ("none", "pos_weight", "oversample", "augment", "synthetic")
    out = tmp_path / "out"
    for ratio in ("1", "2"):
        result = run_cli("train", "--ratio", ratio, "--data", str(small_dataset), "--out", str(out), "--run-id", "grid",
                         "--strategy", ",".join(strategies), "--synthetic-malignant", "20", "--epochs", "1",
                         "--seeds", "2", "--batch-size", "16", "--device", "cpu", *SMALL_SPLITS)
        assert result.returncode == 0, result.stderr
    job = json.loads((out / "grid/ratio-2/metrics.json").read_text())
    train = {v["strategy"]: v["seeds"]["1"]["train"] for v in job["variants"]}
    assert set(train) == set(strategies) and all(v["model"] == "simple" for v in job["variants"])
    assert train["none"] == {"malignant": 12, "benign": 24, "odds": 0.5}
    assert train["synthetic"] == {"malignant": 32, "benign": 24, "odds": 32 / 24}  # 20 made from the 12
    assert train["pos_weight"]["odds"] == train["oversample"]["odds"] == 1.0
    for strategy in strategies:
        assert (out / f"grid/ratio-2/{strategy}/simple/seed-1/model.pt").is_file()
    report = run_cli("report", "--run", str(out / "grid"))
    assert report.returncode == 0, report.stderr
    text = (out / "grid/report.md").read_text()
    assert "## Strategies and models" in text and "| 1:2 synthetic/simple − none/simple |" in text
    assert "### pos_weight, simple" in text
