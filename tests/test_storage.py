import pytest

from ratio_cnn.errors import RatioCnnError
from ratio_cnn.storage import LocalStorage, S3Storage, join, open_storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return open_storage(str(tmp_path / "root"))
    client = request.getfixturevalue("s3")
    client.create_bucket(Bucket="store-test")
    return open_storage("s3://store-test/some/prefix")


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


def test_local_put_leaves_no_partial_file(tmp_path):
    storage = open_storage(str(tmp_path))
    storage.put("x/y.bin", b"1" * 1000)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["y.bin"]
