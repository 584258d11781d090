"""One interface over local folders and S3-compatible object storage.

`open_storage("results")`, `open_storage("file:///data/x")` or
`open_storage("s3://bucket/prefix")` gives a `Storage` whose keys are relative to that
root; `overlaps(a, b)` says whether two such roots share any object. S3 is configured the
standard AWS way (environment, profile, AWS_ENDPOINT_URL for MinIO or any S3-compatible
endpoint). No other module knows which backend it talks to.

Every failure is a `RatioCnnError` naming the object; one worth retrying (timeouts, dropped
connections, 5xx, throttling) is a `StorageUnavailable`. No call waits longer than a few
`timeout`s on a silent endpoint. Keys are checked before use (`check_key`): none reaches
outside the root.

Conditional writes for "one owner" claims: `create` (exclusive), `get_versioned` + `replace`
(compare-and-swap). `data` given to them should identify the writer (a uuid, host and pid):
when an answer is lost and the request retried, the object is read back to tell "we won" from
"someone else did".

POSIX only (Linux, macOS), like the rest of ratio-cnn: a local `replace` holds an fcntl lock,
so importing this module fails at once on Windows rather than halfway through a job.
"""
from __future__ import annotations  # the `list` method shadows the builtin in annotations

import fcntl
import os
import secrets
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from ratio_cnn.errors import RatioCnnError, StorageUnavailable

NOT_FOUND = ("404", "NoSuchKey", "NotFound")  # the codes S3-compatible servers give a missing object
CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict", *NOT_FOUND)  # 412, 409, vanished
TRANSIENT_CODES = ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable",
                   "InternalError")
MAX_KEY_BYTES = 1024  # S3's own limit
HIDDEN = (".tmp-", ".lock-")  # LocalStorage's temp and lock files: never listed, never valid key names
KEY_RULE = ("a key must be a relative path of '/'-separated names (none empty, '.' or '..'), "
            f"without backslashes or control characters, at most {MAX_KEY_BYTES} bytes")


def join(uri: str, *parts: str) -> str:
    """Append path parts to a storage URI: join('s3://b/p', 'run', 'x') -> 's3://b/p/run/x'."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def parent(uri: str) -> str:
    """The storage URI one name up: parent('s3://b/p/run/') -> 's3://b/p'; parent('run') -> '.'."""
    above, slash, _ = uri.rstrip("/").rpartition("/")
    return above if slash else "."


def basename(uri: str) -> str:
    """The last name of a storage URI: basename('s3://b/p/run/') -> 'run'."""
    return uri.rstrip("/").rpartition("/")[2]


def key_problem(key: str, prefix: bool = False) -> str | None:
    """Why `key` could reach outside its root or mean different things on different backends; None if fine."""
    if prefix:
        key = key.removesuffix("/")
        if not key:
            return None  # "" and "/" list the whole root
    if not key:
        return "is empty"
    if key.startswith("/"):
        return "is absolute"
    if "\\" in key:
        return "has a backslash"
    if any(ord(c) < 32 or c == "\x7f" for c in key):
        return "has a control character"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes"
    for name in key.split("/"):
        if name in ("", ".", ".."):
            return f"has a {name!r} name" if name else "has an empty name"
        if name.startswith(HIDDEN):
            return f"uses a name reserved for temporary files ({name!r})"
    return None


class Traffic:
    """Objects and bytes one Storage read and wrote (a job's costs); safe across its transfer threads."""

    def __init__(self) -> None:
        self.objects_read = self.bytes_read = self.objects_written = self.bytes_written = 0
        self._lock = threading.Lock()

    def read(self, data: bytes) -> None:
        with self._lock:
            self.objects_read += 1
            self.bytes_read += len(data)

    def wrote(self, data: bytes) -> None:
        with self._lock:
            self.objects_written += 1
            self.bytes_written += len(data)

    def to_dict(self) -> dict[str, int]:
        return {"objects_read": self.objects_read, "bytes_read": self.bytes_read,
                "objects_written": self.objects_written, "bytes_written": self.bytes_written}


class Storage:
    uri: str
    traffic: Traffic  # every get and put through this object, counted

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self.list_versions(prefix))

    def list_versions(self, prefix: str = "") -> dict[str, str]:
        """Every key under prefix with its version, as `get_versioned` gives it: it changes with the content."""
        return {key: version for key, (version, _) in self.list_objects(prefix).items()}

    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        """Every key under prefix with its size in bytes."""
        return {key: size for key, (_, size) in self.list_objects(prefix).items()}

    def list_objects(self, prefix: str = "") -> dict[str, tuple[str, int]]:
        """Every key under prefix -> (version, size)."""
        raise NotImplementedError

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes; with `max_bytes`, an object larger than that is refused unread."""
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def remove_leftovers(self, prefix: str) -> list[str]:
        """Remove what interrupted writes left under `prefix` (none on S3, whose puts are whole or
        absent); the caller must own the prefix: a write in flight there would lose its temp file."""
        return []

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove one object; nothing happens if it is not there."""
        raise NotImplementedError

    def delete_many(self, keys: list[str]) -> None:
        """Remove these objects (absent ones are no error); the first failure stops the rest."""
        for key in keys:
            self.delete(key)

    def create(self, key: str, data: bytes) -> bool:
        """Write only if nothing is there: True if this call created it, False if it already existed."""
        raise NotImplementedError

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The content and the version to hand to `replace`."""
        raise NotImplementedError

    def replace(self, key: str, data: bytes, version: str) -> bool:
        """Overwrite only if the object still has `version`: False if it changed or vanished."""
        raise NotImplementedError

    def get_many(self, keys: list[str], workers: int = 16, deadline: float | None = None) -> dict[str, bytes]:
        """Fetch many objects concurrently by a `time.monotonic()` deadline; the first failure stops the lot."""
        return self._concurrently(self.get, keys, workers, deadline, "fetched")

    def put_many(self, objects: dict[str, bytes], workers: int = 16, deadline: float | None = None) -> None:
        self._concurrently(lambda key: self.put(key, objects[key]), list(objects), workers, deadline, "written")

    def describe(self, key: str) -> str:
        return join(self.uri, key) if key else self.uri

    def check_key(self, key: str, prefix: bool = False) -> str:
        """Return `key` if it is a safe relative key (or prefix); otherwise say what a key must be."""
        problem = key_problem(key, prefix)
        if problem:
            shown = key if len(key) <= 100 else key[:60] + "…"
            raise RatioCnnError(f"{'prefix' if prefix else 'key'} {shown!r} under {self.uri} {problem}: {KEY_RULE}")
        return key

    def _too_large(self, key: str, max_bytes: int) -> RatioCnnError:
        return RatioCnnError(f"{self.describe(key)} is larger than {max_bytes:,} bytes, more than ratio-cnn ever "
                             "writes there: it was damaged or is not what it claims to be; remove or replace it")

    def _concurrently(self, work: Callable[[str], object], keys: list[str], workers: int,
                      deadline: float | None, verb: str) -> dict:
        """Run work(key) for every key on daemon threads; raise the first failure, or at the deadline.

        Not a ThreadPoolExecutor: leaving it waits for every call in flight, so an error, Ctrl-C
        or a deadline would wait out each stalled transfer (minutes), and so would the process exit.
        Transfers still in flight when this raises finish or time out on their own, unobserved.
        """
        keys = [self.check_key(key) for key in dict.fromkeys(keys)]  # a bad key fails before any transfer
        if not keys:
            return {}
        started = time.monotonic()
        todo, results, errors = iter(keys), {}, []
        lock, finished = threading.Lock(), threading.Event()

        def worker() -> None:
            while not finished.is_set():
                with lock:
                    key = next(todo, None)
                if key is None:
                    return
                try:
                    value = work(key)
                except BaseException as e:  # handed to the caller's thread below
                    errors.append(e)
                    finished.set()
                    return
                with lock:
                    results[key] = value
                    if len(results) == len(keys):
                        finished.set()

        for _ in range(max(1, min(workers, len(keys)))):
            threading.Thread(target=worker, daemon=True).start()
        try:
            finished.wait(None if deadline is None else max(0.0, deadline - started))
        finally:
            finished.set()  # on an error, Ctrl-C or the deadline: no new transfer starts
        if errors:
            raise errors[0]
        if len(results) < len(keys):
            allowed = max(0.0, deadline - started)
            raise StorageUnavailable(
                f"only {len(results)} of {len(keys)} objects {verb} at {self.uri} within the {allowed:.1f} s "
                "allowed: the storage is stalled or slow; retry later or allow more time"
            )
        return {key: results[key] for key in keys}


class LocalStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root)
        self.traffic = Traffic()

    def _path(self, key: str, prefix: bool = False) -> Path:
        path = self.root / self.check_key(key, prefix)
        root, target = self.root.resolve(), path.resolve()
        if not target.is_relative_to(root):  # a symlink inside the root that points elsewhere
            raise RatioCnnError(f"{self.describe(key)} leads outside {root} (to {target}) through a symlink: "
                                "replace the link with the file itself, or open the storage at the target")
        return path

    def list_objects(self, prefix: str = "") -> dict[str, tuple[str, int]]:
        root, found = self.root.resolve(), {}
        for folder, _, names in os.walk(self._path(prefix, prefix=True)):  # does not follow linked folders
            for name in names:
                path = Path(folder, name)
                if name.startswith(HIDDEN) or (path.is_symlink() and not path.resolve().is_relative_to(root)):
                    continue
                try:
                    st = path.stat()
                except OSError:
                    continue  # removed since the walk saw it, or a broken link
                found[path.relative_to(self.root).as_posix()] = (self._version(st), st.st_size)
        return found

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        return self.get_versioned(key, max_bytes)[0]

    def get_versioned(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                data = f.read() if max_bytes is None else f.read(max_bytes + 1)
                # the version of the file actually read: writers replace it, never change it in place
                version = self._version(os.fstat(f.fileno()))
        except FileNotFoundError:
            raise RatioCnnError(f"{self.describe(key)} does not exist") from None
        except OSError as e:
            raise RatioCnnError(f"cannot read {self.describe(key)}: {e.strerror or e}") from None
        if max_bytes is not None and len(data) > max_bytes:
            raise self._too_large(key, max_bytes)
        self.traffic.read(data)
        return data, version

    @staticmethod
    def _version(st: os.stat_result) -> str:
        # The inode too: every write here makes a new file, and mtime ticks only every few ms on many kernels.
        # The ctime too: a file rewritten in place with its size and mtime set back (os.utime) gets a new
        # ctime, which no call can set back; see docs/reliability.md for what this cannot see.
        return f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}-{st.st_ctime_ns}"

    def _write_temp(self, path: Path, data: bytes) -> Path:
        """Write data beside path under a unique hidden name, removed again if writing fails (a full disk)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name[:200]}-{secrets.token_hex(4)}")  # unique: a leftover never collides
        try:
            with open(tmp, "xb") as f:
                f.write(data)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            tmp = self._write_temp(path, data)
            try:
                os.replace(tmp, path)  # readers never see a half-written file
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except OSError as e:
            raise RatioCnnError(f"cannot write {self.describe(key)}: {e.strerror or e}") from None
        self.traffic.wrote(data)

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            tmp = self._write_temp(path, data)
            try:
                os.link(tmp, path)  # atomic, and fails if the name exists: exactly one creator wins
                self.traffic.wrote(data)
                return True
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as e:
            raise RatioCnnError(f"cannot create {self.describe(key)}: {e.strerror or e}") from None

    def replace(self, key: str, data: bytes, version: str) -> bool:
        path = self._path(key)
        if not path.parent.is_dir():
            return False
        try:
            with open(path.with_name(f".lock-{path.name}"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # compare and swap as one step among `replace` callers
                try:
                    if self._version(path.stat()) != version:
                        return False
                except FileNotFoundError:
                    return False
                tmp = self._write_temp(path, data)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                self.traffic.wrote(data)
                return True
        except OSError as e:
            raise RatioCnnError(f"cannot replace {self.describe(key)}: {e.strerror or e}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as e:
            raise RatioCnnError(f"cannot delete {self.describe(key)}: {e.strerror or e}") from None

    def remove_leftovers(self, prefix: str) -> list[str]:
        """The temp files of writes killed before their rename (`_write_temp`'s `.tmp-*`), removed."""
        removed = []
        for folder, _, names in os.walk(self._path(prefix, prefix=True)):
            for name in names:
                if name.startswith(".tmp-"):
                    path = Path(folder, name)
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        continue
                    except OSError as e:
                        raise RatioCnnError(f"cannot remove the leftover {path}: {e.strerror or e}") from None
                    removed.append(path.relative_to(self.root).as_posix())
        return removed


class S3Storage(Storage):
    def __init__(self, bucket: str, prefix: str, timeout: float = 10.0) -> None:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        self.bucket, self.prefix, self.timeout = bucket, prefix.strip("/"), timeout
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.traffic = Traffic()
        config = Config(
            # 3 tries of `timeout` each (a PUT adds 1 s per try waiting for "100 Continue"), with under
            # 3 s of back-off: a silent endpoint fails in ~35 s by default. Longer outages are for the
            # caller's retries (the Prefect flow retries StorageUnavailable).
            retries={"mode": "standard", "total_max_attempts": 3},  # `max_attempts` would count retries only
            connect_timeout=timeout,
            read_timeout=timeout,  # per socket read, so it suits 400 MB checkpoints as well as 5 kB images
            max_pool_connections=32,  # no fewer than the concurrent downloads (--workers, 16)
        )
        try:
            self.client = boto3.session.Session().client("s3", config=config)
        except (BotoCoreError, ValueError) as e:  # a malformed AWS_ENDPOINT_URL, an unknown profile
            raise RatioCnnError(f"cannot set up S3 for {self.uri}: {one_line(e)}: "
                                "check AWS_ENDPOINT_URL and AWS_PROFILE") from None

    def _key(self, key: str, prefix: bool = False) -> str:
        key = self.check_key(key, prefix)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, action: str, key: str):
        """Turn botocore's exceptions into one line that says what to do; transient ones are StorageUnavailable."""
        from botocore import exceptions as bx
        from urllib3.exceptions import HTTPError as Urllib3Error

        where = self.describe(key)
        endpoint = self.client.meta.endpoint_url
        try:
            yield
        except bx.NoCredentialsError:
            raise RatioCnnError(
                f"no AWS credentials to {action} {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            ) from None
        except bx.ReadTimeoutError:  # before the connection errors: it is also a urllib3 error
            raise StorageUnavailable(
                f"the S3 endpoint {endpoint} did not answer within {self.timeout:g} s to {action} {where}: "
                "the server is stalled or overloaded; check it, then retry"
            ) from None
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ProxyConnectionError) as e:
            raise StorageUnavailable(
                f"cannot reach the S3 endpoint {endpoint} to {action} {where} ({type(e).__name__}): "
                "check AWS_ENDPOINT_URL and that the server is up"
            ) from None
        except (bx.HTTPClientError, bx.ConnectionError, bx.IncompleteReadError, Urllib3Error) as e:
            # closed or reset connections, and a body cut short (ResponseStreamingError, IncompleteReadError)
            raise StorageUnavailable(
                f"the S3 endpoint {endpoint} dropped the connection while trying to {action} {where} "
                f"({type(e).__name__}): a network or server fault; retry"
            ) from None
        except bx.ClientError as e:
            code, status = error_code(e)
            if code == "NoSuchBucket":
                raise self._no_bucket() from None
            if code in NOT_FOUND:
                raise RatioCnnError(f"{where} does not exist") from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"):
                raise RatioCnnError(
                    f"S3 at {endpoint} refused to {action} {where} ({code}): check the credentials "
                    "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and the bucket's permissions"
                ) from None
            if status >= 500 or code in TRANSIENT_CODES:
                raise StorageUnavailable(
                    f"S3 at {endpoint} is unavailable or throttling ({code}, HTTP {status}) and could not "
                    f"{action} {where}: retry later"
                ) from None
            raise RatioCnnError(f"S3 at {endpoint} could not {action} {where}: {one_line(e)}") from None
        except bx.BotoCoreError as e:  # bad parameters or configuration: no retry helps
            raise RatioCnnError(f"S3 client error trying to {action} {where}: {one_line(e)}") from None

    def list_objects(self, prefix: str = "") -> dict[str, tuple[str, int]]:
        found = {}
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._errors("list", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix, prefix=True))
            for page in pages:
                found.update((obj["Key"][strip:], (obj["ETag"], obj["Size"])) for obj in page.get("Contents", []))
        return found

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        return self.get_versioned(key, max_bytes)[0]

    def get_versioned(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        # With a bound, the first max_bytes + 1 bytes only: enough to tell an object that is too large.
        bounded = {} if max_bytes is None else {"Range": f"bytes=0-{max_bytes}"}
        with self._errors("read", key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **bounded)
            data, version = response["Body"].read(), response["ETag"]
        if max_bytes is not None and len(data) > max_bytes:
            raise self._too_large(key, max_bytes)
        self.traffic.read(data)
        return data, version

    def put(self, key: str, data: bytes) -> None:
        with self._errors("write", key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        self.traffic.wrote(data)

    def create(self, key: str, data: bytes) -> bool:
        return self._conditional_put("create", key, data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, version: str) -> bool:
        return self._conditional_put("replace", key, data, IfMatch=version)

    def _conditional_put(self, action: str, key: str, data: bytes, **condition: str) -> bool:
        from botocore.exceptions import ClientError

        with self._errors(action, key):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
                self.traffic.wrote(data)
                return True
            except ClientError as e:
                code, status = error_code(e)
                if code == "NotImplemented" or status == 501:
                    raise RatioCnnError(
                        f"S3 at {self.client.meta.endpoint_url} lacks conditional writes, needed to {action} "
                        f"{self.describe(key)}: use AWS S3, MinIO 2024-11 or later, or another server that has them"
                    ) from None
                if code not in CONDITION_FAILED:
                    raise
                if not e.response.get("ResponseMetadata", {}).get("RetryAttempts"):
                    return False
            # A retry whose first try did succeed (the answer was lost) fails its own condition.
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read() == data
            except ClientError as e:
                if error_code(e)[0] in NOT_FOUND:
                    return False
                raise

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

    def delete_many(self, keys: list[str]) -> None:
        """Batch deletes: 1,000 keys per request (S3's limit)."""
        keys = [self.check_key(key) for key in keys]
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            with self._errors("delete", batch[0]):
                response = self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self._key(key)} for key in batch], "Quiet": True})
            if errors := response.get("Errors"):
                first = errors[0]
                raise RatioCnnError(f"S3 at {self.client.meta.endpoint_url} could not delete {len(errors)} of "
                                    f"{len(batch)} objects, the first s3://{self.bucket}/{first.get('Key')} "
                                    f"({first.get('Code')}: {first.get('Message')}): check the bucket's permissions")


def error_code(e) -> tuple[str, int]:
    """The S3 error code and HTTP status of a botocore ClientError."""
    return (e.response.get("Error", {}).get("Code", "?"),
            e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _place(uri: str) -> tuple[str, list[str]]:
    """("s3:<bucket>", the prefix's names) or ("local", the names of the real path, links resolved)."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        where, path = f"s3:{parsed.netloc}", parsed.path
    else:
        where, path = "local", os.path.realpath(parsed.path if parsed.scheme == "file" else uri)
    return where, [name for name in path.split("/") if name]


def overlaps(a: str, b: str) -> bool:
    """Whether storage URIs `a` and `b` are the same root or one lies inside the other: local paths
    after resolving links, S3 by bucket and prefix (on one endpoint, as every S3 URI of a job is)."""
    (where_a, names_a), (where_b, names_b) = _place(a), _place(b)
    shorter = min(len(names_a), len(names_b))
    return where_a == where_b and names_a[:shorter] == names_b[:shorter]


def check_apart(reads: str, writes: str, read_flag: str, write_flag: str) -> None:
    """Refuse a command that would write into what it reads, or around it: one line naming both."""
    if overlaps(reads, writes):
        depth = len(_place(writes)[1]) - len(_place(reads)[1])
        how = "is" if depth == 0 else "lies inside" if depth > 0 else "contains"
        raise RatioCnnError(f"{write_flag} {writes} {how} {read_flag} {reads}: a command never writes where it "
                            f"reads; pick a {write_flag} outside {reads}")


def open_storage(uri: str, timeout: float = 10.0) -> Storage:
    """The storage at `uri`; `timeout` bounds each S3 connect and read, in seconds."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise RatioCnnError(f"{uri!r} names no bucket: write s3://bucket/prefix")
        prefix = parsed.path.strip("/")
        if problem := key_problem(prefix, prefix=True):
            raise RatioCnnError(f"storage URI {uri!r}: its prefix {prefix!r} {problem}: write s3://bucket/prefix "
                                "with '/'-separated names, none empty, '.' or '..'")
        return S3Storage(parsed.netloc, prefix, timeout)
    if parsed.scheme == "file":
        return LocalStorage(Path(parsed.path))
    if not parsed.scheme or len(parsed.scheme) == 1:  # a plain path; urlparse reads `c:/x` as scheme `c`
        return LocalStorage(Path(uri))
    raise RatioCnnError(f"storage URI {uri!r}: use a folder path, file://… or s3://bucket/prefix")
