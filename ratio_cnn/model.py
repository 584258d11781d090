"""SimpleCNN, exactly as in the study. Pure PyTorch: no I/O, no parsing."""
import torch
from torch import nn

IMAGE_SIZE = 128  # the study's input: 3 x 128 x 128 RGB


class SimpleCNN(nn.Module):
    """One conv block and a two-layer head; one logit, malignant is positive."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1),  # (B, 32, 128, 128)
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),  # (B, 32, 64, 64)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 131072)
            nn.Linear(32 * (IMAGE_SIZE // 2) ** 2, 256),  # (B, 256)
            nn.ReLU(),
            nn.Linear(256, 1),  # (B, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, 128, 128) normalised float -> (B,) logits
        return self.classifier(self.features(x)).squeeze(1)
