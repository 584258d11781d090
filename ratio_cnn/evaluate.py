"""Evaluation: probabilities for a set of images, and the study's metrics from them."""
import numpy as np
import torch
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score
from torch import nn

from ratio_cnn.stats import sigmoid
from ratio_cnn.train import autocast, normalise


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int, precision: str = "fp32") -> torch.Tensor:
    """(N, 3, 128, 128) uint8 on the model's device -> (N,) float32 logits."""
    model.eval()
    with autocast(images.device, precision):
        return torch.cat([model(normalise(images[i : i + batch_size])).float() for i in range(0, len(images), batch_size)])


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Threshold metrics (malignant positive) and threshold-free ones, as plain numbers.

    Precision of a model that calls nothing malignant is 0, not undefined; ROC-AUC and
    average precision are None when the set holds a single class.
    """
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(probabilities) >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, predicted, labels=[0, 1]).ravel())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    both_classes = 0 < labels.sum() < len(labels)
    return {
        "accuracy": (tp + tn) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "roc_auc": float(roc_auc_score(labels, probabilities)) if both_classes else None,
        "average_precision": float(average_precision_score(labels, probabilities)) if both_classes else None,
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "threshold": threshold,
    }


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, threshold: float,
             precision: str = "fp32") -> tuple[dict, np.ndarray]:
    """Loss and every metric of one split, and the per-image logits."""
    logits = predict(model, images, batch_size, precision)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, labels).item()
    logits = logits.cpu().numpy()
    return {"loss": loss, **binary_metrics(labels.cpu().numpy(), sigmoid(logits), threshold)}, logits
