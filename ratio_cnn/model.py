"""The study's CNNs and their seeded initialisation. Pure PyTorch: no I/O, no parsing.

Replicates train side by side in threads of one process, so nothing here draws from the
global RNG: weights come from a generator passed to `build_model`, dropout masks from a
generator attached with `attach_dropout_generator`.
"""
import math

import torch
from torch import nn

from ratio_cnn.errors import RatioCnnError

IMAGE_SIZE = 128  # the study's input: 3 x 128 x 128 RGB


class SeededDropout(nn.Dropout):
    """nn.Dropout (same state_dict) whose mask comes from its own generator once one is attached."""

    generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.generator is None:
            return super().forward(x)
        keep = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.generator)
        return x * keep / (1 - self.p)  # inverted dropout, as nn.Dropout: eval needs no rescaling


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


def conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    """3x3 conv keeping height and width, batch norm, ReLU."""
    return [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()]


class UpgradedCNN(nn.Module):
    """Four conv blocks, global average pooling and a dropout head; one logit, malignant is positive."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_block(3, 32),  # (B, 32, 128, 128)
            nn.MaxPool2d(2),  # (B, 32, 64, 64)
            *conv_block(32, 64),  # (B, 64, 64, 64)
            nn.MaxPool2d(2),  # (B, 64, 32, 32)
            *conv_block(64, 128),  # (B, 128, 32, 32)
            nn.MaxPool2d(2),  # (B, 128, 16, 16)
            *conv_block(128, 256),  # (B, 256, 16, 16)
        )
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),  # (B, 256, 1, 1)
            nn.Flatten(),  # (B, 256)
            SeededDropout(0.4),
            nn.Linear(256, 1),  # (B, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, 128, 128) normalised float -> (B,) logits
        return self.classifier(self.features(x)).squeeze(1)


MODELS = {"simple": SimpleCNN, "upgraded": UpgradedCNN}


def init_weights(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draw every weight from `generator` with PyTorch's default distributions.

    The generator must be on the model's device.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            # What Conv2d.reset_parameters and Linear.reset_parameters draw, in the same order.
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight[0].numel())  # fan_in = in_channels * kernel area
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()  # weight 1, bias 0, running statistics reset: nothing random
        else:
            # build_model allocates uninitialised memory: a module left out here would keep garbage.
            state = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            assert not state, f"init_weights does not know how to initialise {type(module).__name__}"
    return model


def build_model(name: str, generator: torch.Generator) -> nn.Module:
    """The architecture `name` on the generator's device, its weights drawn from `generator` alone.

    A CPU generator gives the same weights whatever device the model then moves to.
    """
    if name not in MODELS:
        raise RatioCnnError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    with torch.device("meta"):  # constructing on a real device would draw default weights from the global RNG
        model = MODELS[name]()
    return init_weights(model.to_empty(device=generator.device), generator)


def attach_dropout_generator(model: nn.Module, generator: torch.Generator) -> None:
    """Draw the masks of every SeededDropout in `model` from `generator`, which must be on the model's device.

    The generator is not part of the state_dict: checkpoints save its `get_state()` beside it.
    """
    for module in model.modules():
        if isinstance(module, SeededDropout):
            module.generator = generator
