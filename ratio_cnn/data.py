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

from ratio_cnn.cache import DecodedImages, ObjectCache, cache_limit, content_hash, enforce_limit
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


def identity_order(keys, *salt) -> np.ndarray:
    """(n,) uint64 keys to sort by: a hash of each identity and the salt, never its row in the manifest.

    Adding an image to a dataset inserts it somewhere in this order and moves nothing else, so a
    nightly dataset that grows keeps its val and test images (issue 14: splits by identity).
    """
    tail = "\0".join(map(str, salt))
    return np.array([int.from_bytes(hashlib.blake2b(f"{key}\0{tail}".encode(), digest_size=8).digest(), "big")
                     for key in keys], dtype=np.uint64)


def _identity_positions(df: pd.DataFrame, keys: pd.Series, *salt) -> np.ndarray:
    """Row positions ordered by the hash of their identity (`keys`), then by image name."""
    return np.lexsort((df["image"].to_numpy(), identity_order(keys, *salt)))


def metadata_columns(manifest: pd.DataFrame) -> list[str]:
    """The manifest's columns beyond image, label and split: what it says about each image."""
    return [c for c in manifest.columns if c not in ("image", "label", "split", "line")]


def check_columns(manifest: pd.DataFrame, cfg: TrainConfig, where: str) -> None:
    """--subgroups, --group-by and --holdout name columns (and a value) that the manifest has."""
    named = [(f"--subgroups {c}", c) for c in cfg.subgroups] + [(f"--group-by {cfg.group_by}", cfg.group_by)] * bool(
        cfg.group_by) + [(f"--holdout {cfg.holdout}", cfg.holdout.split("=", 1)[0])] * bool(cfg.holdout)
    for option, column in named:
        if column not in metadata_columns(manifest):
            raise RatioCnnError(f"{option}: {where} has no column {column!r}; its columns are "
                                f"{', '.join(metadata_columns(manifest)) or '(none beyond image,label)'}")
    if cfg.holdout:
        column, value = cfg.holdout.split("=", 1)
        if not (manifest[column] == value).any():
            shown = ", ".join(sorted(manifest[column].unique())[:20])
            raise RatioCnnError(f"--holdout {cfg.holdout}: no image of {where} has {column} {value!r}; "
                                f"its values are {shown}")


def hold_out(manifest: pd.DataFrame, holdout: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the rest, the held-out images) for --holdout COL=VALUE: the held-out ones never train or validate."""
    column, value = holdout.split("=", 1)
    held = manifest[column] == value
    return manifest[~held], manifest[held]


def group_keys(df: pd.DataFrame, group_by: str) -> pd.Series:
    """The identity a split keeps together: the --group-by value, or the image itself (none given, or empty)."""
    if not group_by:
        return df["image"]
    return df[group_by].where(df[group_by] != "", "image:" + df["image"])


def _assign(df: pd.DataFrame, keys: pd.Series, sizes: dict[str, dict[str, int]], salt: int) -> pd.Series:
    """Each row's split: groups in identity order go whole to val, else test, while they fit what is
    left of its sizes (per label), the rest to the training pool. `sizes` keeps what was left unmet."""
    counts = pd.crosstab(keys, df["label"]).reindex(columns=list(LABELS), fill_value=0)
    order = np.argsort(identity_order(counts.index, salt), kind="stable")
    left = {s: np.array([sizes[s][n] for n in LABELS]) for s in ("val", "test")}
    split_of = {}
    for key, need in zip(counts.index[order], counts.to_numpy()[order]):
        split_of[key] = next((s for s in ("val", "test") if (need <= left[s]).all()), "train")
        if split_of[key] != "train":
            left[split_of[key]] -= need
    for s in ("val", "test"):
        sizes[s] = dict(zip(LABELS, left[s].tolist()))
    return keys.map(split_of).to_numpy()


def split_by_sizes(manifest: pd.DataFrame, keys: pd.Series, cfg: TrainConfig, where: str) -> np.ndarray:
    """Each row's split (val, test or train) with val and test of the configured sizes; one line when
    the images, or the groups, cannot fill them."""
    asked = {"val": {"malignant": cfg.val_malignant, "benign": cfg.val_benign},
             "test": {"malignant": cfg.test_malignant, "benign": cfg.test_benign}}
    left = {s: dict(n) for s, n in asked.items()}
    split = _assign(manifest, keys, left, cfg.split_seed)
    short = [(s, n) for s in ("val", "test") for n in LABELS if left[s][n] > 0]
    if short and not cfg.group_by:
        n = short[0][1]
        raise RatioCnnError(f"{where} has {int((manifest['label'] == n).sum())} {n} images, fewer than val "
                            f"({asked['val'][n]}) + test ({asked['test'][n]}) need: lower --val-{n} / --test-{n}")
    if short:
        sizes = keys.value_counts()
        raise RatioCnnError(
            f"a split of {where} grouped by {cfg.group_by} cannot fill " + ", ".join(
                f"{s} ({left[s][n]} of {asked[s][n]} {n} missing)" for s, n in short)
            + f": its largest group holds {sizes.max()} images and {len(sizes)} groups hold "
            f"{len(manifest)}; lower the --val-*/--test-* sizes, or split without --group-by")
    return split


def split_and_sample(manifest: pd.DataFrame, cfg: TrainConfig, where: str,
                     sample_seed: int | None = None) -> dict[str, pd.DataFrame]:
    """Val and test (fixed for all ratios and seeds), and the training sample for cfg.ratio.

    Which image goes where depends on its identity (its name, or its --group-by value) and
    split_seed only: never on the manifest's row order, never on the ratio. So the benign
    training images are nested across ratios (1:1's are the first ones of 1:2's), a dataset
    that gains K images moves at most about 2K of the others between splits (one across each
    boundary per new image), and with --group-by no group straddles train, val and test. With
    a `sample_seed` (`--sample per-seed`) the training pool is re-ordered by that seed: another
    sample per seed, still nested across ratios, same val and test.
    """
    keys = group_keys(manifest, cfg.group_by)
    if "split" in manifest.columns:
        straddling = manifest["split"].groupby(keys.to_numpy()).nunique()
        if cfg.group_by and (straddling > 1).any():
            group = straddling.index[straddling > 1][0]
            raise RatioCnnError(f"{where}: the split column puts images of {cfg.group_by} {group!r} in more than "
                                "one split: fix the split column, or drop --group-by")
        split, source = manifest["split"].to_numpy(), "its train split"
    else:
        split, source = split_by_sizes(manifest, keys, cfg, where), "what val and test leave"
    order = _identity_positions(manifest, keys, cfg.split_seed)
    ordered, split = manifest.iloc[order], split[order]
    label = ordered["label"].to_numpy()
    sets = {s: pd.concat([ordered[(split == s) & (label == n)] for n in LABELS]) for s in ("val", "test")}
    pool = ordered[split == "train"]
    if sample_seed is not None:
        pool = pool.iloc[_identity_positions(pool, group_keys(pool, cfg.group_by), cfg.split_seed, sample_seed)]
    pool = {n: pool[pool["label"] == n] for n in LABELS}
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


def twins_in_training(sets: dict[str, pd.DataFrame], column: str) -> dict[str, int]:
    """How many val and test images share a (non-empty) `column` value, e.g. a near-duplicate group,
    with an image of the training sample."""
    trained = set(sets["train"][column]) - {""}
    return {s: int(sets[s][column].isin(trained).sum()) for s in ("val", "test")}


MAX_GROUP_VALUES = 20  # a column with more distinct values is an identifier, not a subgroup


def train_values(train: pd.DataFrame, manifest: pd.DataFrame) -> dict[str, dict[str, dict[str, int]]]:
    """{column: {value: {malignant, benign}}} of the training sample, for every metadata column with
    2-20 values in the manifest: what the column alone could learn (the report's shortcut check)."""
    values = {}
    for column in metadata_columns(manifest):
        if 2 <= manifest[column].nunique() <= MAX_GROUP_VALUES:
            counts = pd.crosstab(train[column], train["label"]).reindex(columns=list(LABELS), fill_value=0)
            values[column] = {str(v): {n: int(counts.at[v, n]) for n in LABELS} for v in counts.index}
    return values


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
    content: dict[str, str]  # every name asked for, skipped ones too -> the SHA-256 of its object's bytes

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
    cache_max_gb: float = 0.0,
) -> LoadedImages:
    """Every image a job needs, decoded, with the content hash of each; only what the cache lacks
    (or holds damaged: cache.py checks every read) is fetched and decoded.

    `versions` (key -> ETag, or a local file's inode, size, mtime and ctime) say whether a cached
    copy is still current. Then the cache is brought under `cache_max_gb` (0: a quarter of its disk),
    least recently used first, keeping what this job used.
    """
    row_of = {name: i for i, name in enumerate(manifest["image"])}
    objects, decoded_cache = _object_cache(cache, storage), None
    limit = cache_limit(cache, cache_max_gb, len(names)) if objects else 0  # too small: stop before any fetch
    if objects:
        try:
            decoded_cache = DecodedImages(cache, storage.uri, manifest_digest, len(manifest))
        except OSError as e:
            log.warning("not caching decoded images in %s: %s", cache, e)
    # One array for the result, filled in place: the decoded images are held once.
    pixels = np.empty((len(names), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    content, ready = {}, set()  # name -> hash; positions in `names` filled
    with contextlib.ExitStack() as held:
        if objects:
            held.enter_context(objects.in_use())
        if decoded_cache:
            held.enter_context(decoded_cache.locked())
            ready, content = read_decoded(decoded_cache, [row_of[n] for n in names], names, versions, pixels)
        todo = [i for i in range(len(names)) if i not in ready]
        fetched, undecodable = fetch_and_decode(storage, objects, names, todo, versions, pixels, content, ready,
                                                workers, deadline)
        if decoded_cache and todo:
            try:
                decoded_cache.store([row_of[names[i]] for i in todo], [versions[names[i]] for i in todo],
                                    [content[names[i]] for i in todo], pixels,
                                    at=[i if i in ready else None for i in todo])
            except OSError as e:
                log.warning("could not cache decoded images in %s: %s", cache, e)
    if objects:  # the pixels are in memory now: nothing above reads the cache again
        used = [n for n in (*names, MANIFEST) if n in versions]  # and the manifest it was read from
        enforce_limit(cache, limit, {objects.path(n, versions[n]) for n in used}
                      | ({decoded_cache.folder} if decoded_cache else set()))
    skipped = check_skipped(storage, names, undecodable, max_skipped)
    keep = sorted(ready)
    if len(keep) < len(names):
        pixels = pixels[keep]
    # (N, 128, 128, 3) viewed as (N, 3, 128, 128): channels-last strides, no copy.
    return LoadedImages(torch.from_numpy(pixels).permute(0, 3, 1, 2), [names[i] for i in keep], skipped,
                        downloaded=fetched, decoded=len(todo), content=content)


def check_skipped(storage: Storage, names: list[str], undecodable: dict[str, str], max_skipped: float) -> list[str]:
    """The names that did not decode, each logged; more than --max-skipped allows stops the job."""
    skipped = [n for n in names if n in undecodable]
    for n in skipped:
        log.warning("skipping undecodable image %s", undecodable[n])
    if len(skipped) > max_skipped * len(names):
        raise RatioCnnError(
            f"{len(skipped)} of {len(names)} images could not be decoded (first: {storage.describe(skipped[0])}), "
            f"more than the {max_skipped:.1%} --max-skipped allows: replace or remove them from the manifest"
        )
    return skipped


def read_decoded(decoded_cache: DecodedImages, rows: list[int], names: list[str], versions: dict[str, str],
                 pixels: np.ndarray) -> tuple[set[int], dict[str, str]]:
    """The images the decoded cache holds from these versions, checked, into `pixels`: the positions in
    `names` filled, and the content hash of each one's object. Damaged rows are left to decode again."""
    known = decoded_cache.known(rows, [versions[n] for n in names])
    cached = [i for i, row in enumerate(rows) if row in known]
    damaged = {cached[j] for j in decoded_cache.read([rows[i] for i in cached], into=pixels, at=cached)}
    if damaged:
        shown = sorted(names[i] for i in damaged)
        log.warning("the decoded cache %s holds %d damaged row(s) (%s%s): decoding them again",
                    decoded_cache.folder, len(damaged), ", ".join(shown[:5]), ", …" if len(shown) > 5 else "")
    ready = set(cached) - damaged
    return ready, {names[i]: known[rows[i]] for i in ready}


def fetch_and_decode(storage: Storage, objects: ObjectCache | None, names: list[str], todo: list[int],
                     versions: dict[str, str], pixels: np.ndarray, content: dict[str, str], ready: set[int],
                     workers: int, deadline: float) -> tuple[int, dict[str, str]]:
    """The images at positions `todo`: from the object cache or storage, hashed and decoded into `pixels`
    (their positions added to `ready`, their hashes to `content`); (objects fetched, name -> why undecodable)."""
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
    undecodable = {}
    # A chunk at a time into `pixels`: the decoders' own arrays are freed and their memory
    # reused at once, instead of a second decoded set the allocator would keep.
    for start in range(0, len(todo), DECODE_CHUNK):
        chunk = todo[start : start + DECODE_CHUNK]
        batch = [raw.pop(names[i]) for i in chunk]
        content |= {names[i]: content_hash(data) for i, data in zip(chunk, batch)}
        for i, result in zip(chunk, decode_images(batch, [storage.describe(names[i]) for i in chunk])):
            if isinstance(result, UndecodableImage):
                undecodable[names[i]] = str(result)
            else:
                pixels[i] = result
                ready.add(i)
    return len(fetch), undecodable
