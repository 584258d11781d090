"""Import real images into a dataset: 128x128 8-bit RGB JPEGs plus manifest.csv.

Two source layouts:
- a folder with `benign/` and `malignant/` subfolders (searched recursively);
- an ISIC-style CSV (an image-id column and a label column: `benign_malignant`,
  `target` or `melanoma` 0/1, or `label`) beside a folder of images.
Undecodable images are skipped and counted; more than `max_skipped` of them stops the
import before anything is written. manifest.csv is written last.
"""
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from ratio_cnn.data import MANIFEST
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.model import IMAGE_SIZE
from ratio_cnn.storage import key_problem, open_storage

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
ID_COLUMNS = ("image_id", "image_name", "isic_id", "image")
LABEL_COLUMNS = {  # column -> how its values map to our labels
    "benign_malignant": {"benign": "benign", "malignant": "malignant"},
    "target": {"0": "benign", "1": "malignant", "0.0": "benign", "1.0": "malignant"},
    "melanoma": {"0": "benign", "1": "malignant", "0.0": "benign", "1.0": "malignant"},
    "label": {"benign": "benign", "malignant": "malignant"},
}


def find_folder_images(src: Path) -> list[tuple[Path, str, str]]:
    """(path, label, output name) for every image under src/benign and src/malignant."""
    found = []
    for label in ("benign", "malignant"):
        folder = src / label
        if not folder.is_dir():
            raise RatioCnnError(f"{src} has no {label}/ subfolder: give a folder with benign/ and malignant/, or --csv")
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            check_inside(path, src)
            found.append((path, label, f"{label}/{path.relative_to(folder).with_suffix('.jpg').as_posix()}"))
    return found


def check_inside(path: Path, root: Path) -> None:
    """Refuse a file that a symlink takes outside the source folder: nothing is read from elsewhere."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise RatioCnnError(f"{path} leads outside {root} (to {path.resolve()}): copy the image into the source "
                            "folder instead of linking it")


def find_csv_images(csv: Path, images: Path) -> list[tuple[Path, str, str]]:
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise RatioCnnError(f"cannot read {csv} as CSV: {e}") from None
    id_col = next((c for c in ID_COLUMNS if c in table.columns), None)
    label_col = next((c for c in LABEL_COLUMNS if c in table.columns), None)
    if id_col is None or label_col is None:
        raise RatioCnnError(
            f"{csv} has columns {', '.join(table.columns)}: it needs an image id column ({', '.join(ID_COLUMNS)}) "
            f"and a label column ({', '.join(LABEL_COLUMNS)})"
        )
    found = []
    for line, (image_id, raw_label) in enumerate(zip(table[id_col], table[label_col]), start=2):
        label = LABEL_COLUMNS[label_col].get(raw_label.strip().lower())
        if label is None:
            allowed = ", ".join(sorted(set(LABEL_COLUMNS[label_col])))
            raise RatioCnnError(f"{csv} line {line}: {label_col} is {raw_label!r} for {image_id}; expected one of {allowed}")
        if problem := key_problem(image_id):
            raise RatioCnnError(f"{csv} line {line}: image id {image_id!r} {problem}: ids name files inside {images}")
        candidates = [images / image_id] + [images / f"{image_id}{s}" for s in IMAGE_SUFFIXES]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise RatioCnnError(f"{csv} line {line}: no image {image_id}(.jpg, .png, …) in {images}: add it or drop the row")
        check_inside(path, images)
        found.append((path, label, f"{label}/{Path(image_id).with_suffix('.jpg').as_posix()}"))
    return found


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode (grayscale, RGBA, palette, CMYK, 16-bit) -> 8-bit RGB."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        pixels = np.asarray(img, dtype=np.float64)
        high = 65535.0 if img.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        img = Image.fromarray(np.clip(pixels / high * 255.0, 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def convert(path: Path) -> bytes | None:
    """A source image -> JPEG bytes of its 128x128 RGB version, or None if it does not decode."""
    try:
        with Image.open(path) as img:
            img.load()
            rgb = to_rgb(ImageOps.exif_transpose(img))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        log.warning("skipping undecodable image %s: %s", path, e)
        return None
    buffer = io.BytesIO()
    rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def ingest(src: str, out: str, csv: str | None = None, max_skipped: float = 0.01, workers: int = 8) -> dict:
    if not 0 <= max_skipped < 1:  # at 1 every image could be skipped, leaving an empty dataset
        raise RatioCnnError(f"--max-skipped is a share between 0 and 1, got {max_skipped}")
    source = Path(src)
    if not source.is_dir():
        raise RatioCnnError(f"{src} is not a folder: give the folder that holds the images")
    found = find_csv_images(Path(csv), source) if csv else find_folder_images(source)
    if not found:
        raise RatioCnnError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {src}")
    names = [name for _, _, name in found]
    if len(set(names)) < len(names):
        dupe = next(n for n in names if names.count(n) > 1)
        raise RatioCnnError(f"two source images become {dupe}: rename one of them")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        converted = list(pool.map(convert, [path for path, _, _ in found]))
    skipped = [str(path) for (path, _, _), jpeg in zip(found, converted) if jpeg is None]
    if len(skipped) > max_skipped * len(found):
        raise RatioCnnError(
            f"{len(skipped)} of {len(found)} images could not be decoded (first: {skipped[0]}), more than the "
            f"{max_skipped:.1%} --max-skipped allows: nothing was written; fix or remove them"
        )

    storage = open_storage(out)
    kept = [(item, jpeg) for item, jpeg in zip(found, converted) if jpeg is not None]
    storage.put_many({name: jpeg for (_, _, name), jpeg in kept}, workers=workers)
    manifest = pd.DataFrame([{"image": name, "label": label, "source": str(path)} for (path, label, name), _ in kept])
    counts = manifest["label"].value_counts().to_dict()
    summary = {"source": str(source.resolve()), "images": len(kept), "counts": counts, "skipped": skipped}
    storage.put("ingest.json", json.dumps(summary, indent=2).encode())
    storage.put(MANIFEST, manifest.to_csv(index=False).encode())
    log.info("ingested %d images (%s) into %s; skipped %d", len(kept),
             ", ".join(f"{v} {k}" for k, v in counts.items()), storage.uri, len(skipped))
    return summary
