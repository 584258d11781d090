"""Datasets: the manifest, the val/test split, the per-ratio training sample, and loading.

A dataset is a storage prefix holding images and `manifest.csv` with columns
`image,label` and an optional `split` (train|val|test); labels are malignant|benign.
Images are 128x128 8-bit RGB (what `ratio-cnn data synth|ingest` write).
"""
import hashlib
import io
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ratio_cnn.config import TrainConfig, ratio_name
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.model import IMAGE_SIZE
from ratio_cnn.storage import Storage

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
LABELS = {"benign": 0, "malignant": 1}  # malignant is the positive class
SPLITS = ("train", "val", "test")


# -----------------------------------------------------------------------------
# manifest


def read_manifest(raw: bytes, where: str) -> pd.DataFrame:
    """Parse and check a manifest; every error names the line and what to do."""
    try:
        df = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RatioCnnError(f"cannot read {where} as CSV ({first}): it needs a header line image,label[,split]") from None
    if not isinstance(df.index, pd.RangeIndex):  # pandas took the extra first field as an index, shifting the rest
        raise RatioCnnError(
            f"{where} line 2 has more fields than its header {','.join(df.columns)}: quote names that hold "
            "commas, or fix the header (a manifest needs image,label[,split])"
        )
    missing = {"image", "label"} - set(df.columns)
    if missing:
        raise RatioCnnError(
            f"{where} has columns {', '.join(df.columns) or '(none)'} but lacks {', '.join(sorted(missing))}: "
            "a manifest needs image,label[,split]"
        )
    df["label"] = df["label"].str.strip().str.lower()
    for i, row in enumerate(df.itertuples(index=False), start=2):  # line 1 is the header
        if not row.image.strip():
            raise RatioCnnError(f"{where} line {i}: empty image name")
        if row.label not in LABELS:
            raise RatioCnnError(f"{where} line {i}: unknown label {row.label!r} for {row.image}: use malignant or benign")
        if "split" in df.columns and row.split not in SPLITS:
            raise RatioCnnError(f"{where} line {i}: unknown split {row.split!r} for {row.image}: use train, val or test")
    dupes = df["image"][df["image"].duplicated()]
    if len(dupes):
        line = int(dupes.index[0]) + 2
        raise RatioCnnError(f"{where} line {line}: image {dupes.iloc[0]} is listed twice: each image once")
    if df.empty:
        raise RatioCnnError(f"{where} lists no images")
    df["line"] = np.arange(2, len(df) + 2)
    return df


def digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


# -----------------------------------------------------------------------------
# splits and the per-ratio training sample


def _shuffled(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return df.iloc[rng.permutation(len(df))]


def split_and_sample(manifest: pd.DataFrame, cfg: TrainConfig, where: str) -> dict[str, pd.DataFrame]:
    """Val and test (fixed for all ratios), and the training sample for cfg.ratio.

    The shuffles depend on split_seed only, never on the ratio, so the benign training
    images are nested across ratios: 1:1's are the first ones of 1:2's, and so on.
    """
    rng = np.random.default_rng(cfg.split_seed)
    by_label = {name: _shuffled(manifest[manifest["label"] == name], rng) for name in LABELS}
    if "split" in manifest.columns:
        sets = {s: pd.concat([d[d["split"] == s] for d in by_label.values()]) for s in ("val", "test")}
        pool = {name: d[d["split"] == "train"] for name, d in by_label.items()}
        source = "its train split"
    else:
        sizes = {"malignant": (cfg.val_malignant, cfg.test_malignant), "benign": (cfg.val_benign, cfg.test_benign)}
        for name, (n_val, n_test) in sizes.items():
            if len(by_label[name]) < n_val + n_test:
                raise RatioCnnError(
                    f"{where} has {len(by_label[name])} {name} images, fewer than val ({n_val}) + test ({n_test}) "
                    f"need: lower --val-{name} / --test-{name}"
                )
        sets = {
            "val": pd.concat([by_label[n].iloc[: sizes[n][0]] for n in LABELS]),
            "test": pd.concat([by_label[n].iloc[sizes[n][0] : sum(sizes[n])] for n in LABELS]),
        }
        pool = {n: by_label[n].iloc[sum(sizes[n]) :] for n in LABELS}
        source = "what val and test leave"

    wanted = {"malignant": cfg.train_malignant, "benign": cfg.train_benign}
    if any(len(pool[n]) < wanted[n] for n in LABELS):
        have = " and ".join(f"{len(pool[n])} {n}" for n in LABELS)
        raise RatioCnnError(
            f"ratio 1:{ratio_name(cfg.ratio)} needs {cfg.train_malignant} malignant and {cfg.train_benign} benign "
            f"training images, but {source} in {where} holds {have}: lower --train-malignant "
            "or the val/test sizes, or add images"
        )
    sets["train"] = pd.concat([pool[n].iloc[: wanted[n]] for n in LABELS])
    for name in SPLITS:
        if sets[name].empty:
            raise RatioCnnError(f"the {name} split of {where} is empty: raise its --{name}-* sizes or add "
                                f"{name} rows to the manifest's split column")
    return {name: sets[name] for name in SPLITS}


def class_counts(sets: dict[str, pd.DataFrame]) -> dict[str, dict[str, int]]:
    return {s: {n: int((df["label"] == n).sum()) for n in LABELS} for s, df in sets.items()}


# -----------------------------------------------------------------------------
# loading: fetch concurrently, decode once into uint8 tensors kept for all epochs


class UndecodableImage(Exception):
    """An image whose bytes do not decode: skipped and counted, not fatal on its own."""


def decode_image(raw: bytes, name: str) -> np.ndarray:
    """Bytes of a 128x128 8-bit RGB image -> (128, 128, 3) uint8."""
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            mode, size = img.mode, img.size
            pixels = np.asarray(img) if mode == "RGB" else None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UndecodableImage(f"{name}: {e}") from None
    if mode != "RGB":
        raise RatioCnnError(
            f"{name} is a {mode} image, not 8-bit RGB: convert the dataset with `ratio-cnn data ingest`"
        )
    if size != (IMAGE_SIZE, IMAGE_SIZE):
        raise RatioCnnError(
            f"{name} is {size[0]}x{size[1]}, not {IMAGE_SIZE}x{IMAGE_SIZE}: resize the dataset with `ratio-cnn data ingest`"
        )
    return pixels


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, 3, 128, 128) uint8
    labels: torch.Tensor  # (N,) float32, 1.0 = malignant
    names: list[str]


def check_images_exist(storage: Storage, sets: dict[str, pd.DataFrame]) -> None:
    present = set(storage.list())
    for df in sets.values():
        missing = df[~df["image"].isin(present)]
        if len(missing):
            row = missing.iloc[0]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise RatioCnnError(
                f"{MANIFEST} line {row['line']} lists {row['image']}, but {storage.describe(row['image'])} "
                f"does not exist{more}: upload the images or fix the manifest"
            )


def load_images(
    storage: Storage, sets: dict[str, pd.DataFrame], workers: int, max_skipped: float
) -> tuple[dict[str, ImageSet], list[str]]:
    """Fetch and decode every image of every split; returns the sets and what was skipped."""
    names = [name for df in sets.values() for name in df["image"]]
    raw = storage.get_many(names, workers=workers)
    skipped, pixels = [], {}
    for name in names:
        try:
            pixels[name] = decode_image(raw[name], storage.describe(name))
        except UndecodableImage as e:
            log.warning("skipping undecodable image %s", e)
            skipped.append(name)
    if len(skipped) > max_skipped * len(names):
        raise RatioCnnError(
            f"{len(skipped)} of {len(names)} images could not be decoded (first: {storage.describe(skipped[0])}), "
            f"more than the {max_skipped:.1%} --max-skipped allows: replace or remove them from the manifest"
        )
    loaded = {}
    for split, df in sets.items():
        kept = df[df["image"].isin(pixels)]
        stack = np.stack([pixels[n] for n in kept["image"]])  # (N, 128, 128, 3)
        loaded[split] = ImageSet(
            images=torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous(),
            labels=torch.tensor([LABELS[label] for label in kept["label"]], dtype=torch.float32),
            names=list(kept["image"]),
        )
    return loaded, skipped
