"""One interface over local folders and S3-compatible object storage.

`open_storage("results")`, `open_storage("file:///data/x")` or
`open_storage("s3://bucket/prefix")` gives a `Storage` whose keys are relative to that
root. S3 is configured the standard AWS way (environment, profile, AWS_ENDPOINT_URL
for MinIO or any S3-compatible endpoint). No other module knows which backend it talks to.
"""
from __future__ import annotations  # the `list` method shadows the builtin in annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from ratio_cnn.errors import RatioCnnError, StorageUnavailable

NOT_FOUND = ("404", "NoSuchKey", "NotFound")  # the codes S3-compatible servers give a missing object


def join(uri: str, *parts: str) -> str:
    """Append path parts to a storage URI: join('s3://b/p', 'run', 'x') -> 's3://b/p/run/x'."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


class Storage:
    uri: str

    def list(self, prefix: str = "") -> list[str]:
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove one object; nothing happens if it is not there."""
        raise NotImplementedError

    def get_many(self, keys: list[str], workers: int = 16) -> dict[str, bytes]:
        """Fetch many objects concurrently; the first failure stops the lot."""
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return dict(zip(keys, pool.map(self.get, keys)))

    def put_many(self, objects: dict[str, bytes], workers: int = 16) -> None:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda item: self.put(*item), objects.items()))

    def describe(self, key: str) -> str:
        return join(self.uri, key)


class LocalStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root)

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix
        if not base.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def get(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            raise RatioCnnError(f"{self.describe(key)} does not exist") from None
        except OSError as e:
            raise RatioCnnError(f"cannot read {self.describe(key)}: {e.strerror}") from None

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        tmp = path.with_name(f".tmp-{path.name}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)  # readers never see a half-written file
        except OSError as e:
            raise RatioCnnError(f"cannot write {self.describe(key)}: {e.strerror}") from None

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)


class S3Storage(Storage):
    def __init__(self, bucket: str, prefix: str) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        config = Config(
            retries={"mode": "standard", "max_attempts": 5},  # transient 5xx, throttling, resets
            connect_timeout=5,  # an unreachable endpoint fails in seconds, not minutes
            read_timeout=60,
            max_pool_connections=32,  # no fewer than the concurrent downloads (--workers, 16)
        )
        self.client = boto3.session.Session().client("s3", config=config)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, action: str, key: str):
        """Turn botocore's exceptions into one line that says what to do."""
        from botocore import exceptions as bx

        where = self.describe(key)
        endpoint = self.client.meta.endpoint_url
        try:
            yield
        except bx.NoCredentialsError:
            raise RatioCnnError(
                f"no AWS credentials to {action} {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            ) from None
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ConnectionClosedError) as e:
            raise StorageUnavailable(
                f"cannot reach the S3 endpoint {endpoint} to {action} {where} ({type(e).__name__}): "
                "check AWS_ENDPOINT_URL and that the server is up"
            ) from None
        except bx.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "?")
            if code == "NoSuchBucket":
                raise self._no_bucket() from None
            if code in NOT_FOUND:
                raise RatioCnnError(f"{where} does not exist") from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"):
                raise RatioCnnError(
                    f"S3 at {endpoint} refused to {action} {where} ({code}): check the credentials "
                    "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and the bucket's permissions"
                ) from None
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            error = StorageUnavailable if status >= 500 or code in ("SlowDown", "Throttling") else RatioCnnError
            raise error(f"S3 error {code} trying to {action} {where}: {e}") from None

    def list(self, prefix: str = "") -> list[str]:
        keys = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._errors("list", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            for page in pages:
                keys += [obj["Key"][strip:] for obj in page.get("Contents", [])]
        return sorted(keys)

    def get(self, key: str) -> bytes:
        with self._errors("read", key):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        with self._errors("write", key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self._errors("check", key):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") not in NOT_FOUND:
                    raise
            # HEAD answers a bare 404 for a missing bucket as for a missing key: tell them apart,
            # or "no manifest.csv" would send the user to write into a bucket that is not there.
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in (*NOT_FOUND, "NoSuchBucket"):
                    raise self._no_bucket() from None
                # 403 and the like: no right to look at the bucket itself; the key is still absent
        return False

    def _no_bucket(self) -> RatioCnnError:
        return RatioCnnError(
            f"bucket {self.bucket!r} does not exist at {self.client.meta.endpoint_url}: create it or fix the URI"
        )

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def open_storage(uri: str) -> Storage:
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise RatioCnnError(f"{uri!r} names no bucket: write s3://bucket/prefix")
        return S3Storage(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        return LocalStorage(Path(parsed.path))
    if not parsed.scheme or len(parsed.scheme) == 1:  # a plain path (or a Windows drive letter)
        return LocalStorage(Path(uri))
    raise RatioCnnError(f"storage URI {uri!r}: use a folder path, file://… or s3://bucket/prefix")
