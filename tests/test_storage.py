import re
import subprocess
import sys
import threading
import uuid

import pytest

from ratio_cnn.errors import RatioCnnError
from ratio_cnn.storage import LocalStorage, S3Storage, basename, join, open_storage, parent


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])  # s3: the moto server
def storage(request, tmp_path):
    if request.param == "local":
        return open_storage(str(tmp_path / "root"))
    client = request.getfixturevalue("s3")
    client.create_bucket(Bucket="store-test")
    return open_storage(f"s3://store-test/some/prefix/{uuid.uuid4().hex[:8]}")  # moto lives as long as the session


def test_put_get_list_exists_delete(storage):
    storage.put("a/b.txt", b"hello")
    storage.put("c.txt", b"")
    assert storage.get("a/b.txt") == b"hello" and storage.get("c.txt") == b""
    assert storage.list() == ["a/b.txt", "c.txt"]
    assert storage.list("a/") == ["a/b.txt"]
    assert storage.exists("a/b.txt") and not storage.exists("a/nope.txt")
    storage.delete("a/b.txt")
    storage.delete("a/b.txt")  # absent: nothing happens
    assert not storage.exists("a/b.txt")


def test_get_many_and_put_many(storage):
    objects = {f"img/{i:03d}.bin": bytes([i]) * i for i in range(40)}
    storage.put_many(objects, workers=8)
    assert storage.get_many(list(objects), workers=8) == objects


def test_missing_object_names_it(storage):
    with pytest.raises(RatioCnnError, match=r"nope\.txt does not exist"):
        storage.get("nope.txt")


def test_open_storage_picks_the_backend(tmp_path, s3):
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert open_storage(f"file://{tmp_path}").root == tmp_path
    s = open_storage("s3://bucket/x/y/")
    assert isinstance(s, S3Storage) and (s.bucket, s.prefix) == ("bucket", "x/y")
    with pytest.raises(RatioCnnError, match="names no bucket"):
        open_storage("s3:///x")
    with pytest.raises(RatioCnnError, match="use a folder path, file://… or s3://bucket/prefix"):
        open_storage("gs://bucket/x")


def test_join():
    assert join("s3://b/p/", "run", "/ratio-3/") == "s3://b/p/run/ratio-3"
    assert join("results", "r1") == "results/r1"


def test_parent_and_basename():
    assert parent("s3://b/p/run/") == "s3://b/p" and basename("s3://b/p/run/") == "run"
    assert parent("file:///data/out/r1") == "file:///data/out" and basename("file:///data/out/r1") == "r1"
    assert parent("results/r1") == "results" and parent("r1") == "." and basename("r1") == "r1"


def test_local_put_leaves_no_partial_file(tmp_path):
    storage = open_storage(str(tmp_path))
    storage.put("x/y.bin", b"1" * 1000)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["y.bin"]


# -----------------------------------------------------------------------------
# conditional writes: one owner per claim


def race(n: int, attempt) -> list:
    """Run attempt(i) on n threads released at once; their results in order."""
    start, results = threading.Barrier(n), [None] * n

    def run(i):
        start.wait()
        results[i] = attempt(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_create_is_exclusive(storage):
    assert storage.create("job/claim", b"first")
    assert not storage.create("job/claim", b"second")
    assert storage.get("job/claim") == b"first"

    won = race(8, lambda i: storage.create("job2/claim", f"owner {i}".encode()))
    assert won.count(True) == 1
    assert storage.get("job2/claim") == f"owner {won.index(True)}".encode()
    assert storage.list() == ["job/claim", "job2/claim"]  # no temp or lock file shows


def test_replace_only_from_the_version_read(storage):
    storage.put("job/claim", b"v1")
    data, version = storage.get_versioned("job/claim")
    assert data == b"v1"
    assert storage.replace("job/claim", b"v2", version)
    assert not storage.replace("job/claim", b"stale", version)  # someone else's version now
    assert storage.get("job/claim") == b"v2"
    assert not storage.replace("nope/claim", b"x", version)  # vanished
    assert not storage.exists("nope/claim")
    assert storage.list() == ["job/claim"]  # no lock file shows


def test_replace_loses_no_update(storage):
    # compare-and-swap as a counter: every increment retried until its replace wins
    storage.put("counter", b"0")

    def increment(_):
        for _ in range(20):
            while True:
                data, version = storage.get_versioned("counter")
                if storage.replace("counter", str(int(data) + 1).encode(), version):
                    break

    race(6, increment)
    assert storage.get("counter") == b"120"


def test_list_versions_change_with_content(storage):
    storage.put_many({"img/a.jpg": b"aaa", "img/b.jpg": b"bbb", "other.txt": b"o"})
    before = storage.list_versions("img/")
    assert sorted(before) == ["img/a.jpg", "img/b.jpg"]
    storage.put("img/a.jpg", b"AAA")  # same size
    _, version = storage.get_versioned("img/b.jpg")
    storage.replace("img/b.jpg", b"BBBB", version)  # leaves a lock file locally
    after = storage.list_versions("img/")
    assert sorted(after) == ["img/a.jpg", "img/b.jpg"]
    assert after["img/a.jpg"] != before["img/a.jpg"] and after["img/b.jpg"] != before["img/b.jpg"]
    assert after["img/b.jpg"] == storage.get_versioned("img/b.jpg")[1]  # one version, read or listed
    assert storage.list_versions() == {**after, "other.txt": storage.list_versions()["other.txt"]}


# -----------------------------------------------------------------------------
# keys stay inside the root


BAD_KEYS = ["/etc/passwd", "../outside.txt", "a/../../outside.txt", "a/./b", "a//b", "a/", "", "a\\b",
            "a\x00b", "a\nb", "x" * 1025, ".tmp-a", "a/.lock-b"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_that_could_leave_the_root_are_refused(storage, key, tmp_path):
    calls = [lambda: storage.get(key), lambda: storage.put(key, b"x"), lambda: storage.exists(key),
             lambda: storage.delete(key), lambda: storage.create(key, b"x"), lambda: storage.get_versioned(key),
             lambda: storage.replace(key, b"x", "1"), lambda: storage.get_many(["ok.txt", key]),
             lambda: storage.put_many({key: b"x"})]
    for call in calls:
        with pytest.raises(RatioCnnError, match=f"under {re.escape(storage.uri)} .*: a key must be a relative path"):
            call()
    assert not (tmp_path / "outside.txt").exists()


@pytest.mark.parametrize("prefix", ["../", "/abs", "a//", "a/../.."])
def test_prefixes_that_could_leave_the_root_are_refused(storage, prefix):
    for call in (storage.list, storage.list_versions):
        with pytest.raises(RatioCnnError, match=f"prefix .* under {re.escape(storage.uri)}"):
            call(prefix)


def test_s3_uri_with_dot_dot_or_empty_names_is_refused(s3):
    for uri in ("s3://bucket/a/../b", "s3://bucket/a//b", "s3://bucket/./a"):
        with pytest.raises(RatioCnnError, match=f"URI '{re.escape(uri)}': its prefix .* write s3://bucket/prefix"):
            open_storage(uri)


def test_local_symlink_out_of_the_root_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "img").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    (root / "img" / "a.jpg").write_bytes(b"a")
    (root / "img" / "same.jpg").symlink_to(root / "img" / "a.jpg")  # inside the root: fine
    (root / "img" / "leak.jpg").symlink_to(outside / "secret.txt")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    storage = open_storage(str(root))

    assert storage.get("img/same.jpg") == b"a"
    assert storage.list() == ["img/a.jpg", "img/same.jpg"]
    for call in (lambda: storage.get("img/leak.jpg"), lambda: storage.get("escape/secret.txt"),
                 lambda: storage.put("escape/new.txt", b"x"), lambda: storage.list("escape/")):
        with pytest.raises(RatioCnnError, match=f"leads outside {re.escape(str(root))} .*through a symlink"):
            call()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


# -----------------------------------------------------------------------------
# no partial files


FULL_DISK = """
import resource, signal, sys
from ratio_cnn.storage import open_storage
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
storage = open_storage(sys.argv[1])
for write in (lambda: storage.put("x/big.bin", b"1" * 5000), lambda: storage.create("x/claim", b"1" * 5000)):
    try:
        write()
    except Exception as e:
        print(type(e).__name__, e)
"""


def test_a_failed_local_write_leaves_nothing_behind(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / ".tmp-big.bin-0badf00d").write_bytes(b"left by a killed process")
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.splitlines() == [
        f"RatioCnnError cannot write {tmp_path}/x/big.bin: File too large",
        f"RatioCnnError cannot create {tmp_path}/x/claim: File too large",
    ], result.stderr
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [".tmp-big.bin-0badf00d"]

    storage = open_storage(str(tmp_path))
    storage.put("x/big.bin", b"1" * 5000)  # the leftover neither blocks the write nor shows
    assert storage.list() == ["x/big.bin"]
