"""Alerts the Prefect way, against a real `prefect server start`: the report task of `ratio-study` emits
`ratio-cnn.regression` (and `ratio-cnn.ratio.failed`) with the run, the metrics and the changes as
payload, and deploy/automations.yaml, applied as docs/operations.md says, turns them into a
notification that reaches a webhook (a local HTTP server standing in for Slack or email).
"""
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from runs import noisy_logits
from runs import write_job
from prefect_server import REPO, Server

pytestmark = pytest.mark.slow


class Webhook:
    """A local HTTP endpoint that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, text: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for body in self.received:
                if text in json.dumps(body):
                    return body
            time.sleep(0.5)
        raise AssertionError(f"no notification with {text!r} in {timeout} s; received {self.received}")


def make_runs(out: Path) -> None:
    """`good` then `bad`: same data and configuration, `bad`'s models rank test images worse, and its
    1:5 job failed."""
    for run, separation in (("good", 4.0), ("bad", 0.3)):
        for ratio in (1, 2):
            write_job(out / run, ratio, {s: (noisy_logits(s, 4.0), noisy_logits(10 + s, separation)) for s in (0, 1)})
    (out / "bad" / "run.json").write_text(json.dumps({"run_id": "bad", "ratios": [1, 2, 5]}))
    (out / "bad" / "ratio-5").mkdir()
    (out / "bad" / "ratio-5" / "error.json").write_text(json.dumps({"state": "failed", "error": "planted failure"}))


def events(server: Server, name: str) -> list[dict]:
    found = server.post("/events/filter", {"filter": {"event": {"name": [name]}}, "limit": 50})
    return found["events"]


def test_regression_and_failure_events_reach_the_automation_webhook(prefect_server, tmp_path):
    server, hook = prefect_server, Webhook()
    env = server.env()
    block = subprocess.run(
        [str(Path(os.sys.executable)), "-c",
         "import sys; from prefect.blocks.notifications import CustomWebhookNotificationBlock as B; "
         "b = B(name='ratio-cnn', url=sys.argv[1], json_data={'text': '{{subject}}\\n{{body}}'}, allow_private_urls=True); "
         "print(b.save('ratio-cnn-alerts-test', overwrite=True))", hook.url],
        env=env, capture_output=True, text=True, timeout=120, check=True).stdout.split()[-1]
    applied = tmp_path / "automations.yaml"
    applied.write_text(subprocess.run(["envsubst", "$RATIO_CNN_NOTIFY_BLOCK_ID"], input=(REPO / "deploy" /
                                      "automations.yaml").read_text(), env={"RATIO_CNN_NOTIFY_BLOCK_ID": block},
                                      capture_output=True, text=True, check=True).stdout)
    server.prefect("automation", "create", "--from-file", str(applied))
    assert {"ratio-cnn regression", "ratio-cnn ratio failed"} <= {
        a["name"] for a in server.post("/automations/filter", {})}

    out = tmp_path / "out"
    make_runs(out)
    # The flow's own report task, in a flow run on the server, for each run in turn.
    script = ("import sys; from prefect import flow; from flows.study import build_report\n"
              "@flow(name='report-only')\n"
              "def report_only(out: str, run_id: str):\n    return build_report(out, run_id)\n"
              "for run_id in sys.argv[2:]:\n    report_only(sys.argv[1], run_id)\n")
    subprocess.run([os.sys.executable, "-c", script, str(out), "good", "bad"], env=env, cwd=REPO, check=True,
                   timeout=300, capture_output=True)

    deadline = time.monotonic() + 60
    while not (regressions := events(server, "ratio-cnn.regression")) and time.monotonic() < deadline:
        time.sleep(1)
    assert len(regressions) == 1, regressions  # `good` had nothing to compare with
    payload = regressions[0]["payload"]
    assert payload["run_id"] == "bad" and payload["compared_with"] == "good"
    assert payload["report"].endswith("bad/report.md")
    dropped = {(r["cell"], r["metric"]) for r in payload["regressions"]}
    assert ("1:1 none/simple", "roc_auc") in dropped and ("1:2 none/simple", "roc_auc") in dropped
    for r in payload["regressions"]:
        assert r["current"] < r["previous"] and r["high"] < 0 and r["low"] <= r["change"] <= r["high"]
    assert regressions[0]["resource"]["prefect.resource.id"] == "ratio-cnn.run.bad"
    related = {r["prefect.resource.role"] for r in regressions[0]["related"]}
    assert {"flow-run", "task-run"} <= related  # emitted inside the run: the UI links them

    failed = events(server, "ratio-cnn.ratio.failed")
    assert [e["payload"]["ratio"] for e in failed] == [5.0]
    assert failed[0]["payload"]["reason"] == "planted failure"

    index = server.post("/artifacts/latest/filter", {"artifacts": {"key": {"any_": ["ratio-study-index"]}}})[0]
    assert "`bad`" in index["data"] and "](data:image/png;base64,iVBORw0KGgo" in index["data"]  # the trends, inline

    note = hook.wait_for("regression in run bad")
    print(note["text"])  # docs/operations.md shows one
    assert "roc_auc" in note["text"] and "against good" in note["text"]
    assert "planted failure" in hook.wait_for("ratio 1:5 failed")["text"]
