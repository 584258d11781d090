"""A synthetic dermoscopy-like dataset: the embedded default, so nothing must be downloaded.

Each image is a lesion on skin under a dermoscope's round field of view. Its ABCD
features (asymmetry, border irregularity, colour variegation, diameter) grow with a
latent severity; malignant lesions draw that severity from a distribution shifted
against the benign one but overlapping it, and every feature adds noise of its own.
So the task is learnable but never perfectly separable, as on real dermoscopy.
"""
import io
import logging

import numpy as np
import pandas as pd
from PIL import Image

from ratio_cnn.data import MANIFEST
from ratio_cnn.model import IMAGE_SIZE
from ratio_cnn.storage import open_storage

log = logging.getLogger(__name__)

# The study's counts: 293 training + 50 val + 50 test malignant; 1000 val + 1000 test +
# 1465 training benign, enough for the 1:5 ratio.
MALIGNANT, BENIGN = 393, 3465
SEVERITY_SHIFT = 2.2  # malignant severity ~ N(2.2, 1), benign ~ N(0, 1)
FEATURE_NOISE = 0.8  # each ABCD feature = severity + N(0, 0.8)

SKIN = np.array([224.0, 182.0, 156.0])
LESION = np.array([128.0, 82.0, 58.0])  # mid brown
# Colours a variegated lesion adds: dark brown, black, blue-grey, red, light tan.
PALETTE = np.array([[70, 42, 30], [34, 28, 30], [92, 102, 124], [168, 78, 74], [176, 128, 96]], dtype=float)


def render_lesion(rng: np.random.Generator, malignant: bool) -> np.ndarray:
    """One (128, 128, 3) uint8 image."""
    n = IMAGE_SIZE
    severity = rng.normal(SEVERITY_SHIFT if malignant else 0.0, 1.0)
    feature = lambda: severity + rng.normal(0.0, FEATURE_NOISE)  # noqa: E731
    diameter = np.clip(20 + 5 * feature(), 10, 50)  # radius in pixels
    asymmetry = np.clip(0.08 + 0.07 * feature(), 0.0, 0.45)
    border = np.clip(0.03 + 0.035 * feature(), 0.0, 0.25)
    variegation = np.clip(0.25 + 0.25 * feature(), 0.0, 1.0)

    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    cy, cx = n / 2 + rng.normal(0, 6, size=2)
    theta, r = np.arctan2(yy - cy, xx - cx), np.hypot(yy - cy, xx - cx)

    # Skin: a random tone, uneven lighting, fine texture, the dermoscope's dark rim.
    skin = SKIN * rng.uniform(0.85, 1.08) + rng.normal(0, 6, size=3)
    light = 1 + 0.06 * ((xx - n / 2) * rng.normal() + (yy - n / 2) * rng.normal()) / n
    image = skin * light[..., None] + rng.normal(0, 4, size=(n, n, 1))

    # Border: an ellipse pulled to one side (asymmetry) with ragged harmonics (irregularity).
    edge = 1 + asymmetry * np.cos(theta - rng.uniform(0, 2 * np.pi)) + 0.5 * asymmetry * np.cos(2 * (theta - rng.uniform(0, np.pi)))
    for k in range(3, 13):
        edge += border * rng.normal() / np.sqrt(k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    mask = 1 / (1 + np.exp((r - diameter * edge) / 1.5))

    # Colour: brown, darker towards the centre, with blotches of other colours.
    colour = LESION * rng.uniform(0.75, 1.15) * (1 - 0.25 * np.exp(-((r / diameter) ** 2)))[..., None]
    for _ in range(rng.poisson(1 + 5 * variegation)):
        by, bx = cy + rng.normal(0, diameter / 2.5), cx + rng.normal(0, diameter / 2.5)
        blotch = np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * (diameter * rng.uniform(0.12, 0.35)) ** 2))
        weight = (variegation * rng.uniform(0.4, 1.0) * blotch)[..., None]
        colour = colour * (1 - weight) + PALETTE[rng.integers(len(PALETTE))] * weight
    colour *= 1 + rng.normal(0, 0.05, size=(n, n, 1))
    image = image * (1 - mask[..., None]) + colour * mask[..., None]

    # A few hairs, on either class.
    for _ in range(rng.poisson(1.5)):
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-n / 2, n / 2)
        dist = np.abs((xx - n / 2) * np.sin(angle) - (yy - n / 2) * np.cos(angle) - offset)
        image *= 1 - 0.6 * np.exp(-(dist**2) / 0.8)[..., None]

    image *= np.clip(1.15 - (r / (0.72 * n)) ** 6, 0.05, 1)[..., None]  # round field of view
    return np.clip(image, 0, 255).astype(np.uint8)


def make_synthetic_dataset(out: str, malignant: int = MALIGNANT, benign: int = BENIGN, seed: int = 0,
                           workers: int = 16) -> pd.DataFrame:
    """Write the images and then manifest.csv (last: its presence means complete)."""
    storage = open_storage(out)
    rows, files = [], {}
    for label, count in (("malignant", malignant), ("benign", benign)):
        for i in range(count):
            # One generator per image: the same seed gives the same image whatever the counts.
            rng = np.random.default_rng([seed, label == "malignant", i])
            buffer = io.BytesIO()
            Image.fromarray(render_lesion(rng, label == "malignant")).save(buffer, format="JPEG", quality=90)
            name = f"{label}/synth-{i:05d}.jpg"
            files[name] = buffer.getvalue()
            rows.append({"image": name, "label": label})
    storage.put_many(files, workers=workers)
    manifest = pd.DataFrame(rows)
    storage.put(MANIFEST, manifest.to_csv(index=False).encode())
    log.info("wrote %d malignant + %d benign synthetic images to %s", malignant, benign, storage.uri)
    return manifest
