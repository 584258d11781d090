"""Run one measurement in a fresh process: its own imports, torch threads and peak memory.

    python -m bench.isolated MODULE:FUNCTION KWARGS_JSON RESULT_JSON

The function's keyword arguments and its return value are JSON; the result file adds the
call's wall time, the process's peak resident memory (ru_maxrss), the resident memory it had
before the call (Python, torch and the libraries imported) and its torch thread count.
"""
import importlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent


def run_isolated(function: Callable, threads: int, env: dict | None = None, **kwargs) -> dict:
    """function(**kwargs) in a new process with `threads` torch threads."""
    with tempfile.TemporaryDirectory(prefix="ratio-cnn-bench-") as tmp:
        result = Path(tmp) / "result.json"
        subprocess.run([sys.executable, "-m", "bench.isolated", f"{function.__module__}:{function.__name__}",
                        json.dumps(kwargs), str(result)],
                       env={**os.environ, **(env or {}), "OMP_NUM_THREADS": str(threads)}, cwd=ROOT, check=True)
        return json.loads(result.read_text())


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    target, kwargs, result = sys.argv[1:]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    module, name = target.split(":")
    function = getattr(importlib.import_module(module), name)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    before = resident_bytes()
    started = time.perf_counter()
    value = function(**json.loads(kwargs))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    Path(result).write_text(json.dumps({"result": value, "seconds": seconds, "peak_rss_bytes": peak,
                                        "rss_before_bytes": before, "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
