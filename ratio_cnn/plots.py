"""Figures, written as PNG files: confusion matrices, training curves, metrics by ratio."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display in containers and CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def confusion_matrices(per_split: dict[str, dict], title: str, path: Path) -> None:
    """One panel per split; rows are the true label, columns the predicted one."""
    fig, axes = plt.subplots(1, len(per_split), figsize=(4.2 * len(per_split), 3.8))
    for ax, (split, m) in zip(list(getattr(axes, "flat", [axes])), per_split.items()):
        cm = m["confusion_matrix"]
        cells = [[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]]
        ax.imshow(cells, cmap="Blues")
        high = max(max(row) for row in cells) or 1
        for i in range(2):
            for j in range(2):
                color = "white" if cells[i][j] > high / 2 else "black"
                ax.text(j, i, str(cells[i][j]), ha="center", va="center", color=color, fontsize=13)
        ax.set_xticks([0, 1], ["benign", "malignant"])
        ax.set_yticks([0, 1], ["benign", "malignant"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{split} (threshold {m['threshold']:g})")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def training_curves(history: pd.DataFrame, title: str, path: Path) -> None:
    """Loss and accuracy per epoch, train and val."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for split in ("train", "val"):
            ax.plot(history["epoch"], history[f"{split}_{metric}"], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def metrics_by_ratio(summary: pd.DataFrame, ratios: list[float], path: Path) -> None:
    """Each test and val metric against the benign:malignant ratio, one panel per metric."""
    metrics = ["accuracy", "precision", "recall", "f1", "roc_auc", "average_precision"]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), sharex=True)
    for ax, metric in zip(axes.flat, metrics):
        for split in ("val", "test"):
            ax.plot(ratios, summary[f"{split}_{metric}"].astype(float), marker="o", label=split)
        ax.set_title(metric.replace("_", " "))
        ax.set_xticks(ratios, [f"1:{r:g}" for r in ratios])
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle("Metrics by malignant:benign training ratio")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
