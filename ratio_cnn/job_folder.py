"""One job's folder, <out>/<run-id>/ratio-<N>/, its one owner, and what is written there.

    claim.json                    who owns the folder: host, pid, flow run, start, heartbeat, state, data digests
    data.json                     what the job reads (provenance.py), written before training; a resume must match it
    <strategy>/<model>/seed-<s>/  history.csv, predictions.csv, model.pt (bf16 weights, as --save-models says),
                                  then metrics.json (the seed is done)
                                  checkpoint.pt while the seed trains (removed when it is done);
                                  checkpoint-unloadable-<time>.pt: one that could not be loaded, kept aside
    <strategy>/<model>/           figures of the variant, written once all its seeds are done
    metrics.json                  written last: the job finished
    error.json                    written instead when it failed or was stopped

Ownership: a job claims the folder with an exclusive create (a conditional put on S3)
before it trains, and refreshes the claim's heartbeat while it runs. A second job stops at
once, naming the owner; a claim whose owner is gone (same host, dead pid), whose heartbeat
is older than STALE_SECONDS, or that recorded a failure, is taken over by `--resume` with a
compare-and-swap, so two resumers cannot both win. Only the owner writes, so metrics.json
and error.json never both describe one job.

Outputs of a seed are written to a local staging folder first (under the cache folder, else
the system's temporary folder; one per job, named after its storage path) and uploaded from
there; if the upload fails they stay staged, and a resumed job on this machine uploads them
without training again. Temp files of writes that were killed (local storage) are removed when
a job resumes the folder and when it finishes. Whatever an earlier attempt left that cannot be
read (a damaged seed's outputs, staged files, a checkpoint) is logged and made again, never trusted.
"""
import io
import json
import logging
import os
import platform
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import pandas as pd

from ratio_cnn import provenance
from ratio_cnn.config import OPERATIONAL
from ratio_cnn.errors import RatioCnnError, StorageUnavailable, Terminated
from ratio_cnn.host import (JSON_MAX_BYTES, age_seconds, parse_json, process_alive, process_start, utc_now,
                            write_atomically)
from ratio_cnn.stats import METRICS as METRIC_NAMES
from ratio_cnn.storage import Storage

log = logging.getLogger(__name__)

CLAIM, METRICS, ERROR, DATA = "claim.json", "metrics.json", "error.json", "data.json"
CHECKPOINT = "checkpoint.pt"
SEED_FILES = ("history.csv", "predictions.csv")  # then the seed's metrics.json; model.pt when its weights are kept
WEIGHTS = "model.pt"
HEARTBEAT_SECONDS = 20  # how often a running job refreshes its claim
STALE_SECONDS = 120  # a claim not refreshed for this long belongs to a job that is gone
UPLOAD_RETRIES = (2, 4, 8, 16, 30)  # seconds between attempts at writing outputs: rides out a minute-long outage


def owner_gone(claim: dict) -> bool:
    """The claim's job is dead: its pid is gone on this host, or its heartbeat is stale."""
    owner = claim.get("owner", {})
    if owner.get("host") == platform.node() and isinstance(owner.get("pid"), int):
        if not process_alive(owner["pid"], owner.get("process_start", "")):
            return True
    try:
        return age_seconds(claim["heartbeat"]) > STALE_SECONDS
    except (KeyError, TypeError, ValueError):
        return True


def _slug(uri: str) -> str:
    """A folder name for a storage path."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in uri)[-150:]


class FolderBusy(RatioCnnError):
    """Another job owns the folder and looks alive: the flow retries later (it may finish or die)."""


class LostClaim(RatioCnnError):
    """Another job took this job's folder over (it judged this one dead): stop without writing."""


class JobFolder:
    def __init__(self, out: Storage, prefix: str, cache: Path | None, flow_run: str | None = None) -> None:
        self.out, self.prefix = out, prefix
        staging = cache / "staging" if cache else Path(tempfile.gettempdir()) / "ratio-cnn-staging"
        self.staging = staging / _slug(out.describe(prefix))  # this job's, on this machine
        self.owner = {"host": platform.node(), "pid": os.getpid(), "process_start": process_start(),
                      "flow_run": flow_run, "token": secrets.token_hex(8)}
        self._version: str | None = None  # of claim.json as this job last wrote it
        self._claim: dict = {}
        self._record: dict = {}  # data.json, once bound
        self._lost: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts])

    def describe(self, *parts: str) -> str:
        return self.out.describe(self.key(*parts))

    # -------------------------------------------------------------------------
    # ownership

    def check_writable(self) -> None:
        """A probe object, written and deleted, before anything is downloaded or trained."""
        probe = self.key(f".probe-{self.owner['token']}")
        self.out.put(probe, b"probe")
        self.out.delete(probe)

    def claim(self, config: dict, resume: bool) -> None:
        """Own the folder, or stop with a line that says who does and what to do."""
        if self.out.exists(self.key(METRICS)):
            raise RatioCnnError(f"{self.describe(METRICS)} already exists: that job is complete; pick another --run-id")
        self._claim = {"state": "running", "owner": self.owner, "started": utc_now(), "heartbeat": utc_now(),
                       "config": config}
        if self.out.create(self.key(CLAIM), self._encode()):
            self._learn_version()
            return
        raw, version = self.out.get_versioned(self.key(CLAIM))
        try:
            held = parse_json(raw)
            owner, state = held["owner"], held["state"]
            if not (isinstance(owner, dict) and isinstance(state, str) and isinstance(held.get("config", {}), dict)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise RatioCnnError(f"{self.describe(CLAIM)} is damaged: it no longer says who owns the folder or with "
                                "which options it was started; if no job runs there, remove it and resume with "
                                "the options the job was started with, or pick another --run-id") from None
        gone = owner_gone(held)
        who = (f"host {owner.get('host')} pid {owner.get('pid')}"
               + (f" (flow run {owner['flow_run']})" if owner.get("flow_run") else "")
               + f" since {held.get('started')}")
        if state == "running" and not gone:
            raise FolderBusy(f"{self.describe()} is owned by a running job: {who}, last heartbeat "
                             f"{held.get('heartbeat')}; wait for it, or pick another --run-id")
        if not resume:
            why = {"running": f"its owner ({who}) is gone"}.get(state, f"it {state}")
            raise RatioCnnError(f"{self.describe()} holds an earlier attempt of this job ({why}): continue it with "
                                "--resume, or pick another --run-id")
        before = held.get("config", {})
        changed = {k for k in set(config) | set(before) if k not in OPERATIONAL and config.get(k) != before.get(k)}
        if changed:
            raise RatioCnnError(f"cannot resume {self.describe()}: it was started with other "
                                f"{', '.join(sorted(changed))}; resume with the same options, or pick another --run-id")
        self._claim["started"] = held.get("started", utc_now())
        if not self.out.replace(self.key(CLAIM), self._encode(), version):
            raise FolderBusy(f"{self.describe()} was taken over by another job at the same moment: pick another --run-id")
        self._learn_version()
        self.out.delete(self.key(ERROR))  # this attempt replaces the failed one
        log.info("resuming %s (it %s)", self.describe(), "lost its owner" if state == "running" else state)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Temp files of writes that were killed, in the folder this job owns."""
        for key in self.out.remove_leftovers(self.prefix):
            log.info("removed %s, left by a write that was interrupted", self.out.describe(key))

    def bind_data(self, record: dict) -> None:
        """Record what this job reads (data.json, written once before training, and its digests in the
        claim); when data.json is there already, stop unless this job reads what the earlier attempt did."""
        key = self.key(DATA)
        if self.out.exists(key):
            try:
                before = parse_json(self.out.get(key, JSON_MAX_BYTES))
            except ValueError:
                before = None  # check_same_data says it cannot tell
            provenance.check_same_data(before, record, self.describe(DATA))
        else:
            self.check_owner()
            self._put(key, json.dumps(record).encode())
        self._set_state(data=provenance.claim_binding(record))
        self._record = record

    def trained_on(self, seed: int) -> dict:
        """What a checkpoint of `seed` records it was trained on (bind_data first)."""
        return provenance.seed_binding(self._record, seed)

    def _learn_version(self) -> None:
        """The version of the claim this job just wrote, checked to hold this job's token."""
        raw, version = self.out.get_versioned(self.key(CLAIM))
        if json.loads(raw).get("owner", {}).get("token") != self.owner["token"]:
            self._lost = "another job took the folder over at the same moment"
            self.check_owner()
        self._version = version

    def _encode(self) -> bytes:
        return json.dumps(self._claim, indent=2).encode()

    def _set_state(self, **fields) -> bool:
        """Rewrite the claim if this job still owns it; False once another job took it."""
        with self._lock:
            if self._lost:
                return False
            self._claim |= fields
            if self.out.replace(self.key(CLAIM), self._encode(), self._version):
                self._learn_version()
                return True
            self._lost = "another job took the folder over"
            return False

    def start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    if not self._set_state(heartbeat=utc_now()):
                        return
                except RatioCnnError as e:  # storage down for a moment: the next beat tries again
                    log.warning("could not refresh the claim on %s: %s", self.describe(CLAIM), e)

        threading.Thread(target=beat, name="claim-heartbeat", daemon=True).start()

    def check_owner(self) -> None:
        """Stop (without writing) if another job took the folder over."""
        if self._lost:
            raise LostClaim(f"{self.describe()}: {self._lost} (it judged this job dead); stopping without writing")

    def finish(self, metrics: dict) -> None:
        self.check_owner()
        self._remove_leftovers()
        self._put(self.key(METRICS), json.dumps(metrics, indent=2).encode())
        self._stop.set()
        self._set_state(state="finished", heartbeat=utc_now())

    def fail(self, error: BaseException) -> None:
        """Record why in error.json (when this job still owns the folder)."""
        self._stop.set()
        if self._lost or self._version is None:
            return
        if isinstance(error, Terminated):
            state, reason = "stopped", "stopped by SIGTERM (docker stop, Kubernetes or a shutdown)"
        elif isinstance(error, KeyboardInterrupt):
            state, reason = "stopped", "interrupted (Ctrl-C)"
        elif isinstance(error, Exception):
            state, reason = "failed", str(error) or type(error).__name__
        else:
            state, reason = "stopped", f"stopped by {type(error).__name__}"
        record = {"state": state, "error": reason, "type": type(error).__name__, "at": utc_now(),
                  "resume": None if isinstance(error, provenance.DataChanged) else
                  "ratio-cnn train … --resume (same options) continues from the last checkpoint"}
        try:
            self.out.put(self.key(ERROR), json.dumps(record, indent=2).encode())
            self._set_state(state=state, heartbeat=utc_now())
        except RatioCnnError as e:  # storage itself is down: the caller still sees the first error
            log.warning("could not record the failure in %s: %s", self.describe(), e)

    # -------------------------------------------------------------------------
    # seeds: checkpoints and outputs

    def _seed_key(self, variant: str, seed: int, name: str) -> str:
        return self.key(variant, f"seed-{seed}", name)

    def seed_done(self, variant: str, seed: int) -> dict | None:
        """The seed's metrics.json if an earlier attempt finished it; None (train it again) when that
        or its history.csv cannot be read."""
        key = self._seed_key(variant, seed, METRICS)
        if not self.out.exists(key):
            return None
        try:
            metrics = parse_json(self.out.get(key, JSON_MAX_BYTES), finite=False)
            if not (isinstance(metrics, dict) and all(
                    isinstance(metrics.get(s), dict) and set(METRIC_NAMES) <= set(metrics[s]) for s in ("val", "test"))):
                raise ValueError("it lacks the val and test metrics")
            if "epoch" not in self.seed_history(variant, seed).columns:
                raise ValueError("its history.csv has no epoch column")
        except ValueError as e:  # pandas' parser errors are ValueErrors too
            log.warning("%s cannot be read (%s): training that seed again", self.out.describe(key), str(e)[:200])
            return None
        return metrics

    def seed_history(self, variant: str, seed: int) -> pd.DataFrame:
        """The history.csv of a seed an earlier attempt finished: one row per epoch."""
        return pd.read_csv(io.BytesIO(self.out.get(self._seed_key(variant, seed, "history.csv"))))

    def load_checkpoint(self, variant: str, seed: int) -> bytes | None:
        key = self._seed_key(variant, seed, CHECKPOINT)
        return self.out.get(key) if self.out.exists(key) else None

    def describe_checkpoint(self, variant: str, seed: int) -> str:
        return self.out.describe(self._seed_key(variant, seed, CHECKPOINT))

    def set_checkpoint_aside(self, variant: str, seed: int, raw: bytes) -> str:
        """Keep a checkpoint that cannot be loaded under another name, out of every resume's way; where."""
        self.check_owner()
        aside = self._seed_key(variant, seed, f"checkpoint-unloadable-{utc_now()[:19].replace(':', '')}.pt")
        self._put(aside, raw)
        self._ride_out_outage(lambda: self.out.delete(self._seed_key(variant, seed, CHECKPOINT)))
        return self.out.describe(aside)

    def save_checkpoint(self, variant: str, seed: int, data: bytes) -> None:
        self.check_owner()
        self._put(self._seed_key(variant, seed, CHECKPOINT), data)

    def stage(self, variant: str, seed: int) -> Path:
        return self.staging / variant / f"seed-{seed}"

    def write_seed(self, variant: str, seed: int, files: dict[str, bytes], metrics: dict) -> None:
        """Stage the seed's outputs on this machine, then upload them with metrics.json last."""
        stage = self.stage(variant, seed)
        stage.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (stage / name).write_bytes(data)
        write_atomically(stage / METRICS, json.dumps(metrics, indent=2).encode())  # last: the stage is complete
        self.upload_staged(variant, seed)

    def upload_staged(self, variant: str, seed: int) -> dict | None:
        """Upload a complete staged seed (from this attempt or a failed upload of an earlier one)."""
        stage = self.stage(variant, seed)
        if not (stage / METRICS).is_file():
            return None
        try:
            metrics = parse_json((stage / METRICS).read_bytes(), finite=False)
            missing = [name for name in SEED_FILES if not (stage / name).is_file()]
            if missing:
                raise ValueError(f"{', '.join(missing)} missing")
        except (OSError, ValueError) as e:
            log.warning("the staged outputs in %s cannot be read (%s): training that seed again", stage, str(e)[:200])
            shutil.rmtree(stage, ignore_errors=True)
            return None
        self.check_owner()
        for name in (*SEED_FILES, *([WEIGHTS] if (stage / WEIGHTS).is_file() else []), METRICS):
            self._put(self._seed_key(variant, seed, name), (stage / name).read_bytes())
        self._ride_out_outage(lambda: self.out.delete(self._seed_key(variant, seed, CHECKPOINT)))
        shutil.rmtree(stage, ignore_errors=True)
        return metrics

    def put(self, *parts: str, data: bytes) -> None:
        self.check_owner()
        self._put(self.key(*parts), data)

    def _put(self, key: str, data: bytes) -> None:
        self._ride_out_outage(lambda: self.out.put(key, data))

    def _ride_out_outage(self, write: Callable[[], None]) -> None:
        """A write of what training produced, tried again while storage is unavailable for about a
        minute (docs/reliability.md, "Retry policy"); any other failure is raised at once."""
        for wait in (*UPLOAD_RETRIES, None):
            try:
                return write()
            except StorageUnavailable as e:
                if wait is None:
                    raise
                log.warning("%s; trying again in %d s", e, wait)
                time.sleep(wait)
