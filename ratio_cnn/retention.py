"""Retention: which files of old runs under `<out>/` may go, and removing them (`ratio-cnn prune`).

Runs are ranked newest first by when they finished (summary.json), else the newest heartbeat or
start of their jobs' claims, else when the study started (run.json). A Policy sorts them into tiers:

    whole   the newest keep_heavy runs (never more than are kept): nothing goes
    light   the other runs among the newest keep_last, or younger than keep_days days: their
            weights and predictions go (model.pt, predictions.csv, checkpoint*.pt)
    record  every older run: its working files go too (history.csv, data.json, and the claim.json
            of a job that finished or failed); the run keeps its record

No tier removes report.md, a figure, summary.json, run.json, a metrics.json or error.json, the
claim of a job without an outcome, or any file whose name prune does not know. Protected runs are
not touched at all, and still count among the newest: a run with a live claim, the run latest.json
names, a study that started less than RECENT_STUDY_HOURS ago and has no report yet (its jobs may
wait for a GPU before they claim anything), and a run whose times cannot be read.

Before it removes anything from a run, prune writes `<run-id>/pruned.json` (PRUNED): the tier,
the policy, every object it removes with its bytes, and "complete": false, set to true once they are
gone. A prune killed midway leaves each run with its record, report and metrics, marked as pruned;
the next prune finishes the job.
"""
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatch

from ratio_cnn.errors import RatioCnnError
from ratio_cnn.history import INDEX, RUN_RECORD
from ratio_cnn.host import JSON_MAX_BYTES, human_bytes, parse_json, utc_now
from ratio_cnn.job_folder import CLAIM, DATA, ERROR, METRICS, owner_gone
from ratio_cnn.report import REPORT
from ratio_cnn.results import LATEST, PRUNED, RATIO_FOLDER, RUN_FILE
from ratio_cnn.storage import Storage, open_storage

log = logging.getLogger(__name__)

RECENT_STUDY_HOURS = 24  # a study's jobs may wait this long in a work pool's queue before their first claim
HEAVY = ("model.pt", "predictions.csv", "checkpoint*.pt")  # of a seed folder: nearly all of a run's bytes
WORKING_SEED = ("history.csv",)  # read only to resume a job
JOB_FILE = re.compile(RATIO_FOLDER.pattern + r"([^/]+)")  # ratio-<N>/<name>
# ratio-<N>/<strategy>/<model>/seed-<s>/<name>
SEED_FILE = re.compile(RATIO_FOLDER.pattern + r"[^/]+/[^/]+/seed-[0-9]+/([^/]+)")
TIER_WORDS = {"whole": "kept whole", "light": "weights and predictions", "record": "down to its record"}


@dataclass(frozen=True)
class Policy:
    """How many runs keep what; PRUNE_DEFAULTS (config.py) holds the defaults and why."""
    keep_last: int  # the newest N runs keep their working files
    keep_days: float | None  # and so do runs younger than this many days
    keep_heavy: int  # the newest N of those keep their weights and predictions too

    def __post_init__(self) -> None:
        for flag, value in (("--keep-last", self.keep_last), ("--keep-days", self.keep_days),
                            ("--keep-heavy", self.keep_heavy)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise RatioCnnError(f"{flag} must be 0 or more, got {value}")
        if self.keep_last == 0 and self.keep_days is None:
            raise RatioCnnError("--keep-last 0 without --keep-days would strip every run: keep at least one with "
                                "--keep-last, or give --keep-days")


@dataclass
class Run:
    id: str
    objects: dict[str, int]  # key within the run folder -> bytes
    time: datetime | None = None  # what ranks it
    protected: str | None = None  # why prune leaves it alone
    tier: str = ""
    removes: dict[str, int] = field(default_factory=dict)  # key within the run folder -> bytes


@dataclass
class Pruning:
    """What one prune did (or, in a dry run, would do): every run, newest first."""
    runs: list[Run]
    kept_heavy: int  # how many of the newest runs keep their weights
    dry_run: bool

    def summary(self) -> str:
        touched = [r for r in self.runs if r.removes]
        objects = sum(len(r.removes) for r in touched)
        size = sum(sum(r.removes.values()) for r in touched)
        tiers = {t: sum(1 for r in touched if r.tier == t) for t in ("light", "record")}
        parts = [f"{'would remove' if self.dry_run else 'removed'} {human_bytes(size)} in {objects} objects from "
                 f"{len(touched)} runs ({tiers['light']} weights and predictions only, "
                 f"{tiers['record']} down to their record)",
                 f"kept whole: {sum(1 for r in self.runs if r.tier == 'whole' and not r.protected)} "
                 f"(newest {self.kept_heavy} with weights)"]
        if done := sum(1 for r in self.runs if r.tier in ("light", "record") and not r.removes and not r.protected):
            parts.append(f"nothing left to remove: {done}")
        if protected := [r for r in self.runs if r.protected]:
            parts.append("protected: " + ", ".join(f"run {r.id} ({r.protected})" for r in protected))
        lines = ["; ".join(parts)]
        if self.dry_run:
            width = max((len(r.id) for r in self.runs), default=0)
            for r in self.runs:
                if r.protected:
                    what = f"protected ({r.protected})"
                elif r.removes:
                    what = (f"{TIER_WORDS[r.tier]}: {human_bytes(sum(r.removes.values()))} in "
                            f"{len(r.removes)} objects")
                else:
                    what = TIER_WORDS[r.tier] + ("" if r.tier == "whole" else ": nothing left to remove")
                lines.append(f"  {r.id.ljust(width)}  {what}")
        return "\n".join(lines)


def prune(out_uri: str, policy: Policy, dry_run: bool = False) -> Pruning:
    """Sort the runs under `out_uri` into tiers and remove what their tier lets go (nothing when dry_run)."""
    out = open_storage(out_uri)
    runs = find_runs(out)
    latest = latest_run(out)
    for run in runs:
        run.protected = run.protected or ("latest.json" if run.id == latest else None)
    ranked = sorted((r for r in runs if r.time), key=lambda r: r.time, reverse=True)
    young = sum(1 for r in ranked if policy.keep_days is not None and age(r.time) < policy.keep_days * 86400)
    kept = max(policy.keep_last, young)  # both are prefixes of the newest-first ranking
    heavy = min(policy.keep_heavy, kept)
    for rank, run in enumerate(ranked):
        run.tier = "whole" if rank < heavy else "light" if rank < kept else "record"
        if not run.protected:
            run.removes = removable(run.objects, run.tier)
    if not dry_run:
        for run in reversed(ranked):  # oldest first: a prune that is stopped has spared the newest
            if run.removes:
                remove(out, run, policy)
    untimed = [r for r in runs if not r.time]
    return Pruning(ranked + untimed, heavy, dry_run)


def find_runs(out: Storage) -> list[Run]:
    """Every run folder under `out` with its objects, time and, when it must not be touched, why."""
    by_run: dict[str, dict[str, int]] = {}
    top = set()
    for key, (_, size) in out.list_objects().items():
        run_id, slash, rest = key.partition("/")
        if slash:
            by_run.setdefault(run_id, {})[rest] = size
        else:
            top.add(key)
    runs = [Run(run_id, objects) for run_id, objects in sorted(by_run.items()) if is_run(objects)]
    if not runs and not top & {INDEX, LATEST}:
        if top & {RUN_FILE, RUN_RECORD} or any(RATIO_FOLDER.fullmatch(f"{k}/") for k in by_run):
            raise RatioCnnError(f"{out.uri} is one run folder, not a results folder: point --out at the folder above "
                                "it, where `ratio-cnn train --out` or the study writes")
        raise RatioCnnError(f"{out.uri} is not a ratio-cnn results folder (no <run-id>/ratio-<N>/ folders): point "
                            "--out at where `ratio-cnn train --out` or the study writes")
    for run in runs:
        read_times(out, run)
    return runs


def is_run(objects: dict[str, int]) -> bool:
    """A folder a study or `ratio-cnn train` wrote; pruned.json and the jobs' outcomes still tell one
    after its claims went."""
    return any(key in (RUN_FILE, RUN_RECORD, PRUNED)
               or ((m := JOB_FILE.fullmatch(key)) and m[2] in (CLAIM, METRICS, ERROR)) for key in objects)


def read_json(out: Storage, key: str) -> dict | None:
    """A JSON object ratio-cnn wrote; None (and a warning) when it is damaged. Storage errors are raised."""
    try:
        value = parse_json(out.get(key, JSON_MAX_BYTES))
    except ValueError as e:
        log.warning("%s cannot be read (%s)", out.describe(key), e)
        return None
    return value if isinstance(value, dict) else None


def parse_time(value: object) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def read_times(out: Storage, run: Run) -> None:
    """The run's time, and whether a live job, a damaged claim or a study waiting for its jobs protects it."""
    finished = started = None
    if RUN_RECORD in run.objects and (record := read_json(out, f"{run.id}/{RUN_RECORD}")):
        finished = parse_time(record.get("finished"))
    beats = []
    for key in sorted(run.objects):
        if (m := JOB_FILE.fullmatch(key)) and m[2] == CLAIM:
            claim = read_json(out, f"{run.id}/{key}")
            if claim is None:  # whose it is and whether its job lives cannot be told
                run.protected = run.protected or f"{key} cannot be read"
                continue
            if claim.get("state") == "running" and not owner_gone(claim):
                run.protected = "running"
            beats += [parse_time(claim.get(k)) for k in ("heartbeat", "started")]
    if RUN_FILE in run.objects and (meta := read_json(out, f"{run.id}/{RUN_FILE}")):
        started = parse_time(meta.get("started"))
        if started and REPORT not in run.objects and age(started) < RECENT_STUDY_HOURS * 3600:
            run.protected = run.protected or f"started {started.isoformat()[:16]}, no report yet"
    run.time = finished or max(filter(None, beats), default=None) or started
    if run.time is None:
        run.protected = run.protected or "no readable time"


def age(stamp: datetime) -> float:
    """Seconds since `stamp`."""
    return (datetime.now(timezone.utc) - stamp).total_seconds()


def latest_run(out: Storage) -> str | None:
    """The run latest.json names; a latest.json that cannot be read stops the prune."""
    if not out.exists(LATEST):
        return None
    latest = read_json(out, LATEST)
    if latest is None or not isinstance(latest.get("run_id"), str):
        raise RatioCnnError(f"{out.describe(LATEST)} does not name a run: prune cannot tell which run to spare; "
                            "write it again (the study does, after a complete run) or remove it")
    return latest["run_id"]


def removable(objects: dict[str, int], tier: str) -> dict[str, int]:
    """The objects of a run its tier lets go."""
    if tier == "whole":
        return {}
    finished = {key.split("/")[0] for key in objects if (m := JOB_FILE.fullmatch(key)) and m[2] in (METRICS, ERROR)}
    removes = {}
    for key, size in objects.items():
        if m := SEED_FILE.fullmatch(key):
            heavy = any(fnmatch(m[2], pattern) for pattern in HEAVY)
            goes = heavy or (tier == "record" and m[2] in WORKING_SEED)
        elif m := JOB_FILE.fullmatch(key):
            goes = tier == "record" and (m[2] == DATA or (m[2] == CLAIM and key.split("/")[0] in finished))
        else:
            goes = False
        if goes:
            removes[key] = size
    return removes


def remove(out: Storage, run: Run, policy: Policy) -> None:
    """Mark the run as pruned (with all it loses, this time and before), then remove the objects."""
    marker = f"{run.id}/{PRUNED}"
    before = (read_json(out, marker) if PRUNED in run.objects else None) or {}
    earlier = before.get("objects") if isinstance(before.get("objects"), dict) else {}
    objects = {k: v for k, v in earlier.items() if isinstance(v, int)} | run.removes
    marked = {"tier": "record" if "record" in (run.tier, before.get("tier")) else run.tier, "at": utc_now(),
              "policy": asdict(policy), "complete": False, "bytes": sum(objects.values()),
              "objects": dict(sorted(objects.items()))}
    out.put(marker, json.dumps(marked, indent=2).encode())
    out.delete_many([f"{run.id}/{key}" for key in sorted(run.removes)])
    out.put(marker, json.dumps(marked | {"complete": True}, indent=2).encode())
    log.info("run %s: removed %s in %d objects (%s)", run.id, human_bytes(sum(run.removes.values())),
             len(run.removes), TIER_WORDS[run.tier])
