"""Decode once: downloaded objects and decoded images, kept on this machine, checked on every read.

Under the cache folder (`--cache`, default $RATIO_CNN_CACHE or ~/.cache/ratio-cnn):
- `objects/<source>/<sha256>`: the raw bytes of each object, named by its key and version
  (the S3 ETag; a local file's inode, size, mtime and ctime), so a changed object is fetched
  again and an unchanged one never is, whatever manifest lists it. Each file starts with the
  SHA-256 of the bytes it holds, recorded when it was stored;
- `decoded/<source>-<manifest digest>/images.u8`: every image of one manifest decoded to
  (128, 128, 3) uint8, memory-mapped (a sparse file: rows never decoded take no disk), with
  `rows.json` recording, for each decoded row, the version and the content hash (SHA-256) of
  the object it was decoded from and a 64-bit check over those two and the row's pixels
  (`row_checks`).

Every read is checked against what was recorded: an entry that fails (lost pages after a crash,
a bad disk, a stray write) is logged, dropped and made again from the source, and the job goes
on; only a failure of the source itself is blamed on the dataset. An image that does not decode
is not remembered as such: its checked bytes are decoded again by every job, so fixing the image
(a new version) or deleting its cached copy is always seen. docs/benchmarks.md measures what the
checks cost; docs/reliability.md says what they cannot see.

Jobs on one machine (threads of the in-process study, or containers sharing the folder)
fill a decoded set one at a time under a file lock (fcntl: POSIX only, as storage.py); the
second finds it filled. Nothing here knows about training; deleting the folder only costs a
re-download.
"""
import fcntl
import hashlib
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ratio_cnn.host import write_atomically
from ratio_cnn.model import IMAGE_SIZE

log = logging.getLogger(__name__)

ROW_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
ROW_BYTES = IMAGE_SIZE * IMAGE_SIZE * 3
LAYOUT = "2"  # part of every folder name: a cache of another layout is never read (delete it to free the disk)
HASH_BYTES = 32  # the SHA-256 at the head of a cached object
LEFTOVER_SECONDS = 3600  # a temp file this old in objects/ belongs to a write that was killed


def content_hash(raw: bytes) -> str:
    """What an object holds, whatever its name or version: SHA-256 (hardware-accelerated on most CPUs)."""
    return hashlib.sha256(raw).hexdigest()


def _hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


# A row's check is the sum of its 8-byte words times distinct odd weights, modulo 2^64: any change
# within one word shows (an odd weight is invertible modulo 2^64), so does any two-bit change but
# a pair at the same high bit position of two words (about 1 in 2,000 double flips), and a zeroed or
# random row (but for 1 in 2^64). It runs at memory speed: 2-3 times cheaper than a CRC-32 (docs/benchmarks.md).
WEIGHTS = np.arange(1, ROW_BYTES // 4, 2, dtype=np.uint64)


def row_checks(rows: np.ndarray, versions: list[str], contents: list[str]) -> np.ndarray:
    """(n, 128, 128, 3) uint8 rows, each decoded from an object of versions[i] with contents[i] -> (n,)
    uint64 checks: the weighted sum of the row's words plus a hash of what it was decoded from."""
    words = np.ascontiguousarray(rows).reshape(len(rows), -1).view(np.uint64)
    origins = np.array([int.from_bytes(hashlib.blake2b(f"{v}\0{c}".encode(), digest_size=8).digest(), "big")
                        for v, c in zip(versions, contents)], dtype=np.uint64)
    return (words * WEIGHTS).sum(axis=1) + origins


def remove_leftovers(folder: Path, older_than: float = 0) -> None:
    """Temp files of atomic writes that were killed before their rename (write_atomically's `.tmp-*`)."""
    now = time.time()
    for path in folder.glob(".tmp-*"):
        try:
            if now - path.stat().st_mtime >= older_than:
                path.unlink()
        except OSError:  # gone already, or not ours to remove: it costs disk, never the job
            pass


class ObjectCache:
    """Raw objects of one storage root, by key and version, each with the hash of its bytes."""

    def __init__(self, root: Path, source_uri: str) -> None:
        self.folder = root / "objects" / _hash(LAYOUT, source_uri)[:24]
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.folder, older_than=LEFTOVER_SECONDS)  # others may be writing here right now

    def _path(self, key: str, version: str) -> Path:
        return self.folder / _hash(key, version)

    def get(self, key: str, version: str) -> bytes | None:
        """The cached bytes if they are still those that were stored; a damaged copy is dropped."""
        path = self._path(key, version)
        try:
            stored = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("cannot read the cached copy of %s (%s: %s): fetching it again", key, path, e.strerror or e)
            return None
        raw = stored[HASH_BYTES:]
        if hashlib.sha256(raw).digest() != stored[:HASH_BYTES]:
            log.warning("the cached copy of %s (%s) no longer matches the hash recorded when it was stored: "
                        "dropped, fetching it again", key, path)
            path.unlink(missing_ok=True)
            return None
        return raw

    def put(self, key: str, version: str, data: bytes) -> None:
        try:
            write_atomically(self._path(key, version), hashlib.sha256(data).digest() + data)
        except OSError:  # a full or read-only cache costs speed, never the job
            pass


class DecodedImages:
    """The decoded images of one manifest, one row per manifest line, memory-mapped."""

    def __init__(self, root: Path, source_uri: str, manifest_digest: str, rows: int) -> None:
        self.folder = root / "decoded" / _hash(LAYOUT, source_uri, manifest_digest)[:24]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows = rows
        self.images_path, self.index_path = self.folder / "images.u8", self.folder / "rows.json"
        self.index: dict = {}  # rows.json while the lock is held

    @contextmanager
    def locked(self):
        """Held while a job checks, fills and reads its rows: one filler at a time per machine."""
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                remove_leftovers(self.folder)  # only a filler holding the lock writes here: these were killed
                self.index = self._read_index()
                yield self
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_index(self) -> dict:
        """rows.json, checked against the set's shape; a new, empty set when it is missing or damaged."""
        problem = None
        try:
            index = json.loads(self.index_path.read_bytes())
            if not (isinstance(index, dict) and all(isinstance(index.get(k), list) and len(index[k]) == self.rows
                                                    for k in ("versions", "content", "check"))):
                problem = "its rows.json does not describe this set"
            elif (size := self.images_path.stat().st_size) != self.rows * ROW_BYTES:
                problem = f"its images.u8 holds {size:,} bytes, not {self.rows * ROW_BYTES:,}"
            else:
                return index
        except FileNotFoundError:  # a new set (or a filler killed before its first rows.json)
            pass
        except (OSError, ValueError, RecursionError) as e:
            problem = f"its rows.json cannot be read ({type(e).__name__}: {str(e)[:100]})"
        if problem:
            log.warning("the decoded cache %s is damaged (%s): decoding its images again", self.folder, problem)
        with open(self.images_path, "wb") as f:  # start empty, sparse
            f.truncate(self.rows * ROW_BYTES)
        return {"versions": [None] * self.rows, "content": [None] * self.rows, "check": [None] * self.rows}

    def known(self, rows: list[int], versions: list[str]) -> dict[int, str]:
        """Rows decoded from these versions: row -> the content hash of the object it was decoded from."""
        index = self.index
        return {r: index["content"][r] for r, v in zip(rows, versions)
                if index["versions"][r] == v and isinstance(index["content"][r], str)}

    def read(self, rows: list[int], into: np.ndarray, at: list[int], chunk: int = 64) -> list[int]:
        """Copy rows into `into[at]`, each checked (`row_checks`); the positions in `rows` of those that
        failed (their `into` rows hold what was read, to be overwritten). A chunk at a time, so no
        second full copy is ever held and each row is checked while it is in the CPU's cache."""
        images = np.memmap(self.images_path, dtype=np.uint8, mode="r", shape=(self.rows, *ROW_SHAPE))
        index, damaged = self.index, []
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            block = images[part]  # a copy in memory
            into[at[start : start + chunk]] = block
            recorded = [index["check"][row] for row in part]
            valid = np.array([isinstance(c, int) and 0 <= c < 2**64 for c in recorded])  # else rows.json was altered
            expected = np.array([c if ok else 0 for c, ok in zip(recorded, valid)], dtype=np.uint64)
            checks = row_checks(block, [index["versions"][row] for row in part], [index["content"][row] for row in part])
            damaged += (start + np.flatnonzero((checks != expected) | ~valid)).tolist()
        del images
        return damaged

    def store(self, rows: list[int], versions: list[str], contents: list[str], pixels: np.ndarray,
              at: list[int | None]) -> None:
        """Record rows: row rows[i] is pixels[at[i]] ((128, 128, 3) uint8), decoded from an object of
        version versions[i] whose bytes hash to contents[i]; at[i] None: it did not decode (forgotten)."""
        index = self.index
        images = np.memmap(self.images_path, dtype=np.uint8, mode="r+", shape=(self.rows, *ROW_SHAPE))
        for row, i in zip(rows, at):
            if i is not None:
                images[row] = pixels[i]
        images.flush()  # pixels on disk before rows.json says they are there
        del images
        for row, version, content, i in zip(rows, versions, contents, at):
            decoded = i is not None
            index["versions"][row] = version if decoded else None
            index["content"][row] = content if decoded else None
            index["check"][row] = int(row_checks(pixels[i : i + 1], [version], [content])[0]) if decoded else None
        write_atomically(self.index_path, json.dumps(index).encode())
