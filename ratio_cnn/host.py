"""This machine: the UTC clock, atomic file writes, whether a process still lives, JSON read within bounds,
byte counts as a person reads them.

Helpers that several modules need and that know nothing of training or storage layouts.
"""
import json
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


JSON_MAX_BYTES = 64 * 2**20  # far above any JSON ratio-cnn writes (a job's metrics.json: tens of kB)
JSON_MAX_DEPTH = 32  # ratio-cnn's own JSON nests 7 levels at most


def parse_json(raw: bytes, finite: bool = True) -> object:
    """JSON as ratio-cnn writes it, read within bounds: ValueError saying why for invalid JSON, more
    than JSON_MAX_BYTES, nesting deeper than JSON_MAX_DEPTH (never a RecursionError), or, when `finite`,
    NaN or Infinity (json.loads accepts them; a job's own metrics may hold them, the report's may not)."""
    def refuse(constant):
        raise ValueError(f"non-finite number {constant}")

    if len(raw) > JSON_MAX_BYTES:
        raise ValueError(f"{len(raw):,} bytes, more than the {JSON_MAX_BYTES:,} allowed")
    try:
        value = json.loads(raw, parse_constant=refuse if finite else None)
    except RecursionError:
        value = None  # deeper than Python's recursion limit: certainly deeper than allowed
    else:
        deepest, todo = 0, [(value, 1)]
        while todo and deepest <= JSON_MAX_DEPTH:
            item, depth = todo.pop()
            if isinstance(item, (dict, list)):
                deepest = max(deepest, depth)
                todo.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
        if deepest <= JSON_MAX_DEPTH:
            return value
    raise ValueError(f"nested deeper than the {JSON_MAX_DEPTH} levels allowed")


def human_bytes(n: float) -> str:
    """512 B, 3.4 MB, 1.2 GB: decimal units, as disks and object stores bill them."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
