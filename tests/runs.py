"""Run folders with chosen predictions, in the layout the jobs write, for the report's tests.

Training a model per case would take minutes and could not plant a known effect; these
folders hold exactly what a job writes (metrics.json, per-seed metrics.json and
predictions.csv) for logits the test chooses.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ratio_cnn.evaluate import binary_metrics

VAL_TEST = {"malignant": 50, "benign": 1000}


def labels() -> np.ndarray:
    return np.array([1] * VAL_TEST["malignant"] + [0] * VAL_TEST["benign"])


def noisy_logits(seed: int, separation: float, offset: float = 0.0) -> np.ndarray:
    """Logits of a model whose malignant images score `separation` higher on average."""
    rng = np.random.default_rng(seed)
    y = labels()
    return rng.normal(0, 1, len(y)) + separation * y + offset - 2.0


def split_metrics(y: np.ndarray, logits: np.ndarray, threshold: float = 0.5) -> dict:
    loss = float(np.mean(np.logaddexp(0, logits) - y * logits))
    return {"loss": loss, **binary_metrics(y, 1 / (1 + np.exp(-logits)), threshold)}


def write_job(run: Path, ratio: float, logits: dict[int, tuple[np.ndarray, np.ndarray]],
              strategy: str = "none", model: str = "simple", train_malignant: int = 293, append: bool = False) -> dict:
    """ratio-<N>/ with one variant; logits: seed -> (val logits, test logits)."""
    y = labels()
    names = [f"malignant/m{i}.jpg" for i in range(VAL_TEST["malignant"])] + \
            [f"benign/b{i}.jpg" for i in range(VAL_TEST["benign"])]
    folder = run / f"ratio-{ratio:g}"
    variant = f"{strategy}/{model}"
    benign = round(ratio * train_malignant)
    seeds = {}
    for seed, (val, test) in logits.items():
        seed_folder = folder / variant / f"seed-{seed}"
        seed_folder.mkdir(parents=True, exist_ok=True)
        seeds[str(seed)] = {"seed": seed, "strategy": strategy, "model": model,
                            "val": split_metrics(y, val), "test": split_metrics(y, test),
                            "train": {"malignant": train_malignant, "benign": benign, "odds": train_malignant / benign}}
        (seed_folder / "metrics.json").write_text(json.dumps(seeds[str(seed)]))
        rows = [pd.DataFrame({"split": split, "image": [f"{split}/{n}" for n in names],
                              "label": np.where(y == 1, "malignant", "benign"), "logit": values,
                              "probability": 1 / (1 + np.exp(-values))}) for split, values in (("val", val), ("test", test))]
        pd.concat(rows).to_csv(seed_folder / "predictions.csv", index=False)
        pd.DataFrame({"epoch": [1, 2], "train_loss": [0.6, 0.5], "train_accuracy": [0.6, 0.7], "val_loss": [0.5, 0.4],
                      "val_accuracy": [0.8, 0.9], "val_roc_auc": [0.6, 0.7], "seconds": [1.0, 1.0]}).to_csv(
            seed_folder / "history.csv", index=False)
    entry = {"strategy": strategy, "model": model, "folder": variant, "seeds": seeds, "summary": {}}
    path = folder / "metrics.json"
    if append and path.exists():
        metrics = json.loads(path.read_text())
        metrics["variants"].append(entry)
    else:
        metrics = {
            "ratio": ratio, "run_id": run.name,
            "config": {"ratio": ratio, "epochs": 5, "batch_size": 32, "lr": 1e-4, "seeds": sorted(logits),
                       "threshold": 0.5, "sample": "fixed", "strategies": [strategy], "models": [model]},
            "data": {"uri": "data/x", "manifest_digest": "sha256:" + "ab" * 32, "skipped_images": [],
                     "counts": {"train": {"malignant": train_malignant, "benign": benign}, "val": VAL_TEST,
                                "test": VAL_TEST}},
            "variants": [entry], "environment": {"device": "cpu", "torch": "2", "precision": "fp32"},
        }
    path.write_text(json.dumps(metrics))
    return metrics
