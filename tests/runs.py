"""Run folders with chosen predictions, in the layout the jobs write, for the report's tests.

Training a model per case would take minutes and could not plant a known effect; these
folders hold exactly what a job writes (metrics.json, per-seed metrics.json and
predictions.csv) for logits the test chooses.
"""
import json
from dataclasses import dataclass, field
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


@dataclass
class ExtraSet:
    """An extra evaluation set of a constructed job: its labels, each seed's logits, and how many training images
    it shares (data.eval_sets[NAME].overlap_with_train)."""
    labels: np.ndarray
    logits: dict[int, np.ndarray]
    overlap: int = 0
    metadata: dict[str, list] = field(default_factory=dict)


def write_job(run: Path, ratio: float, logits: dict[int, tuple[np.ndarray, np.ndarray]],
              strategy: str = "none", model: str = "simple", train_malignant: int = 293, append: bool = False,
              y: np.ndarray | None = None, metadata: dict[str, list] | None = None,
              extra_sets: dict[str, ExtraSet] | None = None, data: dict | None = None,
              config: dict | None = None) -> dict:
    """ratio-<N>/ with one variant; logits: seed -> (val logits, test logits).

    What jobs write since the validity checks, each optional: y, the val and test labels (default labels());
    metadata, column -> one value per val/test image (predictions.csv's columns after probability);
    extra_sets, NAME -> ExtraSet (`eval:<NAME>` rows, each seed's `eval`, data.eval_sets); data, keys merged
    into metrics.json's data (columns, train_values, split); config, keys merged into its config (subgroups).
    """
    y = labels() if y is None else np.asarray(y)
    metadata, extra_sets = metadata or {}, extra_sets or {}
    malignant = int(y.sum())
    names = [f"malignant/m{(y[:i] == 1).sum()}.jpg" if label else f"benign/b{(y[:i] == 0).sum()}.jpg"
             for i, label in enumerate(y)]
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
        if extra_sets:
            seeds[str(seed)]["eval"] = {name: split_metrics(e.labels, e.logits[seed]) for name, e in extra_sets.items()}
        (seed_folder / "metrics.json").write_text(json.dumps(seeds[str(seed)]))
        rows = [pd.DataFrame({"split": split, "image": [f"{split}/{n}" for n in names],
                              "label": np.where(y == 1, "malignant", "benign"), "logit": values,
                              "probability": 1 / (1 + np.exp(-values)), **metadata})
                for split, values in (("val", val), ("test", test))]
        for name, e in extra_sets.items():
            rows.append(pd.DataFrame({"split": f"eval:{name}", "image": [f"{name}/x{i}.jpg" for i in range(len(e.labels))],
                                      "label": np.where(e.labels == 1, "malignant", "benign"), "logit": e.logits[seed],
                                      "probability": 1 / (1 + np.exp(-e.logits[seed])),
                                      **{c: e.metadata.get(c, [""] * len(e.labels)) for c in metadata}}))
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
        counts = {"malignant": malignant, "benign": len(y) - malignant}
        metrics = {
            "ratio": ratio, "run_id": run.name,
            "config": {"ratio": ratio, "epochs": 5, "batch_size": 32, "lr": 1e-4, "seeds": sorted(logits),
                       "threshold": 0.5, "sample": "fixed", "strategies": [strategy], "models": [model],
                       **(config or {})},
            "data": {"uri": "data/x", "manifest_digest": "sha256:" + "ab" * 32, "data_digest": "sha256:" + "cd" * 32, "skipped_images": [],
                     "counts": {"train": {"malignant": train_malignant, "benign": benign}, "val": counts,
                                "test": counts}, **(data or {})},
            "variants": [entry], "environment": {"device": "cpu", "torch": "2", "precision": "fp32"},
        }
        if extra_sets:
            metrics["data"]["eval_sets"] = {
                name: {"uri": f"data/{name}", "counts": {"malignant": int(e.labels.sum()),
                                                        "benign": int(len(e.labels) - e.labels.sum())},
                       "overlap_with_train": e.overlap,
                       "overlap_note": f"{e.overlap} images share a key with training" if e.overlap else None}
                for name, e in extra_sets.items()}
    path.write_text(json.dumps(metrics))
    return metrics
