"""The baseline: the original study's pipeline, written plainly.

A Dataset that opens each JPEG with PIL whenever an image is asked for (so every epoch),
ToTensor and Normalize; a shuffled DataLoader at batch 32; SimpleCNN in fp32 eager mode,
Adam and BCEWithLogitsLoss; evaluation under no_grad at batch 32. The architecture, its
initial weights, the images of every split and the metrics are ratio-cnn's own, so a
comparison with ratio-cnn measures the pipeline and nothing else.

num_workers=0 by default: on the 2-core development machine loader processes compete with
training for the same cores (bench/run.py measures num_workers=2 once).
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from ratio_cnn.config import TrainConfig, ratio_name
from ratio_cnn.data import LABELS, MANIFEST, read_manifest, split_and_sample
from ratio_cnn.evaluate import binary_metrics
from ratio_cnn.model import build_model
from ratio_cnn.train import MEAN, STD, pick_device

TRANSFORM = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


class JpegDataset(Dataset):
    """The (image, label) rows of a dataset folder; each image is read and decoded when asked for."""

    def __init__(self, folder: Path, rows: pd.DataFrame) -> None:
        self.paths = [Path(folder) / name for name in rows["image"]]
        self.labels = [float(LABELS[label]) for label in rows["label"]]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = Image.open(self.paths[i]).convert("RGB")
        return TRANSFORM(image), torch.tensor(self.labels[i])


def make_loader(folder: Path, rows: pd.DataFrame, shuffle: bool, num_workers: int = 0) -> DataLoader:
    return DataLoader(JpegDataset(folder, rows), batch_size=TrainConfig.batch_size, shuffle=shuffle,
                      num_workers=num_workers)


def new_model(seed: int, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """SimpleCNN with the same initial weights as ratio-cnn's seed, and plain Adam."""
    model = build_model("simple", torch.Generator().manual_seed(seed)).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=TrainConfig.lr)


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                device: torch.device) -> float:
    """One pass over the loader; the mean training loss."""
    model.train()
    loss_fn = nn.BCEWithLogitsLoss()
    total = 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(labels)
    return total / len(loader.dataset)


def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Labels and malignant probabilities of every image of the loader."""
    model.eval()
    labels, probabilities = [], []
    with torch.no_grad():
        for images, y in loader:
            probabilities.append(torch.sigmoid(model(images.to(device))).cpu())
            labels.append(y)
    return torch.cat(labels).numpy(), torch.cat(probabilities).numpy()


def run_study(data: str, out: str, ratios: list[float], options: dict) -> dict:
    """Every ratio and seed as the study ran them: datasets from the manifest, training with
    validation after every epoch (the curves need it), then test; model and metrics written.

    `options` are TrainConfig fields (seeds, epochs, split sizes, device): the same images and
    hyperparameters as a ratio-cnn job given the same options.
    """
    folder = Path(data)
    manifest = read_manifest((folder / MANIFEST).read_bytes(), str(folder / MANIFEST))
    test_roc_auc = {}
    for ratio in ratios:
        cfg = TrainConfig(ratio=ratio, data=data, **options)
        sets = split_and_sample(manifest, cfg, data)
        device = pick_device(cfg.device)
        train = make_loader(folder, sets["train"], shuffle=True)
        val, test = (make_loader(folder, sets[split], shuffle=False) for split in ("val", "test"))
        for seed in cfg.seeds:
            torch.manual_seed(seed)  # the DataLoader's shuffling
            model, optimizer = new_model(seed, device)
            history = []
            for epoch in range(1, cfg.epochs + 1):
                train_loss = train_epoch(model, train, optimizer, device)
                val_metrics = binary_metrics(*predict(model, val, device), cfg.threshold)
                history.append({"epoch": epoch, "train_loss": train_loss, "val_roc_auc": val_metrics["roc_auc"]})
            test_metrics = binary_metrics(*predict(model, test, device), cfg.threshold)
            seed_folder = Path(out) / f"ratio-{ratio_name(ratio)}" / f"seed-{seed}"
            seed_folder.mkdir(parents=True)
            torch.save(model.state_dict(), seed_folder / "model.pt")
            (seed_folder / "metrics.json").write_text(json.dumps({"history": history, "test": test_metrics}))
            test_roc_auc[f"1:{ratio_name(ratio)} seed {seed}"] = test_metrics["roc_auc"]
    return {"test_roc_auc": test_roc_auc}
