"""The bounded cache (issue 16): least recently used first, never what a running job uses.

Real files and real locks: tiny synthetic datasets loaded through `load_images` as a job does,
other jobs played by threads and by processes holding a set's lock, and the real CLI.
"""
import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import SMALL_SPLITS, one_error_line, run_cli
from ratio_cnn import cache as cache_module
from ratio_cnn.data import MANIFEST, digest, get_manifest, load_images, read_manifest
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.storage import open_storage
from ratio_cnn.synth import make_synthetic_dataset

GB = 1e9
HOLD = """import fcntl, sys
files = [open(p, "a") for p in sys.argv[1:]]
for f in files:
    fcntl.flock(f, fcntl.LOCK_SH if f.name.endswith(".in-use") else fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""
# What an eviction pass does to a set, played slowly: lock it, wait, rename it away, let go.
EVICT_SLOWLY = """import fcntl, os, sys
folder = sys.argv[1]
lock = open(folder + "/.lock", "a")
fcntl.flock(lock, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
os.rename(folder, os.path.join(os.path.dirname(folder), ".evicting-" + os.path.basename(folder)))
"""


def make(path: Path, seed: int, malignant: int = 4, benign: int = 6) -> Path:
    make_synthetic_dataset(str(path), malignant=malignant, benign=benign, seed=seed, workers=2)
    return path


def load(dataset: Path, cache: Path | None, max_gb: float = 0.0):
    """A job's data phase on the whole dataset: the manifest (cached), then every image."""
    storage = open_storage(str(dataset))
    present = storage.list_versions()
    raw = get_manifest(storage, present[MANIFEST], cache)
    manifest = read_manifest(raw, storage.describe(MANIFEST))
    return load_images(storage, manifest, list(manifest["image"]), present, cache, digest(raw), workers=2,
                       deadline=time.monotonic() + 120, max_skipped=0.0, cache_max_gb=max_gb)


def cache_bytes(cache: Path) -> int:
    """Measured here, not by cache.py: every file under decoded/ and objects/, as the disk holds it."""
    return sum(p.lstat().st_blocks * 512 for part in ("decoded", "objects") for p in (cache / part).rglob("*")
               if p.is_file())


def sets(cache: Path) -> list[Path]:
    return sorted((cache / "decoded").iterdir())


def source_of(dataset: Path, cache: Path) -> Path:
    return cache_module.ObjectCache(cache, open_storage(str(dataset)).uri).folder


def objects_in(source: Path) -> list[Path]:
    return [p for p in source.iterdir() if not p.name.startswith(".")]


class Holder:
    """Another job, in another process: holds decoded sets' locks (exclusive) and sources' in-use markers (shared)."""

    def __init__(self, *paths: Path, script: str = HOLD) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", script, *map(str, paths)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "held\n"

    def release(self) -> None:
        self.proc.communicate("", timeout=30)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> list[Path]:
    """Three tiny datasets, different pixels: ten images, ten, twelve (so the first is the smallest)."""
    root = tmp_path_factory.mktemp("sets")
    return [make(root / "d1", 1), make(root / "d2", 2), make(root / "d3", 3, benign=8)]


def footprints(datasets: list[Path], scratch: Path) -> list[int]:
    """The bytes each dataset adds to a cache (its decoded set, objects and manifest)."""
    sizes, before = [], 0
    for d in datasets:
        load(d, scratch, max_gb=1.0)
        sizes.append(cache_bytes(scratch) - before)
        before = cache_bytes(scratch)
    return sizes


# -----------------------------------------------------------------------------
# least recently used first


def test_the_least_recently_used_dataset_goes_first_and_comes_back_when_used(datasets, tmp_path, caplog):
    f1, f2, f3 = footprints(datasets, tmp_path / "scratch")
    limit = f2 + f3  # the newest two fit (so do the first two: f1 < f3); all three do not
    cache, made = tmp_path / "cache", []
    with caplog.at_level(logging.INFO, logger="ratio_cnn.cache"):
        for d in datasets:
            before = set(sets(cache)) if (cache / "decoded").exists() else set()
            load(d, cache, max_gb=limit / GB)
            (new,) = set(sets(cache)) - before
            made.append(new)
            assert cache_bytes(cache) <= limit
    assert sets(cache) == sorted(made[1:])  # the first set went
    assert objects_in(source_of(datasets[0], cache)) == []  # and its objects
    assert all(objects_in(source_of(d, cache)) for d in datasets[1:])
    assert any("cache over its" in r.getMessage() and "removed 1 decoded set and 11 objects" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    first = load(datasets[0], None)
    again = load(datasets[0], cache, max_gb=limit / GB)  # fetched and decoded anew, the same pixels
    assert again.downloaded == again.decoded == 10 and torch.equal(again.images, first.images)
    assert made[0] in sets(cache) and made[1] not in sets(cache)  # now the second was the least recently used
    assert cache_bytes(cache) <= limit


def test_a_set_and_objects_in_use_by_another_process_stay_until_it_lets_go(datasets, tmp_path, caplog):
    sizes, cache = footprints(datasets, tmp_path / "scratch"), tmp_path / "cache"
    limit = int(max(sizes) * 1.2)  # one dataset
    load(datasets[0], cache, max_gb=limit / GB)
    (held_set,), source = sets(cache), source_of(datasets[0], cache)
    held_objects = objects_in(source)
    holder = Holder(held_set / ".lock", source / ".in-use")
    try:
        with caplog.at_level(logging.WARNING):
            load(datasets[1], cache, max_gb=limit / GB)
        assert held_set in sets(cache) and objects_in(source) == held_objects  # over the limit, but in use
        assert any("over its" in r.getMessage() and "in use" in r.getMessage() for r in caplog.records)
    finally:
        holder.release()
    load(datasets[2], cache, max_gb=limit / GB)
    assert held_set not in sets(cache) and objects_in(source) == []
    assert cache_bytes(cache) <= limit


def waiting_for(lock: Path) -> bool:
    """Someone is blocked on this file's flock (Linux: /proc/locks marks a waiter with "->")."""
    inode = f":{os.stat(lock).st_ino} "
    return any("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())


def test_a_job_waiting_for_a_set_that_is_evicted_meanwhile_starts_a_new_one(datasets, tmp_path):
    cache = tmp_path / "cache"
    reference = load(datasets[0], cache)
    (folder,) = sets(cache)
    evictor = Holder(folder, script=EVICT_SLOWLY)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(load, datasets[0], cache)
        deadline = time.monotonic() + 60
        while not waiting_for(folder / ".lock"):
            assert time.monotonic() < deadline and not waiting.done(), "the job never waited for the set's lock"
            time.sleep(0.02)
        evictor.release()  # renames the set away, then lets go of its lock: the job holds a lock on a lost file
        loaded = waiting.result(timeout=60)
    assert loaded.decoded == 10 and torch.equal(loaded.images, reference.images)  # decoded into a new set
    assert sets(cache) == [folder] and (folder / "rows.json").exists()
    assert load(datasets[0], cache).decoded == 0


def test_two_jobs_loading_and_evicting_at_once_both_get_their_pixels(datasets, tmp_path):
    references = [load(d, None).images for d in datasets]
    sizes, cache = footprints(datasets, tmp_path / "scratch"), tmp_path / "cache"
    limit = int(max(sizes) * 1.5)  # every load evicts something
    orders = [[0, 1, 2, 0, 2, 1, 0, 0], [2, 2, 1, 0, 1, 0, 2, 1]]

    def job(order):
        for i in order:
            assert torch.equal(load(datasets[i], cache, max_gb=limit / GB).images, references[i])

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(job, order) for order in orders]:
            done.result(timeout=300)
    assert cache_bytes(cache) <= limit
    assert not [p for p in (cache / "decoded").iterdir() if p.name.startswith(".evicting-")]
    for d, reference in zip(datasets, references):
        assert torch.equal(load(d, cache, max_gb=limit / GB).images, reference)


def test_growing_data_over_ten_nights_stays_within_the_limit(tmp_path):
    source = make(tmp_path / "all", seed=7, malignant=20, benign=26)
    everything = pd.read_csv(source / MANIFEST)
    dataset, cache = tmp_path / "nightly", tmp_path / "cache"
    final = len(everything)
    limit = int(1.5 * final * (cache_module.ROW_BYTES + 16384))  # the last night's set and objects, and half again
    for night in range(10):
        count = 10 + 4 * night  # four new images a night, up to all 46
        rows = everything.iloc[:count]
        for name in rows["image"]:
            if not (dataset / name).exists():
                (dataset / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / name, dataset / name)
        (dataset / MANIFEST).write_text(rows.to_csv(index=False))
        loaded = load(dataset, cache, max_gb=limit / GB)
        assert len(loaded.names) == count and loaded.downloaded == (count if night == 0 else 4)  # objects kept
        assert cache_bytes(cache) <= limit, f"night {night}"
    assert len(sets(cache)) < 10  # old nights' sets went


def test_with_the_automatic_limit_a_dataset_larger_than_it_keeps_only_its_own_set(datasets, tmp_path, caplog,
                                                                                  monkeypatch):
    cache = tmp_path / "cache"
    load(datasets[0], cache)
    (older,) = sets(cache)
    monkeypatch.setattr(cache_module, "default_limit", lambda root: 10_000)  # a tiny disk
    with caplog.at_level(logging.WARNING):
        again = load(datasets[1], cache)
    assert again.decoded == 10 and len(sets(cache)) == 1 and older not in sets(cache)
    assert any("automatic limit" in r.getMessage() for r in caplog.records)


# -----------------------------------------------------------------------------
# bad input, and the CLI


def test_an_explicit_limit_smaller_than_the_job_stops_before_fetching_or_removing(datasets, tmp_path):
    cache = tmp_path / "cache"
    load(datasets[0], cache)
    before = sorted(cache.rglob("*"))
    with pytest.raises(RatioCnnError, match=r"--cache-max-gb 1e-05 keeps the cache .* under 10,000 bytes, but the 10 "
                                            r"decoded images this job needs take 491,520 bytes: raise --cache-max-gb "
                                            r"to at least 0.001, or use --cache none"):
        load(datasets[1], cache, max_gb=1e-5)
    after = sorted(cache.rglob("*"))
    assert set(before) <= set(after) and len(sets(cache)) == 1  # nothing removed, nothing decoded
    assert len(objects_in(source_of(datasets[1], cache))) == 1  # its manifest, no image fetched


def test_the_cli_says_in_one_line_that_the_limit_is_too_small_and_removes_nothing(small_dataset, datasets, tmp_path):
    cache = tmp_path / "cache"
    load(datasets[0], cache)
    before = {p: p.stat().st_size for p in cache.rglob("*") if p.is_file()}
    result = run_cli("train", "--ratio", "1", "--data", str(small_dataset), "--out", str(tmp_path / "out"),
                     "--cache", str(cache), "--cache-max-gb", "0.000001", *SMALL_SPLITS, "--epochs", "1",
                     "--device", "cpu")
    one_error_line(result, "--cache-max-gb 1e-06", "1,000 bytes", "decoded images", "--cache none")
    assert all(p.exists() and p.stat().st_size == size for p, size in before.items())
    assert len(sets(cache)) == 1


def test_cache_info_and_clear_show_and_remove_all_but_what_is_in_use_and_staging(datasets, tmp_path):
    cache = tmp_path / "cache"
    for d in datasets[:2]:
        load(d, cache)
    staged = cache / "staging" / "run-a" / "metrics.json"
    staged.parent.mkdir(parents=True)
    staged.write_text("{}")
    free_set, held_set = sets(cache)
    holder = Holder(held_set / ".lock")
    try:
        info = run_cli("cache", "info", "--cache", str(cache))
        assert info.returncode == 0, info.stderr
        lines = info.stdout.splitlines()
        assert "2 decoded sets and 22 objects of 2 sources" in lines[0] and "quarter of the disk" in lines[0]
        held_line = next(line for line in lines if held_set.name in line)
        free_line = next(line for line in lines if free_set.name in line)
        assert held_line.endswith("in use") and not free_line.endswith("in use") and "kB" in free_line
        assert any(line.startswith("staging/") for line in lines)

        cleared = run_cli("cache", "clear", "--cache", str(cache))
        assert cleared.returncode == 0, cleared.stderr
        assert "removed 1 decoded set and 22 objects" in cleared.stdout
        assert "kept 1 decoded set and the objects of 0 sources" in cleared.stdout and "staging/" in cleared.stdout
    finally:
        holder.release()
    assert sets(cache) == [held_set] and staged.read_text() == "{}"
    assert not [p for s in (cache / "objects").iterdir() for p in objects_in(s)]
    assert "0 objects" in run_cli("cache", "info", "--cache", str(cache)).stdout


def test_cache_info_and_clear_of_a_missing_folder_say_so(tmp_path):
    missing = tmp_path / "nothing-here"
    info = run_cli("cache", "info", "--cache", str(missing))
    cleared = run_cli("cache", "clear", "--cache", str(missing))
    assert info.returncode == cleared.returncode == 0
    assert "does not exist" in info.stdout and "nothing to clear" in cleared.stdout
    assert not missing.exists()
