"""The bench's data: copies of the synthetic dataset at 4x and 16x, and a local moto S3 server."""
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import boto3
import pandas as pd

from ratio_cnn.data import MANIFEST
from ratio_cnn.storage import open_storage

S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def scaled_copy(base: Path, folder: Path, k: int) -> int:
    """`base` k times under new names, with one manifest listing them all; the number of images.

    Hard links, not new renders: a linked JPEG costs the same to list, read and decode, and
    16x the study's size takes seconds instead of eight minutes of synth.
    """
    manifest = pd.read_csv(base / MANIFEST)
    rows = []
    for copy in range(k):
        for name, label in zip(manifest["image"], manifest["label"]):
            linked = f"copy-{copy:02d}/{name}"
            (folder / linked).parent.mkdir(parents=True, exist_ok=True)
            os.link(base / name, folder / linked)
            rows.append((linked, label))
    pd.DataFrame(rows, columns=["image", "label"]).to_csv(folder / MANIFEST, index=False)
    return len(rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def moto_server():
    """moto's S3 server on a free loopback port, with boto3 pointed at it (os.environ, so child
    processes too) while the context lasts."""
    port = _free_port()
    saved = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto's S3 server did not start on port {port}")
            time.sleep(0.1)
        os.environ.update(S3_ENV, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        proc.terminate()
        proc.wait(timeout=10)


def upload(folder: Path, uri: str) -> tuple[int, float]:
    """Every file of `folder` to `uri` (its bucket made first): objects written and seconds taken."""
    boto3.client("s3").create_bucket(Bucket=uri.removeprefix("s3://").split("/")[0])
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    started = time.perf_counter()
    open_storage(uri).put_many(files)
    return len(files), time.perf_counter() - started
