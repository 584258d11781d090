"""This machine: the UTC clock, atomic file writes, and whether a process still lives.

Helpers that several modules need and that know nothing of training or storage layouts.
"""
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path


def utc_now() -> str:
    """The time as ISO 8601 in UTC, to the microsecond: stamps sort as text in the order they were taken."""
    return datetime.now(timezone.utc).isoformat()


def age_seconds(stamp: str) -> float:
    """Seconds since a `utc_now()` stamp (or any ISO 8601 time with its offset)."""
    return (datetime.now(timezone.utc) - datetime.fromisoformat(stamp)).total_seconds()


def write_atomically(path: Path, data: bytes) -> None:
    """Write beside `path` under a unique hidden name, then rename: readers see the old file or the new one."""
    tmp = path.with_name(f".tmp-{path.name[:200]}-{secrets.token_hex(4)}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def process_start(pid: int | str = "self") -> str:
    """When a process started, in clock ticks since boot: tells a pid from a later process that reused it.

    Linux only (field 22 of /proc/<pid>/stat); empty where it cannot be read.
    """
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_alive(pid: int, start: str) -> bool:
    """Whether process `pid`, started at `start` (from process_start; empty: any), still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = process_start(pid)
    return not start or not now or now == start
