"""`ratio-cnn prune`: tiers, protections, refusals, dry runs, S3, a prune killed midway, the weekly flow.

Run folders are written as the jobs and the report write them (tests/runs.py), with weights, claims
and the other files of a job as small stand-ins, and times set by hand: no training.
"""
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import one_error_line, run_cli
from runs import noisy_logits, write_job
from ratio_cnn.history import render_index, run_records
from ratio_cnn.host import process_start, utc_now
from ratio_cnn.results import collect
from ratio_cnn.results import PRUNED
from ratio_cnn.host import human_bytes
from ratio_cnn.retention import Policy, prune
from ratio_cnn.storage import S3Storage, open_storage

WEIGHTS = 1000  # bytes of each stand-in model.pt
SEEDS = (0, 1)
HEAVY = [f"ratio-1/none/simple/seed-{s}/{name}" for s in SEEDS for name in ("model.pt", "predictions.csv")] + [
    "ratio-1/none/simple/seed-0/checkpoint-unloadable-20250101T0000.pt", "ratio-2/none/simple/seed-0/checkpoint.pt"]
WORKING = [f"ratio-1/none/simple/seed-{s}/history.csv" for s in SEEDS] + [
    "ratio-1/data.json", "ratio-1/claim.json", "ratio-3/claim.json", "ratio-3/data.json"]
ALWAYS = ["report.md", "roc.png", "summary.json", "run.json", "ratio-1/metrics.json", "ratio-1/none/simple/curves.png",
          *(f"ratio-1/none/simple/seed-{s}/metrics.json" for s in SEEDS), "ratio-3/error.json",
          "ratio-2/claim.json",  # a job killed without an outcome: its claim says what became of it
          "notes.txt", "ratio-1/none/simple/seed-0/model.pt.orig", "ratio-1/none/simple/seed-0/mine.csv"]  # not ours


def stamp(days_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(days=days_ago)).isoformat()


def claim(state: str, at: str, live: bool = False) -> dict:
    """A job's claim; live: this process owns it and its heartbeat is fresh (job_folder.owner_gone)."""
    owner = {"host": platform.node(), "pid": os.getpid(), "process_start": process_start()} if live else \
        {"host": "gone-host", "pid": 1}
    return {"state": state, "owner": owner, "started": at, "heartbeat": utc_now() if live else at}


def make_run(out: Path, run_id: str, days_ago: float, report: bool = True) -> Path:
    """A run as a study leaves it: ratio 1 finished (two seeds), ratio 2 killed mid-training, ratio 3 failed."""
    run, at = out / run_id, stamp(days_ago)
    write_job(run, 1, {s: (noisy_logits(s, 1.0), noisy_logits(s + 10, 1.0)) for s in SEEDS})
    job = run / "ratio-1"
    for s in SEEDS:
        (job / "none/simple" / f"seed-{s}" / "model.pt").write_bytes(b"w" * WEIGHTS)
    (job / "none/simple/seed-0/checkpoint-unloadable-20250101T0000.pt").write_bytes(b"c" * 10)
    (job / "none/simple/seed-0/model.pt.orig").write_bytes(b"someone else's")
    (job / "none/simple/seed-0/mine.csv").write_bytes(b"someone else's")
    (job / "none/simple/curves.png").write_bytes(b"png")
    (job / "data.json").write_text("{}")
    (job / "claim.json").write_text(json.dumps(claim("finished", at)))
    (run / "ratio-2/none/simple/seed-0").mkdir(parents=True)
    (run / "ratio-2/none/simple/seed-0/checkpoint.pt").write_bytes(b"k" * 100)
    (run / "ratio-2/claim.json").write_text(json.dumps(claim("running", at)))  # its owner is gone
    (run / "ratio-3").mkdir()
    (run / "ratio-3/claim.json").write_text(json.dumps(claim("failed", at)))
    (run / "ratio-3/data.json").write_text("{}")
    (run / "ratio-3/error.json").write_text(json.dumps({"state": "failed", "error": "out of memory"}))
    (run / "run.json").write_text(json.dumps({"run_id": run_id, "ratios": [1, 2, 3], "started": at}))
    (run / "notes.txt").write_text("someone else's")
    if report:
        (run / "report.md").write_text(f"# {run_id}\n")
        (run / "roc.png").write_bytes(b"png")
        (run / "summary.json").write_text(json.dumps({"run_id": run_id, "finished": at, "complete": False}))
    return run


def files(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def six_runs(tmp_path) -> Path:
    """run-0 (today) to run-5 (five days ago), and someone else's folder beside them."""
    out = tmp_path / "results"
    for day in range(6):
        make_run(out, f"run-{day}", day + 0.1)
    (out / "index.md").write_text("# index\n")
    (out / "other").mkdir()
    (out / "other/model.pt").write_bytes(b"not a run")
    return out


def tiers(out: Path, policy: Policy) -> dict[str, str]:
    return {r.id: r.protected or r.tier for r in prune(str(out), policy, dry_run=True).runs}


@pytest.mark.parametrize("policy, expected", [
    (Policy(4, None, 2), "whole whole light light record record"),
    (Policy(1, 2.5, 0), "light light light record record record"),  # 0.1, 1.1 and 2.1 days old
    (Policy(2, None, 5), "whole whole record record record record"),  # keep_heavy clamped to the kept runs
    (Policy(0, 0, 0), "record record record record record record"),  # stated outright: strip every run
])
def test_runs_are_sorted_into_tiers_by_the_policy(six_runs, policy, expected):
    assert list(tiers(six_runs, policy).values()) == expected.split()


def test_a_prune_removes_what_each_tier_lets_go_and_nothing_else(six_runs):
    before = files(six_runs)
    pruning = prune(str(six_runs), Policy(keep_last=4, keep_days=None, keep_heavy=2))
    after = files(six_runs)

    for run in ("run-0", "run-1"):  # whole
        assert {k: v for k, v in after.items() if k.startswith(f"{run}/")} == \
               {k: v for k, v in before.items() if k.startswith(f"{run}/")}
    for run, gone in (("run-2", HEAVY), ("run-3", HEAVY), ("run-4", HEAVY + WORKING), ("run-5", HEAVY + WORKING)):
        kept = set(ALWAYS) | set(WORKING) - set(gone)
        assert not {f"{run}/{k}" for k in gone} & set(after), run
        assert {f"{run}/{k}" for k in kept} <= set(after), run
        marker = json.loads((six_runs / run / PRUNED).read_text())
        assert marker["complete"] and marker["tier"] == ("light" if gone == HEAVY else "record")
        assert marker["objects"] == {k: before[f"{run}/{k}"] for k in gone}
        assert marker["bytes"] == sum(before[f"{run}/{k}"] for k in gone)
        assert marker["policy"] == {"keep_last": 4, "keep_days": None, "keep_heavy": 2}
    assert after["other/model.pt"] and after["index.md"]  # beside the runs: not prune's

    removed = sum(before[f"{r}/{k}"] for r, g in (("run-2", HEAVY), ("run-3", HEAVY), ("run-4", HEAVY + WORKING),
                                                  ("run-5", HEAVY + WORKING)) for k in g)
    summary = pruning.summary()
    objects = 4 * len(HEAVY) + 2 * len(WORKING)
    assert summary.startswith(f"removed {human_bytes(removed)} in {objects} objects from 4 runs")
    assert "(2 weights and predictions only, 2 down to their record); kept whole: 2 (newest 2 with weights)" in summary
    # Every run still reads as a run: the report's reader, the records the index is built from.
    for day in range(6):
        collect(open_storage(str(six_runs / f"run-{day}")))
    assert [r["run_id"] for r in run_records(open_storage(str(six_runs)))] == [f"run-{d}" for d in range(5, -1, -1)]

    # Once done, done: the next prune finds nothing more; a stricter one takes the working files too.
    again = prune(str(six_runs), Policy(keep_last=4, keep_days=None, keep_heavy=2))
    assert again.summary().startswith("removed 0 B in 0 objects from 0 runs")
    assert "nothing left to remove: 4" in again.summary()
    assert files(six_runs) == after
    prune(str(six_runs), Policy(keep_last=2, keep_days=None, keep_heavy=2))
    marker = json.loads((six_runs / "run-3" / PRUNED).read_text())
    assert marker["tier"] == "record" and set(marker["objects"]) == set(HEAVY + WORKING)  # the earlier ones too


def test_live_jobs_latest_and_waiting_studies_are_never_touched(six_runs):
    # run-5 is old, but a resumed job of it is running now (this process, fresh heartbeat).
    (six_runs / "run-5/ratio-2/claim.json").write_text(json.dumps(claim("running", stamp(0), live=True)))
    (six_runs / "latest.json").write_text(json.dumps({"run_id": "run-4"}))
    # A study started an hour ago whose jobs still wait for a GPU: run.json only, no report, no claim.
    (six_runs / "run-new").mkdir()
    (six_runs / "run-new/run.json").write_text(json.dumps({"run_id": "run-new", "ratios": [1],
                                                           "started": stamp(1 / 24)}))
    # The same, a week ago: a study that never got anywhere is pruned like any other (nothing to remove).
    (six_runs / "run-stuck").mkdir()
    (six_runs / "run-stuck/run.json").write_text(json.dumps({"run_id": "run-stuck", "ratios": [1],
                                                             "started": stamp(7)}))
    before = files(six_runs)

    # Protected runs count among the newest: run-new and run-0 are the newest two.
    pruning = prune(str(six_runs), Policy(keep_last=2, keep_days=None, keep_heavy=2))
    after = files(six_runs)
    for run in ("run-5", "run-4", "run-new"):
        assert {k: v for k, v in after.items() if k.startswith(f"{run}/")} == \
               {k: v for k, v in before.items() if k.startswith(f"{run}/")}, run
    assert "run-0/ratio-1/none/simple/seed-0/model.pt" in after  # the newest that is not protected
    assert "run-1/ratio-1/none/simple/seed-0/model.pt" not in after
    # run-2 is the killed job of every run: its claim stays, its checkpoint goes.
    assert "run-1/ratio-2/claim.json" in after and "run-1/ratio-2/none/simple/seed-0/checkpoint.pt" not in after
    summary = pruning.summary()
    assert "protected: run run-new (started " in summary and "no report yet)" in summary
    assert "run run-4 (latest.json)" in summary and "run run-5 (running)" in summary
    assert "from 3 runs (0 weights and predictions only, 3 down to their record)" in summary  # run-1 to run-3
    assert "kept whole: 1 (newest 2 with weights); nothing left to remove: 1" in summary  # run-0; run-stuck


@pytest.mark.slow  # the real CLI
def test_a_dry_run_lists_each_run_with_its_tier_and_bytes_and_deletes_nothing(six_runs):
    before = files(six_runs)
    result = run_cli("prune", "--out", str(six_runs), "--keep-last", "3", "--keep-heavy", "1", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert files(six_runs) == before
    first, *lines = result.stdout.strip().splitlines()
    light = sum(before[f"run-1/{k}"] for k in HEAVY)
    record = sum(before[f"run-3/{k}"] for k in HEAVY + WORKING)
    assert first.startswith(f"would remove {human_bytes(2 * light + 3 * record)} in "
                            f"{2 * len(HEAVY) + 3 * (len(HEAVY) + len(WORKING))} objects from 5 runs")
    assert [line.split()[0] for line in lines] == [f"run-{d}" for d in range(6)]
    assert lines[0].split()[1:] == ["kept", "whole"]
    assert lines[1].endswith(f"weights and predictions: {human_bytes(light)} in {len(HEAVY)} objects")
    assert lines[5].endswith(f"down to its record: {human_bytes(record)} in {len(HEAVY) + len(WORKING)} objects")


@pytest.mark.slow  # the real CLI, once per case
@pytest.mark.parametrize("args, names", [
    (["--keep-last", "0"], ["--keep-last 0", "would strip every run", "--keep-days"]),
    (["--keep-last", "-1"], ["--keep-last must be 0 or more, got -1"]),
    (["--keep-heavy", "-2"], ["--keep-heavy must be 0 or more, got -2"]),
    (["--keep-days", "-1"], ["--keep-days must be 0 or more, got -1.0"]),
    (["--keep-days", "nan"], ["--keep-days must be 0 or more, got nan"]),
])
def test_a_policy_that_makes_no_sense_is_refused_in_one_line(six_runs, args, names):
    before = files(six_runs)
    one_error_line(run_cli("prune", "--out", str(six_runs), *args), *names)
    assert files(six_runs) == before


@pytest.mark.slow  # the real CLI
def test_a_folder_that_holds_no_runs_is_refused_in_one_line(six_runs, tmp_path):
    elsewhere = tmp_path / "photos"
    (elsewhere / "2024").mkdir(parents=True)
    (elsewhere / "2024/model.pt").write_bytes(b"x")
    one_error_line(run_cli("prune", "--out", str(elsewhere)), str(elsewhere), "not a ratio-cnn results folder",
                   "--out")
    assert (elsewhere / "2024/model.pt").exists()
    before = files(six_runs)
    one_error_line(run_cli("prune", "--out", str(six_runs / "run-5")), "one run folder", "the folder above it")
    (six_runs / "latest.json").write_text("{not json")
    one_error_line(run_cli("prune", "--out", str(six_runs)), "latest.json", "does not name a run")
    assert files(six_runs) == before | {"latest.json": 9}


@pytest.mark.parametrize("size, shown", [(999, "999 B"), (1000, "1.0 kB"), (1_234_567, "1.2 MB"),
                                         (1_200_000_000, "1.2 GB"), (3_400_000_000_000, "3.4 TB")])
def test_sizes_read_in_decimal_units(size, shown):
    assert human_bytes(size) == shown


def test_an_emptied_results_folder_is_no_error(tmp_path):
    (tmp_path / "index.md").write_text("# index\n")
    assert prune(str(tmp_path), Policy(1, None, 1)).summary().startswith("removed 0 B in 0 objects from 0 runs")


def test_s3_prunes_with_batch_deletes(s3, six_runs, monkeypatch):
    s3.create_bucket(Bucket="prune")
    for key, _ in files(six_runs).items():
        s3.put_object(Bucket="prune", Key=f"results/{key}", Body=(six_runs / key).read_bytes())

    def keys() -> dict[str, int]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket="prune", Prefix="results/")
        return {o["Key"].removeprefix("results/"): o["Size"] for page in pages for o in page.get("Contents", [])}

    def one_at_a_time(self, key):
        raise AssertionError(f"deleted {key} alone: S3 takes a thousand keys per request")

    monkeypatch.setattr(S3Storage, "delete", one_at_a_time)
    before = keys()
    dry = prune("s3://prune/results", Policy(keep_last=4, keep_days=None, keep_heavy=2), dry_run=True)
    assert keys() == before
    pruning = prune("s3://prune/results", Policy(keep_last=4, keep_days=None, keep_heavy=2))
    assert pruning.summary().replace("removed", "would remove") == dry.summary().splitlines()[0]
    after = keys()
    for run, gone in (("run-1", []), ("run-3", HEAVY), ("run-5", HEAVY + WORKING)):
        assert not {f"{run}/{k}" for k in gone} & set(after), run
        assert {f"{run}/{k}" for k in set(ALWAYS) | set(HEAVY + WORKING) - set(gone)} <= set(after), run
    marker = json.loads(s3.get_object(Bucket="prune", Key="results/run-5/pruned.json")["Body"].read())
    assert marker["complete"] and marker["bytes"] == sum(before[f"run-5/{k}"] for k in HEAVY + WORKING)
    assert len(run_records(open_storage("s3://prune/results"))) == 6


@pytest.mark.slow  # the real CLI, killed
def test_a_prune_killed_midway_leaves_every_run_readable_and_the_next_one_finishes(tmp_path):
    out, runs, leftovers = tmp_path / "results", 8, 500
    for day in range(runs):
        seed = make_run(out, f"run-{day}", day + 0.1) / "ratio-1/none/simple/seed-1"
        for i in range(leftovers):  # enough objects that the removal takes a while to kill it in
            (seed / f"checkpoint-unloadable-{i:04d}.pt").write_bytes(b"c")
    # The oldest run goes first, and its first object (in key order) first of all.
    first = out / f"run-{runs - 1}/ratio-1/claim.json"

    proc = subprocess.Popen([sys.executable, "-m", "ratio_cnn.cli", "prune", "--out", str(out), "--keep-last", "1",
                             "--keep-heavy", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the prune ended by itself first: {proc.stderr.read().decode()}"
    markers = [json.loads(p.read_text()) for p in out.glob(f"*/{PRUNED}")]
    assert markers and not all(m["complete"] for m in markers), "killed after the last run was done: not midway"
    assert any(out.glob("run-1/ratio-1/none/simple/seed-1/checkpoint-unloadable-*.pt")), "not midway"

    # Every run reads as before: its report, record and metrics, its results for `ratio-cnn report`, the index.
    for day in range(runs):
        run = out / f"run-{day}"
        assert all((run / name).is_file() for name in ("report.md", "summary.json", "ratio-1/metrics.json"))
        collect(open_storage(str(run)))
    records = run_records(open_storage(str(out)))
    assert len(records) == runs and all(f"`run-{d}`" in render_index(records) for d in range(runs))

    result = run_cli("prune", "--out", str(out), "--keep-last", "1", "--keep-heavy", "1")
    assert result.returncode == 0, result.stderr
    for day in range(1, runs):
        marker = json.loads((out / f"run-{day}" / PRUNED).read_text())
        assert marker["complete"] and marker["tier"] == "record", day
        assert not any((out / f"run-{day}/ratio-1/none/simple/seed-1").glob("checkpoint*.pt"))
        assert len(marker["objects"]) == len(HEAVY) + len(WORKING) + leftovers, day
    assert len(list((out / "run-0/ratio-1/none/simple/seed-1").glob("checkpoint*.pt"))) == leftovers


# -----------------------------------------------------------------------------
# the weekly flow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow  # a Prefect server (the test harness)
def test_the_prune_flow_prunes_and_publishes_its_summary(harness, tmp_path):
    from prefect.artifacts import Artifact

    from flows.prune import prune_runs

    out = tmp_path / "results"
    for day in range(3):
        make_run(out, f"run-{day}", day + 0.1)
    summary = prune_runs(out=str(out), keep_last=2, keep_heavy=1)
    assert (out / "run-0/ratio-1/none/simple/seed-0/model.pt").exists()
    assert not (out / "run-1/ratio-1/none/simple/seed-0/model.pt").exists()
    assert (out / "run-1/ratio-1/data.json").exists() and not (out / "run-2/ratio-1/data.json").exists()
    assert summary.startswith("removed ")
    assert "from 2 runs (1 weights and predictions only, 1 down to their record)" in summary
    assert summary in Artifact.get("ratio-study-prune").data


def test_the_prune_flow_takes_the_cli_defaults():
    from prefect.utilities.callables import parameter_schema

    from flows.prune import prune_runs
    from ratio_cnn.config import PRUNE_DEFAULTS

    properties = parameter_schema(prune_runs).model_dump()["properties"]
    assert {name: properties[name].get("default") for name in PRUNE_DEFAULTS} == PRUNE_DEFAULTS
    assert properties["dry_run"]["default"] is False and "default" not in properties["out"]
