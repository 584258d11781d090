"""Import real images into a dataset: 128x128 8-bit RGB JPEGs plus manifest.csv.

Two source layouts:
- a folder with `benign/` and `malignant/` subfolders (searched recursively);
- an ISIC-style CSV (an image-id column and a label column: `benign_malignant`,
  `target` or `melanoma` 0/1, or `label`) beside a folder of images.
Undecodable images are skipped and counted; more than `max_skipped` of them stops the
import before anything is written. manifest.csv is written last.

Metadata travels with the images. In the folder layout, a `manifest.csv` beside `benign/`
and `malignant/` (as the shared ISIC folder has) is joined on its `image` column, each
image's path relative to the source folder (`benign/ISIC_0000000.jpg`); with a CSV, its
other columns come along. Either way the columns keep their names and their values stay
text, after `image,label`; label columns (`label`, `benign_malignant`, `target`,
`melanoma`) are not copied, `label` already says it. The source file's path goes in
`source_path`, never `source`: that name belongs to the metadata (in the ISIC manifest,
the dataset an image came from). A `split` column comes along like any other, and a job
then takes it as the dataset's split.
"""
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

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
RESERVED_COLUMNS = {  # names the written manifest or its readers fill themselves
    "source_path": "the source file of each image",
    "line": "the manifest line number, added when a job reads the manifest",
}


class SourceImage(NamedTuple):
    path: Path  # the source file
    label: str
    name: str  # its key in the dataset: label/relative path.jpg
    metadata: dict[str, str]  # extra manifest columns, by name


def find_folder_images(src: Path) -> list[SourceImage]:
    """Every image under src/benign and src/malignant (no metadata yet)."""
    found = []
    for label in ("benign", "malignant"):
        folder = src / label
        if not folder.is_dir():
            raise RatioCnnError(f"{src} has no {label}/ subfolder: give a folder with benign/ and malignant/, or --csv")
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            check_inside(path, src)
            name = f"{label}/{path.relative_to(folder).with_suffix('.jpg').as_posix()}"
            found.append(SourceImage(path, label, name, {}))
    return found


def check_inside(path: Path, root: Path) -> None:
    """Refuse a file that a symlink takes outside the source folder: nothing is read from elsewhere."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise RatioCnnError(f"{path} leads outside {root} (to {path.resolve()}): copy the image into the source "
                            "folder instead of linking it")


def read_table(csv: Path) -> pd.DataFrame:
    """A CSV as text (no NaN, no number parsing: `00123` stays `00123`), column names stripped."""
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise RatioCnnError(f"cannot read {csv} as CSV: {e}") from None
    columns = [str(c).strip() for c in table.columns]
    if len(set(columns)) < len(columns):
        twice = next(c for c in columns if columns.count(c) > 1)
        raise RatioCnnError(f"{csv} has two columns named {twice!r}: rename one of them")
    table.columns = columns
    return table


def metadata_columns(table: pd.DataFrame, csv: Path, dropped: set[str]) -> list[str]:
    """The columns of `table` that travel into the manifest: all but `dropped` and label columns."""
    columns = [c for c in table.columns if c not in dropped and c not in LABEL_COLUMNS]
    for column in columns:
        if column in RESERVED_COLUMNS:
            raise RatioCnnError(f"{csv} has a column {column!r}, a name ratio-cnn uses itself "
                                f"({RESERVED_COLUMNS[column]}): rename that column")
    return columns


def join_folder_manifest(src: Path, found: list[SourceImage]) -> tuple[list[SourceImage], list[str]]:
    """Attach the extra columns of src/manifest.csv to the images it lists (by path relative to src)."""
    csv = src / MANIFEST
    if not csv.is_file():
        return found, []
    table = read_table(csv)
    if "image" not in table.columns:
        raise RatioCnnError(f"{csv} has columns {', '.join(table.columns)} but no image column: add one holding each "
                            f"image's path inside {src} (e.g. benign/x.jpg), or move the file away to ingest without "
                            "its metadata")
    columns = metadata_columns(table, csv, {"image"})
    by_path = {item.path.relative_to(src).as_posix(): i for i, item in enumerate(found)}
    rows: dict[int, dict[str, str]] = {}
    for line, (_, row) in enumerate(table.iterrows(), start=2):
        image = row["image"].strip().removeprefix("./")
        i = by_path.get(image)
        if i is None:
            raise RatioCnnError(f"{csv} line {line} lists {image!r}, which is not an image under {src}/benign or "
                                f"{src}/malignant: fix the path (relative to {src}) or drop the row")
        if i in rows:
            raise RatioCnnError(f"{csv} line {line}: {image} is listed twice: keep one row per image")
        given = row.get("label", "").strip().lower()
        if given and given != found[i].label:
            raise RatioCnnError(f"{csv} line {line}: label {row['label']!r} for {image}, but the image is in "
                                f"{found[i].label}/: move the image or fix the row")
        rows[i] = {c: row[c] for c in columns}
    unlisted = [item.path for i, item in enumerate(found) if i not in rows]
    if unlisted:
        log.warning("%s does not list %d of %d images (first: %s): their %s are left empty", csv, len(unlisted),
                    len(found), unlisted[0], ", ".join(columns) or "columns")
    empty = dict.fromkeys(columns, "")
    return [item._replace(metadata=rows.get(i, empty)) for i, item in enumerate(found)], columns


def find_csv_images(csv: Path, images: Path) -> tuple[list[SourceImage], list[str]]:
    """The images a CSV lists, with its other columns as their metadata."""
    table = read_table(csv)
    id_col = next((c for c in ID_COLUMNS if c in table.columns), None)
    label_col = next((c for c in LABEL_COLUMNS if c in table.columns), None)
    if id_col is None or label_col is None:
        raise RatioCnnError(
            f"{csv} has columns {', '.join(table.columns)}: it needs an image id column ({', '.join(ID_COLUMNS)}) "
            f"and a label column ({', '.join(LABEL_COLUMNS)})"
        )
    columns = metadata_columns(table, csv, {"image"})  # an `image` id column is replaced by the dataset's key
    found = []
    for line, (_, row) in enumerate(table.iterrows(), start=2):
        image_id, raw_label = row[id_col], row[label_col]
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
        name = f"{label}/{Path(image_id).with_suffix('.jpg').as_posix()}"
        found.append(SourceImage(path, label, name, {c: row[c] for c in columns}))
    return found, columns


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
    if csv:
        found, columns = find_csv_images(Path(csv), source)
    else:
        found, columns = join_folder_manifest(source, find_folder_images(source))
    if not found:
        raise RatioCnnError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {src}")
    names = [item.name for item in found]
    if len(set(names)) < len(names):
        dupe = next(n for n in names if names.count(n) > 1)
        raise RatioCnnError(f"two source images become {dupe}: rename one of them")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        converted = list(pool.map(convert, [item.path for item in found]))
    skipped = [str(item.path) for item, jpeg in zip(found, converted) if jpeg is None]
    if len(skipped) > max_skipped * len(found):
        raise RatioCnnError(
            f"{len(skipped)} of {len(found)} images could not be decoded (first: {skipped[0]}), more than the "
            f"{max_skipped:.1%} --max-skipped allows: nothing was written; fix or remove them"
        )

    storage = open_storage(out)
    kept = [(item, jpeg) for item, jpeg in zip(found, converted) if jpeg is not None]
    storage.put_many({item.name: jpeg for item, jpeg in kept}, workers=workers)
    manifest = pd.DataFrame([{"image": item.name, "label": item.label, **item.metadata, "source_path": str(item.path)}
                             for item, _ in kept], columns=["image", "label", *columns, "source_path"])
    counts = manifest["label"].value_counts().to_dict()
    summary = {"source": str(source.resolve()), "images": len(kept), "counts": counts, "skipped": skipped,
               "metadata": {"from": csv or (str(source / MANIFEST) if columns else None), "columns": columns}}
    storage.put("ingest.json", json.dumps(summary, indent=2).encode())
    storage.put(MANIFEST, manifest.to_csv(index=False).encode())
    log.info("ingested %d images (%s) into %s; skipped %d", len(kept),
             ", ".join(f"{v} {k}" for k, v in counts.items()), storage.uri, len(skipped))
    return summary
