"""Training: device and precision, a replicate's model and generators, normalisation on the device,
one epoch of Adam steps."""
import sys
import threading
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from ratio_cnn.errors import RatioCnnError
from ratio_cnn.model import attach_dropout_generator, build_model
from ratio_cnn.strategies import TrainingPlan, make_plan

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


def pick_precision(name: str, device: torch.device) -> str:
    """auto: bf16 on a GPU (faster), fp32 on a CPU: where a CPU emulates bf16 it was 9-10x slower,
    and even one that computes in it (AVX512-BF16) evaluated slower; `--precision bf16` opts in
    (docs/benchmarks.md measures both)."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the forward pass; weights and optimizer state stay fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The study's Adam, fused: one kernel over all 33.5M weights (1.3x the training speed on a
    2-core CPU, where Adam was a quarter of each step; one launch on a GPU)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


@dataclass(frozen=True)
class Replicate:
    """One seed's model, optimizer and training plan, and every random generator it draws from."""

    model: nn.Module  # on the device; channels_last under bf16
    optimizer: torch.optim.Optimizer
    plan: TrainingPlan
    order_generator: torch.Generator  # on the CPU: the batch order is the same on every device
    device_generator: torch.Generator  # on the device: synthetic images, augmentation and dropout draws
    precision: str

    @property
    def generators(self) -> dict[str, torch.Generator]:
        """By the names a checkpoint saves their states under."""
        return {"order": self.order_generator, "device": self.device_generator}


def build_replicate(
    model_name: str,
    strategy: str,
    seed: int,
    images: torch.Tensor,  # (N, 3, 128, 128) uint8 on the device: the training set
    labels: torch.Tensor,  # (N,) float32 on the device
    lr: float,
    precision: str,
    synthetic_malignant: int,  # images the "synthetic" strategy adds
) -> Replicate:
    """The replicate `seed` of (strategy, model) on the images' device, ready for its first epoch.

    Every random draw of the seed comes from its own generators, never from the global RNG,
    so seeds running side by side in one process cannot change each other's results; the
    initial weights come from a CPU generator, the same on every device.
    """
    order_generator = torch.Generator().manual_seed(seed)
    device_generator = torch.Generator(images.device).manual_seed(seed)
    model = build_model(model_name, torch.Generator().manual_seed(seed)).to(images.device)
    if precision == "bf16":
        model = model.to(memory_format=torch.channels_last)  # with bf16 autocast: the fast path on a GPU
    attach_dropout_generator(model, device_generator)
    plan = make_plan(strategy, images, labels, device_generator, synthetic_malignant)
    return Replicate(model, make_optimizer(model, lr), plan, order_generator, device_generator, precision)


def pick_eval_batch(size: int, device: torch.device) -> int:
    """0 (auto): 32 on a CPU, where small batches stay in cache (1.5x faster than 256, measured),
    256 on a GPU, where a large batch keeps it busy."""
    return size or (256 if device.type == "cuda" else 32)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pixels in [0, 255] (uint8 or float) on the device -> normalised float32."""
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
    plan: TrainingPlan,  # the training images (uint8, on the device), labels, sampling, loss weights, transform
    batch_size: int,
    order_generator: torch.Generator,  # on the CPU: the batch order is the same on every device
    device_generator: torch.Generator,  # on the device: augmentation and dropout draws
    precision: str = "fp32",
    description: str = "train",
) -> dict[str, float]:
    model.train()
    device = plan.images.device
    pos_weight = None if plan.pos_weight is None else torch.tensor(plan.pos_weight, device=device)
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum", pos_weight=pos_weight)
    order = plan.epoch_order(order_generator)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc=description, leave=False, disable=not show_progress(), unit="batch"):
        idx = order[start : start + batch_size]
        x, y = normalise(plan.transform(plan.images[idx], device_generator)), plan.labels[idx]
        with autocast(device, precision):
            logits = model(x).float()
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        (loss / len(idx)).backward()  # mean over the batch, as BCEWithLogitsLoss() does
        optimizer.step()
        total_loss += loss.detach()
        correct += ((logits.detach() > 0).float() == y).sum()
    return {"loss": total_loss.item() / len(order), "accuracy": correct.item() / len(order)}
