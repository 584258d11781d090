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

The cache is kept under a limit (`--cache-max-gb`; 0, the default: a quarter of the disk that
holds it), counting the decoded sets and objects as the disk does (a sparse images.u8 only by its
decoded rows). After loading, a job removes the least recently used sets and objects until the
cache is back under it: a set is used when a job locks it (the lock's mtime), an object when it is
read or stored (its mtime). Never removed: what this job just used, a set another job holds locked,
the objects of a source another job is loading from (it holds `objects/<source>/.in-use`, shared),
and `staging/` (outputs waiting for upload). A set is removed by renaming it away under its lock, so
a job that was waiting for that lock sees it gone and starts a new one. One pass at a time per cache
(`.evict.lock`). An explicit limit smaller than one job's decoded images is a user error, raised
before anything is fetched or removed. `ratio-cnn cache info|clear` shows and empties it.
"""
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ratio_cnn.errors import RatioCnnError
from ratio_cnn.host import human_bytes, write_atomically
from ratio_cnn.model import IMAGE_SIZE

log = logging.getLogger(__name__)

ROW_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
ROW_BYTES = IMAGE_SIZE * IMAGE_SIZE * 3
LAYOUT = "2"  # part of every folder name: a cache of another layout is never read (delete it to free the disk)
HASH_BYTES = 32  # the SHA-256 at the head of a cached object
LEFTOVER_SECONDS = 3600  # a temp file this old in objects/ belongs to a write that was killed
IN_USE = ".in-use"  # in objects/<source>/: held shared by every job loading from that source
EVICT_LOCK = ".evict.lock"  # at the cache's root: one eviction pass at a time
EVICTING = ".evicting-"  # a decoded set renamed away by an eviction pass, deleted next
GB = 1e9


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

    def path(self, key: str, version: str) -> Path:
        return self.folder / _hash(key, version)

    @contextmanager
    def in_use(self):
        """Held (shared) while a job loads from this source: eviction passes leave its objects alone."""
        with open(self.folder / IN_USE, "a") as marker:
            fcntl.flock(marker, fcntl.LOCK_SH)
            yield

    def get(self, key: str, version: str) -> bytes | None:
        """The cached bytes if they are still those that were stored; a damaged copy is dropped."""
        path = self.path(key, version)
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
        try:
            os.utime(path)  # used: the last to go when the cache is over its limit
        except OSError:  # removed meanwhile, or a read-only cache: what we read was checked
            pass
        return raw

    def put(self, key: str, version: str, data: bytes) -> None:
        try:
            write_atomically(self.path(key, version), hashlib.sha256(data).digest() + data)
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
        """Held while a job checks, fills and reads its rows: one filler at a time per machine. The
        lock's mtime says when a job last used the set (eviction goes by it)."""
        with self._lock() as lock:
            os.utime(lock.fileno())
            remove_leftovers(self.folder)  # only a filler holding the lock writes here: these were killed
            self.index = self._read_index()
            yield self

    def _lock(self):
        """The set's lock file, locked. An eviction pass may rename the set away while we wait for it:
        the lock is ours only once the file we hold is the one at the set's path, else we start anew."""
        path = self.folder / ".lock"
        while True:
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                lock = open(path, "a")
            except FileNotFoundError:  # renamed away between the two
                continue
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if os.path.samestat(os.fstat(lock.fileno()), os.stat(path)):
                    return lock
            except FileNotFoundError:
                pass
            lock.close()

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


# -----------------------------------------------------------------------------
# the limit: least recently used first, never what a running job uses


def default_limit(root: Path) -> int:
    """A quarter of the file system that holds (or will hold) the cache: room left for everything else."""
    existing = next(p for p in (root, *root.parents) if p.exists())
    return shutil.disk_usage(existing).total // 4


def cache_limit(root: Path, max_gb: float, images: int) -> int:
    """The bytes the cache is kept under for a job that needs `images` decoded images: max_gb, or 0 for
    `default_limit`. An explicit limit too small for those images alone stops the job here, before
    anything is fetched or removed; the automatic one only warns (the job's own set is then all it keeps)."""
    need = images * ROW_BYTES
    if max_gb > 0:
        limit = int(max_gb * GB)
        if need > limit:
            raise RatioCnnError(
                f"--cache-max-gb {max_gb:g} keeps the cache {root} under {limit:,} bytes, but the {images} decoded "
                f"images this job needs take {need:,} bytes: raise --cache-max-gb to at least "
                f"{math.ceil(need / 1e6) / 1e3:g}, or use --cache none")
        return limit
    limit = default_limit(root)
    if need > limit:
        log.warning("the %d decoded images of this job take %s, more than the cache's automatic limit of %s (a quarter "
                    "of its disk): it keeps only this job's set; set --cache-max-gb or --cache none", images,
                    human_bytes(need), human_bytes(limit))
    return limit


def disk_bytes(path: Path) -> int:
    """What the files under `path` take on disk (allocated blocks: a sparse images.u8 counts its decoded rows)."""
    total = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        total += disk_bytes(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
                except FileNotFoundError:  # removed by a job or a pass while we looked
                    pass
    except (FileNotFoundError, NotADirectoryError):
        pass
    return total


@dataclass
class Entry:
    """A decoded set (a folder) or a cached object (a file), as eviction weighs it."""
    path: Path
    size: int  # bytes on disk
    used: float  # last use, seconds since the epoch
    source: Path | None = None  # an object's folder, whose IN_USE marker running jobs hold


def _folders(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except FileNotFoundError:
        return []


def _decoded_sets(root: Path) -> list[Entry]:
    sets = []
    for folder in _folders(root / "decoded"):
        try:
            used = (folder / ".lock").stat().st_mtime
        except FileNotFoundError:  # made, not yet locked
            used = time.time()
        sets.append(Entry(folder, disk_bytes(folder), used))
    return sets


def _objects(source: Path) -> list[Entry]:
    """The objects of one source folder (not its marker, nor temp files of writes in progress)."""
    objects = []
    try:
        with os.scandir(source) as entries:
            for entry in entries:
                if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                    try:
                        stat = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    objects.append(Entry(Path(entry.path), stat.st_blocks * 512, stat.st_mtime, source))
    except FileNotFoundError:
        pass
    return objects


def _lock_if_free(marker: Path) -> int | None:
    """A descriptor of `marker` locked exclusively (close it to release), or None when a job holds it."""
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_CREAT, 0o666)
    except FileNotFoundError:  # its folder is gone
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _in_use(marker: Path) -> bool:
    fd = _lock_if_free(marker)
    if fd is not None:
        os.close(fd)
    return fd is None


def _remove_set(folder: Path) -> bool:
    """Rename a decoded set away under its lock, then delete it; False when a job holds it."""
    fd = _lock_if_free(folder / ".lock")
    if fd is None:
        return False
    try:
        folder.rename(folder.with_name(EVICTING + folder.name))
    finally:
        os.close(fd)  # a job waiting for this lock now finds another file at the set's path: it starts anew
    shutil.rmtree(folder.with_name(EVICTING + folder.name), ignore_errors=True)  # what is left goes next pass
    return True


@dataclass
class Eviction:
    total: int = 0  # bytes of decoded sets and objects, after the pass
    sets: int = 0  # removed
    objects: int = 0
    freed: int = 0
    sets_in_use: int = 0  # kept: a running job held them
    sources_in_use: int = 0
    in_use_bytes: int = 0


def _evict(root: Path, max_bytes: int, keep: set[Path]) -> Eviction:
    """Remove least recently used decoded sets and objects, but those in `keep` or in use, until the
    sets and objects take at most max_bytes. One pass at a time per cache; staging/ is never looked at."""
    done = Eviction()
    with open(root / EVICT_LOCK, "a") as evict_lock, ExitStack() as held:
        fcntl.flock(evict_lock, fcntl.LOCK_EX)  # a pass is short: a second one waits, then finds less to do
        for leftover in (root / "decoded").glob(EVICTING + "*"):  # of a pass killed before its delete
            shutil.rmtree(leftover, ignore_errors=True)
        done.total = disk_bytes(root / "decoded") + disk_bytes(root / "objects")
        if done.total <= max_bytes:
            return done
        entries = _decoded_sets(root) + [o for source in _folders(root / "objects") for o in _objects(source)]
        free: dict[Path, bool] = {}  # source folder -> its marker is held by this pass (no job loads from it)
        for entry in sorted(entries, key=lambda e: e.used):
            if done.total <= max_bytes:
                break
            if entry.path in keep:
                continue
            if entry.source is not None and entry.source not in free:
                fd = _lock_if_free(entry.source / IN_USE)
                if fd is not None:
                    held.callback(os.close, fd)
                free[entry.source] = fd is not None
                done.sources_in_use += fd is None
            try:
                if entry.source is None:
                    removed = _remove_set(entry.path)
                    done.sets_in_use += not removed
                elif removed := free[entry.source]:
                    entry.path.unlink(missing_ok=True)
            except OSError as e:  # a cache we cannot write to costs disk, never the job
                log.warning("cannot remove %s from the cache: %s", entry.path, e.strerror or e)
                continue
            if removed:
                done.sets += entry.source is None
                done.objects += entry.source is not None
                done.freed += entry.size
                done.total -= entry.size
            else:
                done.in_use_bytes += entry.size
    return done


def enforce_limit(root: Path, max_bytes: int, keep: set[Path]) -> None:
    """Bring the cache's decoded sets and objects under max_bytes, least recently used first; never
    `keep` (the set folder and object files the calling job just used) nor what a running job uses."""
    done = _evict(root, max_bytes, keep)
    if done.sets or done.objects:
        log.info("cache over its %s limit: removed %s and %s (%s), least recently used first", human_bytes(max_bytes),
                 _count(done.sets, "decoded set"), _count(done.objects, "object"), human_bytes(done.freed))
    if done.total > max_bytes:
        log.warning("the cache %s still holds %s, over its %s limit: the rest is this job's own images or in use "
                    "by running jobs", root, human_bytes(done.total), human_bytes(max_bytes))


def clear(root: Path) -> str:
    """Remove every decoded set and object that no running job uses (`ratio-cnn cache clear`); never staging/."""
    if not root.is_dir():
        return f"the cache {root} does not exist: nothing to clear"
    done = _evict(root, 0, set())
    kept = (f"kept {_count(done.sets_in_use, 'decoded set')} and the objects of "
            f"{_count(done.sources_in_use, 'source')} ({human_bytes(done.in_use_bytes)}) in use by running jobs"
            if done.sets_in_use or done.sources_in_use else "nothing was in use")
    return (f"cleared {root}: removed {_count(done.sets, 'decoded set')} and {_count(done.objects, 'object')} "
            f"({human_bytes(done.freed)}); {kept}; staging/ (outputs waiting for upload) untouched")


def describe(root: Path) -> str:
    """What the cache holds, least recently used (first to go) first, with sizes and use (`ratio-cnn cache info`)."""
    limit = (f"a job's limit by default: {human_bytes(default_limit(root))} (a quarter of the disk; --cache-max-gb "
             "sets another)")
    if not root.is_dir():
        return f"the cache {root} does not exist (empty); {limit}"
    sets = sorted(_decoded_sets(root), key=lambda e: e.used)
    sources = [(source, _objects(source)) for source in _folders(root / "objects")]
    sources.sort(key=lambda s: max((o.used for o in s[1]), default=0))
    total = disk_bytes(root / "decoded") + disk_bytes(root / "objects")
    lines = [f"cache {root}: {human_bytes(total)} in {_count(len(sets), 'decoded set')} and "
             f"{_count(sum(len(objects) for _, objects in sources), 'object')} of {_count(len(sources), 'source')}; "
             f"{limit}"]
    lines.append("decoded sets, least recently used first:" if sets else "no decoded sets")
    lines += [f"  decoded/{s.path.name}  {human_bytes(s.size)}  last used {_when(s.used)}"
              f"{'  in use' if _in_use(s.path / '.lock') else ''}" for s in sets]
    lines.append("objects by source, least recently used first:" if sources else "no objects")
    for source, objects in sources:
        used = _when(max(o.used for o in objects)) if objects else "never"
        lines.append(f"  objects/{source.name}  {_count(len(objects), 'object')}  "
                     f"{human_bytes(sum(o.size for o in objects))}  last used {used}"
                     f"{'  in use' if _in_use(source / IN_USE) else ''}")
    if (root / "staging").is_dir():
        lines.append("staging/ (outputs waiting for upload, never removed here): "
                     f"{human_bytes(disk_bytes(root / 'staging'))}")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
