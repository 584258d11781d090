"""A real `prefect server start` for the tests that need one (tests/test_deploy.py, test_alerts.py,
test_nights.py), and the processes around it: one server per session (conftest.py's `prefect_server`).

SQLite in a temporary PREFECT_HOME, a free loopback port, the scheduler off so that no nightly run
starts by itself; every process a test starts is stopped when it ends, passed or failed.
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")


# -----------------------------------------------------------------------------
# processes


def base_env() -> dict:
    """This environment without any Prefect or AWS settings of the developer's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    return env | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (a flow run's process may start a session of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process, its group and everything it started; SIGKILL what is left."""
    if proc.poll() is not None:
        return
    pids = [proc.pid, *descendants(proc.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for pid in pids[1:]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def start(args: list[str], env: dict, log: Path, cwd: Path = REPO) -> subprocess.Popen:
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


class Server:
    def __init__(self, api_url: str, home: Path, log: Path) -> None:
        self.api_url, self.home, self.log = api_url, home, log

    def env(self, **extra: str) -> dict:
        """The environment of a Prefect client of this server (its own PREFECT_HOME)."""
        return base_env() | {"PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home / "client")} | extra

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.api_url}{path}", timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict) -> list | dict:
        request = urllib.request.Request(f"{self.api_url}{path}", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def prefect(self, *args: str, env: dict | None = None, timeout: float = 180) -> str:
        """Run the `prefect` CLI as an operator would; fail with its output if it fails."""
        result = subprocess.run([PREFECT, "--no-prompt", *args], env=env or self.env(), cwd=REPO,
                                capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"prefect {' '.join(args)} exited {result.returncode}:\n{output}"
        return output


def serve(home: Path, port: int):
    """Start the server on `port`, its files under `home`; yield a Server; stop it."""
    api_url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    env = base_env() | {"PREFECT_HOME": str(home / "server"), "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
                        "PREFECT_UI_ENABLED": "false"}
    proc = start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-scheduler", "--no-ui"],
                 env, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server not healthy after 120 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield Server(api_url, home, log)
    finally:
        stop(proc)
