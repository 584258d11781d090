"""Imbalance strategies: turn (training set, strategy) into what the training loop consumes.

A `TrainingPlan` holds the images the loop indexes (the training set, plus synthetic
malignant images for `synthetic`), the loss's pos_weight, each epoch's order and the
batch transform. docs/strategies.md says what each strategy does and why.
"""
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ratio_cnn.errors import RatioCnnError

log = logging.getLogger(__name__)

STRATEGIES = ("none", "pos_weight", "oversample", "augment", "synthetic")

# Mild colour jitter: a dermoscope's lighting and white balance vary a little, but lesion
# colour is a diagnostic feature (the C of ABCD), so it must not be pushed far.
BRIGHTNESS = CONTRAST = SATURATION = 0.1  # factor drawn from U(0.9, 1.1), as torchvision's ColorJitter(0.1)
# torchvision's RandomResizedCrop draw, with the area kept to 60-100% so a lesion stays mostly in view.
CROP_AREA = (0.6, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)
LOG_ASPECT = (math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1]))
SYNTHETIC_CHUNK = 64  # images made at once: 12 MB of float32 per copy (faster than bigger chunks on a CPU, too)
GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass(frozen=True)
class TrainingPlan:
    images: torch.Tensor  # (N', 3, 128, 128) uint8 on the device: the training set, then any synthetic images
    labels: torch.Tensor  # (N',) float32 on the device, 1 = malignant
    pos_weight: float | None  # BCEWithLogitsLoss's pos_weight; None leaves the loss unweighted
    train_odds: float  # malignant:benign odds the loss sees, for the report's prior-shift correction
    balance_classes: bool  # each epoch draws malignant images with replacement up to the benign count
    augment: bool  # flips, quarter turns and colour jitter on every batch

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        """(M,) int64 indices into `images` for one epoch.

        Drawn from a CPU generator, then moved, so that the order is the same on every device.
        """
        if not self.balance_classes:
            return torch.randperm(len(self.labels), generator=generator).to(self.images.device)
        labels = self.labels.cpu()
        benign = torch.nonzero(labels == 0).squeeze(1)
        malignant = torch.nonzero(labels == 1).squeeze(1)
        draws = malignant[torch.randint(len(malignant), (len(benign),), generator=generator)]
        epoch = torch.cat([benign, draws])
        return epoch[torch.randperm(len(epoch), generator=generator)].to(self.images.device)

    def transform(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, 3, H, W) uint8 batch -> float32 in [0, 255]; `generator` is on the images' device."""
        return augment_batch(images, generator) if self.augment else images.float()


def make_plan(
    strategy: str,
    images: torch.Tensor,  # (N, 3, 128, 128) uint8 on the device: the training set only
    labels: torch.Tensor,  # (N,) float32 on the device
    generator: torch.Generator,  # on the device; draws the synthetic images
    synthetic_malignant: int = 3000,  # the study's count
) -> TrainingPlan:
    """What the training loop consumes to train on `images` with `strategy`, one of STRATEGIES."""
    if strategy not in STRATEGIES:
        raise RatioCnnError(f"unknown imbalance strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    malignant = int((labels == 1).sum())
    benign = len(labels) - malignant
    if malignant == 0 or benign == 0:
        raise RatioCnnError(f"the training set has {malignant} malignant and {benign} benign images: "
                            f"strategy {strategy!r} needs both classes")
    plan = dict(images=images, labels=labels, pos_weight=None, train_odds=malignant / benign,
                balance_classes=False, augment=False)
    if strategy == "pos_weight":
        plan.update(pos_weight=benign / malignant, train_odds=1.0)  # (m * b/m) / b
    elif strategy == "oversample":
        plan.update(balance_classes=True, train_odds=1.0)
    elif strategy == "augment":
        plan.update(augment=True)
    elif strategy == "synthetic":
        extra = make_synthetic_images(images[labels == 1], synthetic_malignant, generator)
        log.info("made %d synthetic malignant images from the %d training malignant images", len(extra), malignant)
        plan.update(images=torch.cat([images, extra]),
                    labels=torch.cat([labels, labels.new_ones(len(extra))]),
                    train_odds=(malignant + len(extra)) / benign)
    return TrainingPlan(**plan)


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, S, S) uint8 or float in [0, 255] -> float32 in [0, 255]: a random flip left-right,
    flip up-down, quarter turn and colour jitter per image."""
    b, device = len(images), images.device
    flips = torch.rand(2, b, generator=generator, device=device) < 0.5
    turns = torch.randint(4, (b,), generator=generator, device=device)
    x = flip_and_turn(images, flips[0], flips[1], turns).float()  # turned before .float(): fewer bytes to move
    return colour_jitter(x, *jitter_factors(b, generator, device))


def make_synthetic_images(malignant: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 3, S, S) uint8 new images, each a random resized crop of one random image of `malignant`
    (the training set's malignant images) given augment_batch's flips, quarter turn and colour jitter."""
    device = malignant.device
    out = torch.empty((count, *malignant.shape[1:]), dtype=torch.uint8, device=device)
    for start in range(0, count, SYNTHETIC_CHUNK):  # in chunks: float copies of all 3,000 would take 600 MB each
        n = min(SYNTHETIC_CHUNK, count - start)
        source = malignant[torch.randint(len(malignant), (n,), generator=generator, device=device)].float()
        x = augment_batch(resized_crop(source, crop_boxes(n, generator, device)), generator)
        out[start : start + n] = x.round().to(torch.uint8)
    return out


def flip_and_turn(x: torch.Tensor, flip_h: torch.Tensor, flip_v: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S): per image, flip left-right where flip_h, then up-down where flip_v, then rotate
    by turns (B,) in {0, 1, 2, 3} quarter turns as torch.rot90 does."""
    def where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.view(-1, 1, 1, 1), a, b)

    x = where(flip_h, x.flip(3), x)
    x = where(flip_v, x.flip(2), x)
    # rot90 by k = transpose when k is odd, then flip rows for k in {1, 2} and columns for k in {2, 3}.
    x = where(turns % 2 == 1, x.transpose(2, 3), x)
    x = where((turns == 1) | (turns == 2), x.flip(2), x)
    return where(turns >= 2, x.flip(3), x)


def jitter_factors(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(3, n) brightness, contrast and saturation factors, each from U(1 - 0.1, 1 + 0.1)."""
    spread = torch.tensor([BRIGHTNESS, CONTRAST, SATURATION], device=device).view(3, 1)
    return 1 + spread * (2 * torch.rand(3, n, generator=generator, device=device) - 1)


def colour_jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                  saturation: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 255], factors (B,) -> torchvision's adjust_brightness, adjust_contrast
    and adjust_saturation, in that order (factor 1 leaves an image as it is)."""
    def blend(image: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        factor = factor.view(-1, 1, 1, 1)
        return (factor * image + (1 - factor) * other).clamp(0, 255)

    def gray(image: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W)
        r, g, b = image.unbind(1)
        return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)

    x = blend(x, torch.zeros_like(x), brightness)
    x = blend(x, gray(x).mean(dim=(1, 2, 3), keepdim=True), contrast)
    return blend(x, gray(x), saturation)


def crop_boxes(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n, 4) crops (left, top, width, height) as fractions of the side, drawn as torchvision's
    RandomResizedCrop does: area uniform in CROP_AREA, aspect log-uniform in CROP_ASPECT,
    redrawn until the crop fits, then placed uniformly."""
    area, log_aspect = torch.empty(n, device=device), torch.empty(n, device=device)
    redraw = torch.ones(n, dtype=torch.bool, device=device)
    while redraw.any():  # about a third of draws do not fit; each round redraws only those
        k = int(redraw.sum())
        area[redraw] = torch.empty(k, device=device).uniform_(*CROP_AREA, generator=generator)
        log_aspect[redraw] = torch.empty(k, device=device).uniform_(*LOG_ASPECT, generator=generator)
        aspect = log_aspect.exp()  # width / height
        width, height = (area * aspect).sqrt(), (area / aspect).sqrt()
        redraw = (width > 1) | (height > 1)
    left = torch.rand(n, generator=generator, device=device) * (1 - width)
    top = torch.rand(n, generator=generator, device=device) * (1 - height)
    return torch.stack([left, top, width, height], dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float, boxes (B, 4) as from crop_boxes -> each crop resized bilinearly to (H, W)."""
    left, top, width, height = boxes.unbind(1)
    zero = torch.zeros_like(left)
    # affine_grid works in [-1, 1] coordinates: scale by the crop's size, shift to its centre.
    theta = torch.stack([torch.stack([width, zero, 2 * left + width - 1], dim=1),
                         torch.stack([zero, height, 2 * top + height - 1], dim=1)], dim=1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
