"""S3 storage against endpoints that misbehave for real (tests/faults.py): every wait is bounded,
every transient fault is a StorageUnavailable that names the endpoint and the object, and
neither an error, a deadline nor Ctrl-C waits for transfers still in flight.

Time bounds are behaviour bounds with wide margins, not benchmarks: with timeout=1 a call makes
3 tries of 1 s (2 s for a PUT, which first waits 1 s for "100 Continue") with under 3 s of
back-off between them, so one call fails in 3-9 s.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # servers that hang, cut and drop: fault injection

from faults import DROP, FORWARD, HANG, CuttingProxy, SilentServer
from ratio_cnn.errors import StorageUnavailable
from ratio_cnn.storage import open_storage

BUCKET = "faults"
ONE_CALL = 15  # seconds: 3 tries of 1-2 s plus back-off is 3-9 s
FAKE_KEYS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def silent(monkeypatch):
    with SilentServer() as server:
        for k, v in {**FAKE_KEYS, "AWS_ENDPOINT_URL": server.url}.items():
            monkeypatch.setenv(k, v)
        yield server


@pytest.fixture
def images(s3):
    """80 small objects in moto; the client talks to moto directly."""
    s3.create_bucket(Bucket=BUCKET)
    keys = [f"img/{i:03d}.jpg" for i in range(80)]
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=f"ds/{key}", Body=key.encode() * 20)
    return keys


def through(proxy, monkeypatch, timeout=1.0):
    """Storage at s3://faults/ds that reaches moto only through the proxy."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    return open_storage(f"s3://{BUCKET}/ds", timeout=timeout)


def timed(call):
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as failure:
        call()
    return time.monotonic() - started, str(failure.value)


# -----------------------------------------------------------------------------
# an endpoint that accepts connections and never answers


@pytest.mark.parametrize("call", ["get", "exists", "list", "put"])
def test_silent_endpoint_fails_in_bounded_time(silent, call):
    storage = open_storage("s3://somebucket/ds", timeout=1)
    action = {"get": lambda: storage.get("img/1.jpg"), "exists": lambda: storage.exists("img/1.jpg"),
              "list": lambda: storage.list("img/"), "put": lambda: storage.put("img/1.jpg", b"x")}[call]
    seconds, message = timed(action)
    assert seconds < ONE_CALL, seconds
    assert silent.url in message and "s3://somebucket/ds/img" in message and "did not answer within 1 s" in message
    assert "\n" not in message


def test_get_many_fails_after_one_call_not_one_per_round(silent):
    # 80 objects on 8 workers are 10 rounds: waiting for each round (what a ThreadPoolExecutor does) takes >= 30 s
    storage = open_storage("s3://somebucket/ds", timeout=1)
    seconds, message = timed(lambda: storage.get_many([f"img/{i:03d}.jpg" for i in range(80)], workers=8))
    assert seconds < ONE_CALL, seconds
    assert silent.url in message and "s3://somebucket/ds/img/" in message


def test_put_many_stops_at_the_deadline(silent):
    storage = open_storage("s3://somebucket/ds")  # default timeout: only the deadline ends it early
    seconds, message = timed(lambda: storage.put_many({f"out/{i}.json": b"{}" for i in range(20)},
                                                      deadline=time.monotonic() + 1))
    assert seconds < 3, seconds
    assert "only 0 of 20 objects written at s3://somebucket/ds within the 1.0 s allowed" in message


def test_ctrl_c_during_get_many_exits_at_once(silent):
    script = ("import sys; from ratio_cnn.storage import open_storage\n"
              "storage = open_storage('s3://somebucket/ds')\n"
              "print('fetching', flush=True)\n"
              "storage.get_many([f'img/{i}.jpg' for i in range(80)])\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ.copy())
    assert proc.stdout.readline() == "fetching\n"
    time.sleep(0.5)  # the downloads are in flight, all stalled
    proc.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    proc.wait(timeout=30)
    seconds = time.monotonic() - interrupted
    assert seconds < 2, seconds
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr.read()


# -----------------------------------------------------------------------------
# a proxy in front of moto that cuts, drops, holds or refuses answers


def test_get_many_stops_at_the_deadline_mid_download(images, monkeypatch):
    stalled = set(images[::16])  # 5 of 80 never answer
    rule = lambda method, path: HANG if any(key in path for key in stalled) else FORWARD
    with CuttingProxy(os.environ["AWS_ENDPOINT_URL"], rule) as proxy:
        storage = through(proxy, monkeypatch, timeout=10)
        seconds, message = timed(lambda: storage.get_many(images, workers=8, deadline=time.monotonic() + 2))
    assert seconds < 4, seconds
    assert "only 75 of 80 objects fetched at s3://faults/ds within the 2.0 s allowed" in message


def test_response_cut_mid_body_is_unavailable(images, monkeypatch):
    with CuttingProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        storage = through(proxy, monkeypatch)
        _, message = timed(lambda: storage.get("img/007.jpg"))
        assert "dropped the connection while trying to read s3://faults/ds/img/007.jpg" in message
        assert proxy.url in message
        _, message = timed(lambda: storage.get_many(images))
        assert "dropped the connection" in message
        _, message = timed(lambda: storage.list())  # a listing cut short: botocore calls it a 500
        assert "could not list s3://faults/ds:" in message


def test_short_outage_is_ridden_through_and_a_long_one_is_unavailable(images, monkeypatch):
    with CuttingProxy(os.environ["AWS_ENDPOINT_URL"], rule=lambda method, path: FORWARD) as proxy:
        storage = through(proxy, monkeypatch)
        proxy.fail_next(2)  # the third try gets through
        storage.put("out/a.json", b"1")
        assert [m for m, _ in proxy.requests] == ["PUT"] * 3 and storage.get("out/a.json") == b"1"

        proxy.outage(5)  # longer than 3 tries and their back-off
        seconds, message = timed(lambda: storage.put("out/b.json", b"2"))
        assert seconds < ONE_CALL
        assert ("unavailable or throttling (ServiceUnavailable, HTTP 503) and could not write "
                "s3://faults/ds/out/b.json: retry later") in message
        time.sleep(max(0.0, 5.5 - seconds))
        storage.put("out/b.json", b"2")  # what the flow's retry does once the outage is over
        assert storage.get("out/b.json") == b"2"


def test_create_whose_answer_was_lost_still_knows_it_won(s3, monkeypatch):
    s3.create_bucket(Bucket=BUCKET)
    dropped = []

    def drop_first_put(method, path):
        if method == "PUT" and path.endswith("/claim") and not dropped:
            dropped.append(path)
            return DROP
        return FORWARD

    with CuttingProxy(os.environ["AWS_ENDPOINT_URL"], drop_first_put) as proxy:
        storage = through(proxy, monkeypatch)
        assert storage.create("job/claim", b"owner: host-1 pid 11")  # took effect, answer lost, retried: 412
        assert dropped and [m for m, _ in proxy.requests[:2]] == ["PUT", "PUT"]
        assert not storage.create("job/claim", b"owner: host-2 pid 22")
        assert storage.get("job/claim") == b"owner: host-1 pid 11"
