"""One training job: one ratio, from a dataset prefix to metrics and figures in storage.

Reads top to bottom: data, model, training, evaluation, outputs. Everything is written
to a local folder first, then uploaded with metrics.json last: its presence under
<out>/<run-id>/ratio-<N>/ means the job finished.
"""
import json
import logging
import platform
from importlib.metadata import version
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ratio_cnn import data, plots
from ratio_cnn.config import TrainConfig, ratio_name
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.evaluate import evaluate
from ratio_cnn.model import SimpleCNN
from ratio_cnn.storage import Storage, open_storage
from ratio_cnn.train import pick_device, seed_everything, train_one_epoch

log = logging.getLogger(__name__)

METRICS = "metrics.json"  # written last: its presence means the job finished
ERROR = "error.json"  # written instead of metrics.json when a job fails
OUTPUTS = ("history.csv", "predictions.csv", "confusion_matrix.png", "curves.png", "model.pt")


def run_job(cfg: TrainConfig) -> dict:
    """Run the job; on failure leave error.json (the reason) where metrics.json would be."""
    out = open_storage(cfg.out)
    done_key = f"{cfg.job_prefix}/{METRICS}"
    if out.exists(done_key):
        raise RatioCnnError(f"{out.describe(done_key)} already exists: that job is complete; pick another --run-id")
    out.delete(f"{cfg.job_prefix}/{ERROR}")  # from an earlier failed attempt at this job
    try:
        return train_and_evaluate(cfg, out)
    except Exception as e:
        record_failure(out, cfg, e)
        raise


def record_failure(out: Storage, cfg: TrainConfig, error: BaseException) -> None:
    reason = {"ratio": cfg.ratio, "run_id": cfg.run_id, "error": str(error) or type(error).__name__,
              "type": type(error).__name__}
    try:
        out.put(f"{cfg.job_prefix}/{ERROR}", json.dumps(reason, indent=2).encode())
    except RatioCnnError as e:  # storage itself is down: the caller still sees the first error
        log.warning("could not record the failure in %s: %s", out.describe(cfg.job_prefix), e)


def train_and_evaluate(cfg: TrainConfig, out: Storage) -> dict:
    started = time.perf_counter()
    title = f"1:{ratio_name(cfg.ratio)} ratio"
    source = open_storage(cfg.data)

    # -------------------------------------------------------------------------
    # data: manifest, split, sample, then fetch and decode every image once
    if not source.exists(data.MANIFEST):
        raise RatioCnnError(f"no dataset at {source.uri} ({data.MANIFEST} is missing): make one with "
                            f"`ratio-cnn data synth --out {source.uri}` or `ratio-cnn data ingest SRC --out {source.uri}`")
    raw_manifest = source.get(data.MANIFEST)
    manifest = data.read_manifest(raw_manifest, source.describe(data.MANIFEST))
    sets = data.split_and_sample(manifest, cfg, source.uri)
    data.check_images_exist(source, sets)
    log.info("%s: %s", title, ", ".join(f"{s} {c['malignant']} malignant + {c['benign']} benign"
                                         for s, c in data.class_counts(sets).items()))
    loaded, skipped = data.load_images(source, sets, cfg.workers, cfg.max_skipped)
    counts = {s: {"malignant": int(v.labels.sum()), "benign": int(len(v.labels) - v.labels.sum())} for s, v in loaded.items()}
    load_seconds = time.perf_counter() - started

    # -------------------------------------------------------------------------
    # model: the whole dataset lives on the device; batches are normalised there
    device = pick_device(cfg.device)
    generator = seed_everything(cfg.seed)
    model = SimpleCNN().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    on_device = {s: (v.images.to(device), v.labels.to(device)) for s, v in loaded.items()}
    log.info("%s: training on %s for %d epochs", title, device, cfg.epochs)

    # -------------------------------------------------------------------------
    # training, with the validation loss and accuracy after every epoch
    history = []
    train_started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        epoch_started = time.perf_counter()
        train = train_one_epoch(model, optimizer, *on_device["train"], cfg.batch_size, generator,
                                description=f"{title} epoch {epoch}/{cfg.epochs}")
        val = evaluate(model, *on_device["val"], cfg.batch_size, cfg.threshold)
        history.append({"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                        "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_roc_auc": val["roc_auc"],
                        "seconds": time.perf_counter() - epoch_started})
        log.info("%s epoch %d/%d: train loss %.4f acc %.3f | val loss %.4f acc %.3f", title, epoch, cfg.epochs,
                 train["loss"], train["accuracy"], val["loss"], val["accuracy"])
    train_seconds = time.perf_counter() - train_started

    # -------------------------------------------------------------------------
    # evaluation of the final model on val and test
    eval_started = time.perf_counter()
    results = {s: evaluate(model, *on_device[s], cfg.batch_size, cfg.threshold) for s in ("val", "test")}
    probabilities = {s: r.pop("probabilities") for s, r in results.items()}
    eval_seconds = time.perf_counter() - eval_started
    for s, r in results.items():
        log.info("%s %s: loss %.4f acc %.3f precision %.3f recall %.3f F1 %.3f ROC-AUC %s", title, s,
                 r["loss"], r["accuracy"], r["precision"], r["recall"], r["f1"],
                 "n/a" if r["roc_auc"] is None else f"{r['roc_auc']:.3f}")

    # -------------------------------------------------------------------------
    # outputs: files first, metrics.json last
    metrics = {
        "ratio": cfg.ratio,
        "run_id": cfg.run_id,
        "config": cfg.to_dict(),
        "data": {"uri": source.uri, "manifest_digest": data.digest(raw_manifest),
                 "counts": counts, "skipped_images": skipped},
        **results,
        "timings": {"load_seconds": load_seconds, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
                    "train_images_per_second": cfg.epochs * len(loaded["train"].labels) / train_seconds,
                    "total_seconds": time.perf_counter() - started},
        "environment": environment(device),
    }
    with tempfile.TemporaryDirectory(prefix="ratio-cnn-") as tmp:
        folder = Path(tmp)
        pd.DataFrame(history).to_csv(folder / "history.csv", index=False)
        predictions = [pd.DataFrame({"split": s, "image": loaded[s].names,
                                     "label": np.where(loaded[s].labels.numpy() == 1, "malignant", "benign"),
                                     "probability": probabilities[s]}) for s in ("val", "test")]
        pd.concat(predictions).to_csv(folder / "predictions.csv", index=False)
        plots.confusion_matrices(results, title, folder / "confusion_matrix.png")
        plots.training_curves(pd.DataFrame(history), title, folder / "curves.png")
        torch.save(model.state_dict(), folder / "model.pt")  # loads with weights_only=True
        for name in OUTPUTS:
            out.put(f"{cfg.job_prefix}/{name}", (folder / name).read_bytes())
    out.put(f"{cfg.job_prefix}/{METRICS}", json.dumps(metrics, indent=2).encode())
    log.info("%s: wrote %s", title, out.describe(cfg.job_prefix))
    return metrics


def environment(device: torch.device) -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit_learn": version("scikit-learn"),
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "host": platform.node(),
    }
