"""Training: device, seeding, normalisation on the device, one epoch of Adam steps."""
import sys
import threading

import torch
from torch import nn
from tqdm import tqdm

from ratio_cnn.errors import RatioCnnError

# ImageNet statistics: the usual normalisation for RGB photographs, and what the study's
# torchvision Normalize used.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RatioCnnError("--device cuda was asked for but no CUDA GPU is visible: use --device auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed weight init; return the generator that orders the batches."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 on the device -> normalised float32."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def show_progress() -> bool:
    """A progress bar where a person watches a terminal; plain log lines otherwise.

    Jobs running side by side in threads (the in-process study) would garble one another's bars.
    """
    return sys.stderr.isatty() and threading.current_thread() is threading.main_thread()


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,  # (N, 3, 128, 128) uint8, already on the device
    labels: torch.Tensor,  # (N,) float32, on the device
    batch_size: int,
    generator: torch.Generator,
    description: str = "train",
) -> dict[str, float]:
    model.train()
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    order = torch.randperm(len(images), generator=generator).to(images.device)
    total_loss = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device)
    batches = range(0, len(images), batch_size)
    for start in tqdm(batches, desc=description, leave=False, disable=not show_progress(), unit="batch"):
        idx = order[start : start + batch_size]
        x, y = normalise(images[idx]), labels[idx]
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        (loss / len(idx)).backward()  # mean over the batch, as BCEWithLogitsLoss() does
        optimizer.step()
        total_loss += loss.detach()
        correct += ((logits.detach() > 0).float() == y).sum()
    return {"loss": total_loss.item() / len(images), "accuracy": correct.item() / len(images)}
