"""Decode once: downloaded objects and decoded images, kept on this machine.

Under the cache folder (`--cache`, default $RATIO_CNN_CACHE or ~/.cache/ratio-cnn):
- `objects/<source>/<sha256>`: the raw bytes of each object, named by its key and version
  (the S3 ETag, or size and mtime of a local file), so a changed object is fetched again
  and an unchanged one never is, whatever manifest lists it;
- `decoded/<source>-<manifest digest>/images.u8`: every image of one manifest decoded to
  (128, 128, 3) uint8, memory-mapped (a sparse file: rows never decoded take no disk), with
  `rows.json` recording the version each row was decoded from and whether it decoded.

Jobs on one machine (threads of the in-process study, or containers sharing the folder)
fill a decoded set one at a time under a file lock (fcntl: POSIX only, as storage.py); the
second finds it filled. Nothing here knows about training; deleting the folder only costs a
re-download.
"""
import fcntl
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ratio_cnn.host import write_atomically
from ratio_cnn.model import IMAGE_SIZE

ROW_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
OK = "ok"


def _hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class ObjectCache:
    """Raw objects of one storage root, by key and version."""

    def __init__(self, root: Path, source_uri: str) -> None:
        self.folder = root / "objects" / _hash(source_uri)[:24]
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str, version: str) -> Path:
        return self.folder / _hash(key, version)

    def get(self, key: str, version: str) -> bytes | None:
        try:
            return self._path(key, version).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, version: str, data: bytes) -> None:
        try:
            write_atomically(self._path(key, version), data)
        except OSError:  # a full or read-only cache costs speed, never the job
            pass


class DecodedImages:
    """The decoded images of one manifest, one row per manifest line, memory-mapped."""

    def __init__(self, root: Path, source_uri: str, manifest_digest: str, rows: int) -> None:
        self.folder = root / "decoded" / _hash(source_uri, manifest_digest)[:24]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows = rows
        self.images_path, self.index_path = self.folder / "images.u8", self.folder / "rows.json"

    @contextmanager
    def locked(self):
        """Held while a job checks, fills and reads its rows: one filler at a time per machine."""
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _index(self) -> dict:
        try:
            index = json.loads(self.index_path.read_text())
            if len(index["versions"]) == self.rows and self.images_path.stat().st_size == self.rows * np.prod(ROW_SHAPE):
                return index
        except (OSError, ValueError, KeyError, TypeError):
            pass
        with open(self.images_path, "wb") as f:  # a new (or damaged) set: start empty, sparse
            f.truncate(self.rows * int(np.prod(ROW_SHAPE)))
        return {"versions": [None] * self.rows, "status": [None] * self.rows}

    def known(self, rows: list[int], versions: list[str]) -> dict[int, str]:
        """Rows already decoded from these versions: row -> 'ok' or why it did not decode."""
        index = self._index()
        return {r: index["status"][r] for r, v in zip(rows, versions) if index["versions"][r] == v}

    def store(self, rows: list[int], versions: list[str], statuses: list[str], pixels: np.ndarray,
              at: list[int]) -> None:
        """Record decoded rows: row rows[i] is pixels[at[i]] ((128, 128, 3) uint8) when statuses[i] is 'ok'."""
        index = self._index()
        images = np.memmap(self.images_path, dtype=np.uint8, mode="r+", shape=(self.rows, *ROW_SHAPE))
        for row, status, i in zip(rows, statuses, at):
            if status == OK:
                images[row] = pixels[i]
        images.flush()  # pixels on disk before rows.json says they are there
        del images
        for row, version, status in zip(rows, versions, statuses):
            index["versions"][row], index["status"][row] = version, status
        write_atomically(self.index_path, json.dumps(index).encode())

    def read(self, rows: list[int], into: np.ndarray, at: list[int], chunk: int = 1024) -> None:
        """Copy rows into `into[at]`, a chunk at a time so no second full copy is ever held."""
        images = np.memmap(self.images_path, dtype=np.uint8, mode="r", shape=(self.rows, *ROW_SHAPE))
        for start in range(0, len(rows), chunk):
            into[at[start : start + chunk]] = images[rows[start : start + chunk]]
        del images
