"""Datasets: the manifest, the val/test split, the per-ratio training sample, and loading.

A dataset is a storage prefix holding images and `manifest.csv` with columns
`image,label` and an optional `split` (train|val|test); labels are malignant|benign.
Images are 128x128 8-bit RGB (what `ratio-cnn data synth|ingest` write).
"""
import contextlib
import hashlib
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from ratio_cnn.cache import OK, DecodedImages, ObjectCache
from ratio_cnn.config import TrainConfig, ratio_name
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.model import IMAGE_SIZE
from ratio_cnn.storage import Storage, key_problem

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
        if problem := key_problem(row.image):
            raise RatioCnnError(f"{where} line {i}: image {row.image!r} {problem}: image names are paths inside "
                                "the dataset folder")
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


def get_manifest(storage: Storage, version: str, cache: Path | None) -> bytes:
    """manifest.csv, from the cache when the listing shows it unchanged."""
    objects = _object_cache(cache, storage)
    if objects and (raw := objects.get(MANIFEST, version)) is not None:
        return raw
    raw = storage.get(MANIFEST)
    if objects:
        objects.put(MANIFEST, version, raw)
    return raw


def _object_cache(cache: Path | None, storage: Storage) -> ObjectCache | None:
    try:
        return ObjectCache(cache, storage.uri) if cache else None
    except OSError as e:  # a read-only or full cache costs speed, never the job
        log.warning("not caching objects in %s: %s", cache, e)
        return None


def digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


# -----------------------------------------------------------------------------
# splits and the per-ratio training sample


def _shuffled(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return df.iloc[rng.permutation(len(df))]


def split_and_sample(manifest: pd.DataFrame, cfg: TrainConfig, where: str,
                     sample_seed: int | None = None) -> dict[str, pd.DataFrame]:
    """Val and test (fixed for all ratios and seeds), and the training sample for cfg.ratio.

    The shuffles depend on split_seed only, never on the ratio, so the benign training
    images are nested across ratios: 1:1's are the first ones of 1:2's, and so on. With a
    `sample_seed` (`--sample per-seed`) the training pool is reshuffled by that seed before
    sampling: another sample per seed, still nested across ratios, same val and test.
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

    if sample_seed is not None:
        reshuffle = np.random.default_rng([cfg.split_seed, sample_seed])
        pool = {n: _shuffled(pool[n], reshuffle) for n in LABELS}
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
# loading: fetch what is not cached, decode in batches, one uint8 tensor for all epochs


class UndecodableImage(Exception):
    """An image whose bytes do not decode: skipped and counted, not fatal on its own."""


def decode_image(raw: bytes, name: str) -> np.ndarray:
    """Bytes of a 128x128 8-bit RGB image -> (128, 128, 3) uint8, with PIL (any format)."""
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


def _decode_chunk(raws: list[bytes], names: list[str]) -> list[np.ndarray | UndecodableImage]:
    """JPEGs of the expected shape through libjpeg-turbo in one call; anything else (another
    format, a grayscale or CMYK JPEG, a damaged file) through PIL, whose errors are the rules."""
    jpegs = [i for i, raw in enumerate(raws) if raw[:3] == b"\xff\xd8\xff"]
    fast: dict[int, np.ndarray] = {}
    if jpegs:
        try:
            decoded = decode_jpeg([torch.frombuffer(bytearray(raws[i]), dtype=torch.uint8) for i in jpegs],
                                  mode=ImageReadMode.UNCHANGED)
            fast = {i: d.permute(1, 2, 0).numpy() for i, d in zip(jpegs, decoded)
                    if d.shape == (3, IMAGE_SIZE, IMAGE_SIZE)}
        except RuntimeError:  # one damaged JPEG fails the batch: PIL sorts them out one by one
            pass
    results = []
    for i, (raw, name) in enumerate(zip(raws, names)):
        if i in fast:
            results.append(fast[i])
            continue
        try:
            results.append(decode_image(raw, name))
        except UndecodableImage as e:
            results.append(e)
    return results


def decode_images(raws: list[bytes], names: list[str], threads: int | None = None) -> list:
    """Decode many images on `threads` threads (default: one per core): (128, 128, 3) uint8 arrays,
    or UndecodableImage."""
    if threads is None:
        threads = os.cpu_count() or 1
    chunks = [(raws[i::threads], names[i::threads]) for i in range(threads) if raws[i::threads]]
    with ThreadPoolExecutor(threads) as pool:  # libjpeg-turbo releases the GIL
        decoded = list(pool.map(lambda c: _decode_chunk(*c), chunks))
    results = [None] * len(raws)
    for i, chunk in enumerate(decoded):
        results[i::threads] = chunk
    return results


def check_images_exist(storage: Storage, present: dict[str, str], sets: list[pd.DataFrame]) -> None:
    """Every listed image is among the objects `present` (the listing), before any download."""
    for df in sets:
        missing = df[~df["image"].isin(present)]
        if len(missing):
            row = missing.iloc[0]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise RatioCnnError(
                f"{MANIFEST} line {row['line']} lists {row['image']}, but {storage.describe(row['image'])} "
                f"does not exist{more}: upload the images or fix the manifest"
            )


IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE * 3  # one decoded image: 49,152 bytes
DECODE_CHUNK = 512  # images decoded before they are copied into the set: 25 MB in flight


def check_memory(images: int, device: torch.device) -> None:
    """Stop with a clear line when the decoded images cannot fit, instead of being killed halfway."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:  # not Linux: nothing to check against
            return
        free = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemAvailable"))) * 1024
    need = images * IMAGE_BYTES
    if need > 0.8 * free:  # the model, its optimizer state and the batches need the rest
        raise RatioCnnError(f"{images} decoded images need {need / 1e9:.1f} GB, but only {free / 1e9:.1f} GB are free "
                            f"on {device.type}: lower --train-malignant or the val/test sizes, or use a larger machine")


@dataclass
class LoadedImages:
    images: torch.Tensor  # (N, 3, 128, 128) uint8 with channels-last strides, one row per decodable image
    names: list[str]  # of each row
    skipped: list[str]  # asked for but undecodable
    downloaded: int  # objects fetched from storage (0 on a warm re-run)
    decoded: int  # images decoded (0 on a warm re-run)

    def rows(self, names) -> torch.Tensor:
        """Row numbers of these names in `images` (names that were skipped are left out)."""
        position = {n: i for i, n in enumerate(self.names)}
        return torch.tensor([position[n] for n in names if n in position], dtype=torch.int64)


def load_images(
    storage: Storage,
    manifest: pd.DataFrame,
    names: list[str],
    versions: dict[str, str],
    cache: Path | None,
    manifest_digest: str,
    workers: int,
    deadline: float,
    max_skipped: float,
) -> LoadedImages:
    """Every image a job needs, decoded; only what the cache lacks is fetched and decoded.

    `versions` (key -> ETag, or size and mtime) say whether a cached copy is still current.
    """
    row_of = {name: i for i, name in enumerate(manifest["image"])}
    objects, decoded_cache = _object_cache(cache, storage), None
    if objects:
        try:
            decoded_cache = DecodedImages(cache, storage.uri, manifest_digest, len(manifest))
        except OSError as e:
            log.warning("not caching decoded images in %s: %s", cache, e)
    # One array for the result, filled in place: the decoded images are held once.
    pixels = np.empty((len(names), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    with decoded_cache.locked() if decoded_cache else contextlib.nullcontext():
        status = decoded_cache.known([row_of[n] for n in names], [versions[n] for n in names]) if decoded_cache else {}
        todo = [i for i, n in enumerate(names) if row_of[n] not in status]
        raw = {}
        for i in todo:
            if objects and (data := objects.get(names[i], versions[names[i]])) is not None:
                raw[names[i]] = data
        fetch = [names[i] for i in todo if names[i] not in raw]
        if fetch:
            log.info("fetching %d of %d images from %s", len(fetch), len(names), storage.uri)
            raw |= storage.get_many(fetch, workers=workers, deadline=deadline)
            if objects:
                for n in fetch:
                    objects.put(n, versions[n], raw[n])
        # A chunk at a time into `pixels`: the decoders' own arrays are freed and their memory
        # reused at once, instead of a second decoded set the allocator would keep.
        for start in range(0, len(todo), DECODE_CHUNK):
            chunk = todo[start : start + DECODE_CHUNK]
            for i, result in zip(chunk, decode_images([raw.pop(names[i]) for i in chunk],
                                                      [storage.describe(names[i]) for i in chunk])):
                if isinstance(result, UndecodableImage):
                    status[row_of[names[i]]] = f"undecodable: {result}"
                else:
                    pixels[i], status[row_of[names[i]]] = result, OK
        if decoded_cache and todo:
            try:
                decoded_cache.store([row_of[names[i]] for i in todo], [versions[names[i]] for i in todo],
                                    [status[row_of[names[i]]] for i in todo], pixels, at=todo)
            except OSError as e:
                log.warning("could not cache decoded images in %s: %s", cache, e)
        fresh = set(todo)
        cached = [i for i, n in enumerate(names) if status[row_of[n]] == OK and i not in fresh]
        if cached:
            decoded_cache.read([row_of[names[i]] for i in cached], into=pixels, at=cached)
    skipped = [n for n in names if status[row_of[n]] != OK]
    for n in skipped:
        log.warning("skipping undecodable image %s", status[row_of[n]].removeprefix("undecodable: "))
    if len(skipped) > max_skipped * len(names):
        raise RatioCnnError(
            f"{len(skipped)} of {len(names)} images could not be decoded (first: {storage.describe(skipped[0])}), "
            f"more than the {max_skipped:.1%} --max-skipped allows: replace or remove them from the manifest"
        )
    keep = [i for i, n in enumerate(names) if status[row_of[n]] == OK]
    if len(keep) < len(names):
        pixels = pixels[keep]
    # (N, 128, 128, 3) viewed as (N, 3, 128, 128): channels-last strides, no copy.
    return LoadedImages(torch.from_numpy(pixels).permute(0, 3, 1, 2), [names[i] for i in keep], skipped,
                        downloaded=len(fetch), decoded=len(todo))
