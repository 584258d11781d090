"""A month of nights (tests/nights.py) on moto S3 and a real Prefect server: the worker's cache stays
under its limit while the data grows, the bucket keeps what the retention policy says, the index's
trend figure shows every night, and the planted regression of night 20 emits one event."""
import json
import os
import subprocess
import sys
import time

import pytest

import nights
from ratio_cnn import history
from ratio_cnn.storage import open_storage
from prefect_server import REPO

pytestmark = pytest.mark.slow


def test_thirty_nights_stay_bounded_keep_their_history_and_alert_once(prefect_server, s3, tmp_path):
    s3.create_bucket(Bucket="nights")
    out, data, cache, record = "s3://nights/results", "s3://nights/data", tmp_path / "cache", tmp_path / "record.json"
    env = prefect_server.env() | {k: os.environ[k] for k in os.environ if k.startswith("AWS_")}
    done = subprocess.run([sys.executable, str(REPO / "tests" / "nights.py"), out, data, str(cache), str(record)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-5000:]

    # The worker: never over its limit, though the four datasets together are not under it.
    sizes = json.loads(record.read_text())["cache_bytes"]
    assert max(sizes) <= nights.CACHE_MAX_GB * 1e9, sizes
    assert len(list((cache / "decoded").iterdir())) < len(nights.GROWTH)  # the oldest sets were evicted

    # The bucket: every night's record stays; only the newest keep their working files and predictions.
    results = open_storage(out)
    keys = set(results.list())
    runs = [f"night-{n:02d}" for n in range(1, nights.NIGHTS + 1)]
    for run in runs:
        assert {f"{run}/report.md", f"{run}/summary.json", f"{run}/ratio-1/metrics.json",
                f"{run}/ratio-1/none/simple/seed-0/metrics.json"} <= keys, run
    heavy = [r for r in runs if f"{r}/ratio-1/none/simple/seed-0/predictions.csv" in keys]
    working = [r for r in runs if f"{r}/ratio-1/none/simple/seed-0/history.csv" in keys]
    assert heavy == runs[-nights.RETENTION["keep_heavy"]:]
    assert working == runs[-nights.RETENTION["keep_last"]:]

    # The index: thirty nights, the data's growth marked, the planted night flagged.
    records = history.run_records(results)
    assert [r["run_id"] for r in records] == runs
    trends = history.trend_series(records)
    assert all(len(trends.points[m]["1:1"]) == nights.NIGHTS for m in history.HEADLINE)
    assert trends.data_changes == [night - 1 for night in nights.GROWTH if night > 1]
    assert trends.regressions == [nights.PLANTED_NIGHT - 1]
    assert results.get(history.TRENDS)[:8] == b"\x89PNG\r\n\x1a\n"
    index = results.get(history.INDEX).decode()
    assert all(f"`{run}`" in index for run in runs) and index.count("⚠ regression") == 1

    # The alert: one event, for night 20 against night 19, naming the metrics that dropped.
    query = {"filter": {"event": {"name": ["ratio-cnn.regression"]},
                        "any_resource": {"id_prefix": ["ratio-cnn.run.night-"]}}, "limit": 50}
    deadline = time.monotonic() + 60  # the server stores events a moment after they arrive
    while not (events := prefect_server.post("/events/filter", query)["events"]) and time.monotonic() < deadline:
        time.sleep(1)
    assert [e["payload"]["run_id"] for e in events] == [f"night-{nights.PLANTED_NIGHT}"]
    payload = events[0]["payload"]
    assert payload["compared_with"] == f"night-{nights.PLANTED_NIGHT - 1}"
    assert "roc_auc" in {r["metric"] for r in payload["regressions"]}
