"""Shared fixtures: a small synthetic dataset, a moto S3 server over real HTTP, a real Prefect server, the CLI."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import torch

from prefect_server import serve
from ratio_cnn.synth import make_synthetic_dataset

# An xdist worker ignores SIGINT, and a process started with SIGINT ignored never turns Ctrl-C into
# KeyboardInterrupt: the tests that press Ctrl-C on a job need the worker's children to hear it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# `make test` runs two pytest-xdist workers: each gets its share of the cores for torch, here and in the
# processes it starts, so that the two never run more threads than there are cores between them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Small enough for a few CPU batches, large enough for every split to hold both labels.
SMALL = dict(malignant=24, benign=80)
SMALL_SPLITS = ["--train-malignant", "12", "--val-malignant", "6", "--val-benign", "20",
                "--test-malignant", "6", "--test-benign", "20"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start in {timeout}s")


def start_moto(env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    wait_for_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto's S3 server on a free loopback port: boto3 reaches it over HTTP like MinIO or AWS."""
    proc, endpoint = start_moto()
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` for the whole session (tests/prefect_server.py)."""
    yield from serve(tmp_path_factory.mktemp("prefect"), free_port())


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    """Environment for boto3 pointed at moto, and a client to make buckets with."""
    env = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return boto3.client("s3", endpoint_url=moto_endpoint)


@pytest.fixture(scope="session", autouse=True)
def private_folders(tmp_path_factory):
    """Jobs cache images under RATIO_CNN_CACHE and Prefect keeps its database under PREFECT_HOME: the
    tests' own folders (one per xdist worker), never the user's ~/.cache or ~/.prefect."""
    os.environ["RATIO_CNN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # a new database, two busy cores


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "small"
    make_synthetic_dataset(str(path), **SMALL, seed=1)
    return path


def pytest_collection_modifyitems(items):
    """A test that uses the moto S3 server is slow: a real server over HTTP. The tests on the real Prefect
    server run on one xdist worker (`--dist loadgroup`), so that the session starts one server, not two."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "moto_endpoint" in fixtures:
            item.add_marker(pytest.mark.slow)
        if "prefect_server" in fixtures:
            item.add_marker(pytest.mark.xdist_group("prefect_server"))


def one_error_line(result: subprocess.CompletedProcess, *names: str) -> str:
    """The CLI failed as a user error should: exit 2, no traceback, one last line naming each of `names`."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ratio-cnn: error:"), last
    for name in names:
        assert name in last, f"{name!r} not in: {last}"
    return last


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real `ratio-cnn` command, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "ratio_cnn.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=600)
