"""Figures, written as PNG files: confusion matrices, training curves, metrics by ratio, ROC and PR,
reliability diagrams, and the index's trends across runs."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display in containers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def training_curves_by_seed(histories: dict[int, pd.DataFrame], title: str, path: Path) -> None:
    """Loss and accuracy per epoch: the mean over seeds, with a band from the lowest to the highest seed."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for split in ("train", "val"):
            table = pd.concat({s: h.set_index("epoch")[f"{split}_{metric}"] for s, h in histories.items()}, axis=1)
            line = ax.plot(table.index, table.mean(axis=1), marker="o", label=f"{split} (mean)")[0]
            ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=line.get_color(), alpha=0.2)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title}: {len(histories)} seeds (band: lowest to highest)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def metrics_by_ratio(series: dict[str, dict[str, list]], ratios: list[float], path: Path) -> None:
    """Each metric against the ratio, one panel per metric, with 95% interval error bars.

    series: label (e.g. "test") -> metric -> [(mean, low, high) per ratio]; low/high may be None.
    """
    metrics = ["accuracy", "precision", "recall", "f1", "roc_auc", "average_precision"]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), sharex=True)
    for ax, metric in zip(axes.flat, metrics):
        for offset, (label, by_metric) in enumerate(series.items()):
            points = by_metric[metric]
            mean = [p[0] for p in points]
            below = [p[0] - p[1] if p[1] is not None else 0 for p in points]
            above = [p[2] - p[0] if p[2] is not None else 0 for p in points]
            x = [i + 0.08 * (offset - (len(series) - 1) / 2) for i in range(len(ratios))]
            ax.errorbar(x, mean, yerr=[below, above], marker="o", capsize=3, label=label)
        ax.set_title(metric.replace("_", " "))
        ax.set_xticks(range(len(ratios)), [f"1:{r:g}" for r in ratios])
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Metrics by malignant:benign training ratio (mean over seeds, 95% interval over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curve_bands(bands: dict[str, tuple], kind: str, path: Path, baseline: float | None = None) -> None:
    """ROC or precision-recall curves, one per model, each the mean over seeds with a min-max band.

    bands: label -> (grid, mean, low, high) from ratio_cnn.stats; kind: "roc" or "pr".
    """
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for label, (grid, mean, low, high) in bands.items():
        line = ax.plot(grid, mean, label=label)[0]
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.18)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate (recall)")
        ax.set_title("ROC, test (band: lowest to highest seed)")
    else:
        if baseline is not None:  # a classifier that ranks at random
            ax.axhline(baseline, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("Precision-recall, test (band: lowest to highest seed)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reliability_diagrams(panels: dict[str, dict[str, tuple]], title: str, path: Path) -> None:
    """Reliability diagrams, one panel per key (e.g. as trained, corrected), one line per model.

    panels: panel title -> label -> (predicted, observed, low, high), each (bins,) from
    ratio_cnn.analysis, NaN in an empty bin: the observed malignant share against the mean
    predicted probability, with a band from the lowest to the highest seed.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    for ax, (panel, lines) in zip(axes.flat, panels.items()):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)  # perfectly calibrated
        for label, curve in lines.items():
            filled = ~np.isnan(curve[0])  # bins with images
            predicted, observed, low, high = (np.asarray(c)[filled] for c in curve)
            line = ax.plot(predicted, observed, marker="o", markersize=3, label=label)[0]
            ax.fill_between(predicted, low, high, color=line.get_color(), alpha=0.18)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("mean predicted probability (bin)")
        ax.set_ylabel("observed malignant share")
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title} (band: lowest to highest seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def trends(t, path: Path) -> None:
    """history.Trends: one panel per headline metric, a line per ratio across runs with 95% intervals over
    seeds; dashed lines where the data changed, dotted where the configuration did, red marks where a run
    flagged a regression."""
    metrics = list(t.points)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(8, 0.35 * len(t.runs) + 3), 2.4 * len(metrics) + 0.8),
                             sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        for offset, (label, points) in enumerate(t.points[metric].items()):
            x = [p[0] + 0.06 * (offset - (len(t.points[metric]) - 1) / 2) for p in points]
            mean = [p[1] for p in points]
            below = [p[1] - p[2] if p[2] is not None else 0 for p in points]
            above = [p[3] - p[1] if p[3] is not None else 0 for p in points]
            ax.errorbar(x, mean, yerr=[below, above], marker="o", markersize=3, capsize=2, label=label)
        for i in t.data_changes:
            ax.axvline(i - 0.5, color="0.3", linestyle="--", linewidth=1)
        for i in t.config_changes:
            ax.axvline(i - 0.5, color="tab:purple", linestyle=":", linewidth=1.5)
        for i in t.regressions:
            ax.axvspan(i - 0.4, i + 0.4, color="tab:red", alpha=0.15)
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=4)
    axes[-1, 0].set_xticks(range(len(t.runs)), t.runs, rotation=90, fontsize=7)
    fig.suptitle("Test metrics across runs (mean over seeds, 95% interval); --- data changed, ··· configuration "
                 "changed, red: regression flagged", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
