"""Integrity (issue 15): what a job reads is what it trains on.

Damaged caches and run folders, data changed under a job, unloadable checkpoints, commands that
would write into their own input, hostile JSON, a study that loses its Prefect API: each with
real files, the real CLI and real processes. docs/reliability.md lists every case and its test.
"""
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import SMALL_SPLITS, one_error_line, run_cli
from ratio_cnn import checkpoint, provenance
from ratio_cnn.cache import ROW_BYTES
from ratio_cnn.config import StudyConfig, StudyOptions, TrainConfig
from ratio_cnn.data import MANIFEST, UndecodableImage, decode_image, digest, get_manifest, load_images, read_manifest
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.host import parse_json
from ratio_cnn.job_folder import JobFolder
from ratio_cnn.results import load_json
from ratio_cnn.storage import LocalStorage, open_storage, overlaps

REPO = Path(__file__).resolve().parents[1]
FAST = ["--batch-size", "16", "--workers", "4", "--device", "cpu", *SMALL_SPLITS]
DEEP = b"[" * 100_000 + b"]" * 100_000


def wait_for(condition, timeout: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


# -----------------------------------------------------------------------------
# the cache: every read checked, damage rebuilt from the source (the loader, in this process)


def load(dataset: Path, cache: Path | None, max_skipped: float = 0.0):
    """What a job's data phase does with the whole dataset: the manifest (cached), then every image."""
    storage = open_storage(str(dataset))
    present = storage.list_versions()
    raw = get_manifest(storage, present[MANIFEST], cache)
    manifest = read_manifest(raw, storage.describe(MANIFEST))
    loaded = load_images(storage, manifest, list(manifest["image"]), present, cache, digest(raw), workers=4,
                         deadline=time.monotonic() + 120, max_skipped=max_skipped)
    return manifest, loaded, provenance.data_digest(digest(raw), loaded.content)


def damage_file(path: Path, how: str, row: int = 0) -> None:
    size = path.stat().st_size
    if how == "random bytes":
        path.write_bytes(random.Random(0).randbytes(size))
    elif how == "zeros":
        path.write_bytes(bytes(size))
    elif how == "truncated":
        os.truncate(path, size // 2)
    elif how == "one flipped byte in one row":
        flip_byte(path, row * ROW_BYTES + 5000)
    elif how == "100,000-deep JSON":
        path.write_bytes(DEEP)


@pytest.mark.parametrize("file, how", [
    ("images.u8", "random bytes"), ("images.u8", "zeros"), ("images.u8", "truncated"),
    ("images.u8", "one flipped byte in one row"),
    ("rows.json", "random bytes"), ("rows.json", "truncated"), ("rows.json", "100,000-deep JSON"),
])
def test_a_damaged_decoded_cache_gives_the_clean_images_and_says_what_it_rebuilt(file, how, small_dataset,
                                                                                 tmp_path, caplog):
    manifest, clean, clean_digest = load(small_dataset, tmp_path / "cache")
    (decoded,) = (tmp_path / "cache" / "decoded").iterdir()
    damage_file(decoded / file, how, row=7)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, again, again_digest = load(small_dataset, tmp_path / "cache")
    assert torch.equal(again.images, clean.images) and again.names == clean.names
    assert again_digest == clean_digest and again.downloaded == 0  # rebuilt from the cached objects
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if how == "one flipped byte in one row":
        assert again.decoded == 1 and any(manifest["image"][7] in w and "damaged row" in w for w in warnings), warnings
    elif file == "images.u8" and how != "truncated":  # each row fails its own check
        assert again.decoded == len(clean.names) and any("damaged row" in w for w in warnings), warnings
    else:
        assert again.decoded == len(clean.names)
        assert any(str(decoded) in w and "is damaged" in w for w in warnings), warnings
    _, third, _ = load(small_dataset, tmp_path / "cache")  # and the cache is whole again
    assert third.decoded == 0 and torch.equal(third.images, clean.images)


def test_damaged_raw_objects_and_a_damaged_cached_manifest_are_fetched_again(small_dataset, tmp_path, caplog):
    _, clean, clean_digest = load(small_dataset, tmp_path / "cache")
    shutil.rmtree(tmp_path / "cache" / "decoded")
    objects = sorted((tmp_path / "cache" / "objects").rglob("*"))
    for i, path in enumerate(p for p in objects if p.is_file()):
        damage_file(path, ["random bytes", "zeros", "truncated"][i % 3])
    with caplog.at_level(logging.WARNING):
        _, again, again_digest = load(small_dataset, tmp_path / "cache")
    assert torch.equal(again.images, clean.images) and not again.skipped and again_digest == clean_digest
    assert again.downloaded == len(clean.names)
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "the cached copy of manifest.csv" in warnings and "fetching it again" in warnings
    assert "undecodable" not in warnings


def test_an_undecodable_image_is_decoded_again_once_fixed(small_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    victim = data / "benign" / "synth-00003.jpg"
    good = victim.read_bytes()
    victim.write_bytes(good[:200])
    _, broken, _ = load(data, tmp_path / "cache", max_skipped=0.5)
    assert broken.skipped == ["benign/synth-00003.jpg"]
    victim.write_bytes(good)  # fixed: a new version, whatever the cache remembers
    _, fixed, _ = load(data, tmp_path / "cache")
    assert not fixed.skipped and "benign/synth-00003.jpg" in fixed.names


def test_a_local_image_rewritten_with_its_size_and_mtime_restored_is_read_again(small_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    _, before, before_digest = load(data, tmp_path / "cache")
    victim = data / "malignant" / "synth-00002.jpg"
    st = victim.stat()
    with open(victim, "r+b") as f:  # in place: same inode, same size, other pixels
        f.write(other_pixels_same_size(victim.read_bytes()))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (victim.stat().st_size, victim.stat().st_mtime_ns, victim.stat().st_ino) == (
        st.st_size, st.st_mtime_ns, st.st_ino)
    _, after, after_digest = load(data, tmp_path / "cache")
    _, uncached, _ = load(data, None)
    assert after.decoded == 1 and torch.equal(after.images, uncached.images)
    assert not torch.equal(after.images, before.images) and after_digest != before_digest


def other_pixels_same_size(raw: bytes) -> bytes:
    """The JPEG with one bit of its scan data flipped: the same size, still an image, other pixels."""
    original = decode_image(raw, "original")
    for offset in range(len(raw) // 2, len(raw) - 2):
        changed = raw[:offset] + bytes([raw[offset] ^ 0x01]) + raw[offset + 1:]
        try:
            if not np.array_equal(decode_image(changed, "changed"), original):
                return changed
        except UndecodableImage:
            continue
    raise AssertionError("no single-bit change gave another image")


# -----------------------------------------------------------------------------
# digests, checkpoints, JSON, paths: units on real files


def test_the_data_digest_covers_every_image_content_and_says_what_changed():
    before = provenance.data_record("sha256:m", {"a": "1", "b": "2", "c": "3"},
                                    {0: {"train": ["a"], "val": ["b"], "test": ["c"]}}, {"ext": "sha256:e"})
    same = provenance.data_record("sha256:m", {"c": "3", "b": "2", "a": "1"},
                                  {0: {"train": ["a"], "val": ["b"], "test": ["c"]}}, {"ext": "sha256:e"})
    provenance.check_same_data(before, same, "data.json")
    assert before["data_digest"] == same["data_digest"]
    now = provenance.data_record("sha256:n", {"a": "1", "b": "9", "d": "4", "e": "5"},
                                 {0: {"train": ["a", "d"], "val": ["b"], "test": ["e"]}}, {"ext": "sha256:f"})
    assert now["data_digest"] != before["data_digest"]
    with pytest.raises(provenance.DataChanged, match=r"2 image\(s\) added, 1 removed, 1 changed among those the job "
                                                      r"uses; manifest.csv edited; other --eval-data sets; "
                                                      r"other test, training sample images"):
        provenance.check_same_data(before, now, "data.json")
    with pytest.raises(provenance.DataChanged, match="does not say what the earlier attempt read"):
        provenance.check_same_data({"data_digest": 1}, now, "data.json")
    assert provenance.data_digest("sha256:m", {"a": "1"}) != provenance.data_digest("sha256:m", {"a": "2"})
    assert provenance.data_digest("sha256:m", {"a": "1"}) != provenance.data_digest("sha256:m", {"a": "1"}, {"x": "d"})


def replicate(width: int = 4, seed: int = 0):
    """A model, its optimizer after one step, and a generator: what a checkpoint restores, in small."""
    model = nn.Linear(width, 1)
    nn.init.normal_(model.weight, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(2, width)).sum().backward()
    optimizer.step()
    return model, optimizer, {"order": torch.Generator().manual_seed(seed)}


BOUND = {"data": "sha256:d", "split": "sha256:s"}


class NotAWeight:
    pass


@pytest.mark.parametrize("damage, says", [
    (lambda raw: raw[: len(raw) // 2], "cannot be read"),
    (lambda raw: bytes(len(raw)), "cannot be read"),
    (lambda raw: _saved({"model": NotAWeight()}),  # what weights_only=True refuses
     r"cannot be read \(UnpicklingError: Weights only load failed"),
    (lambda raw: _saved({"weights": 1}), "is not a checkpoint of this version"),
    (lambda raw: checkpoint.pack(*replicate(width=8)[:2], 1, [{}], replicate()[2], BOUND),
     "holds the weights of another model"),
])
def test_an_unloadable_checkpoint_restores_nothing(damage, says):
    model, optimizer, generators = replicate()
    raw = checkpoint.pack(model, optimizer, 2, [{}, {}], generators, BOUND)
    target, target_optimizer, target_generators = replicate(seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    state_before = target_generators["order"].get_state()
    with pytest.raises(checkpoint.UnloadableCheckpoint, match=says):
        checkpoint.unpack(damage(raw), "seed-0/checkpoint.pt", target, target_optimizer, target_generators, BOUND)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    assert torch.equal(target_generators["order"].get_state(), state_before)
    assert checkpoint.unpack(raw, "c", target, target_optimizer, target_generators, BOUND) == (2, [{}, {}])
    assert torch.equal(target.weight, model.weight)
    with pytest.raises(RatioCnnError, match="trained on another data than this job reads"):
        checkpoint.unpack(raw, "c", target, target_optimizer, target_generators, BOUND | {"data": "sha256:x"})


def _saved(obj) -> bytes:
    import io
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("a, b, overlap", [
    ("data", "data", True), ("data", "data/runs", True), ("data/runs", "data", True), ("data", "data2", False),
    ("data", "./data/", True), ("file://{tmp}/data", "{tmp}/data/x", True), ("{tmp}/link", "{tmp}/data/runs", True),
    ("s3://b/ds", "s3://b/ds/runs", True), ("s3://b/ds", "s3://b/ds-runs", False), ("s3://b", "s3://b/x", True),
    ("s3://b/ds", "s3://c/ds", False), ("s3://b/ds", "b/ds", False),
])
def test_overlaps_after_resolving_links(a, b, overlap, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    assert overlaps(a.format(tmp=tmp_path), b.format(tmp=tmp_path)) is overlap


def test_jobs_and_studies_refuse_an_output_that_overlaps_what_they_read():
    with pytest.raises(RatioCnnError, match=r"--out d/runs lies inside --data d: .* pick a --out outside d"):
        TrainConfig(ratio=1, data="d", out="d/runs")
    with pytest.raises(RatioCnnError, match=r"--out x contains --eval-data x/ext"):
        TrainConfig(ratio=1, data="d", out="x", eval_data="ext=x/ext")
    with pytest.raises(RatioCnnError, match=r"--out s3://b/p is --data s3://b/p/"):
        StudyConfig(data="s3://b/p/", out="s3://b/p", options=StudyOptions()).job_configs("r")


def test_json_is_read_within_bounds(tmp_path):
    storage = LocalStorage(tmp_path)
    (tmp_path / "deep.json").write_bytes(DEEP)
    with pytest.raises(RatioCnnError, match=r"deep.json is not valid JSON \(nested deeper than the 32 levels"):
        load_json(storage, "deep.json")
    (tmp_path / "big.json").write_bytes(b" " * (64 * 2**20 + 1))
    with pytest.raises(RatioCnnError, match=r"big.json is larger than 67,108,864 bytes"):
        load_json(storage, "big.json")
    parse_json(b"[" * 32 + b"]" * 32)  # 32 levels are fine
    with pytest.raises(ValueError, match="nested deeper"):
        parse_json(b"[" * 33 + b"]" * 33)


def test_json_on_s3_is_read_within_bounds(s3):
    s3.create_bucket(Bucket="bounded")
    storage = open_storage("s3://bounded/run")
    storage.put("metrics.json", b"{}" + b" " * 98)
    assert storage.get("metrics.json", max_bytes=100) == b"{}" + b" " * 98
    with pytest.raises(RatioCnnError, match=r"s3://bounded/run/metrics.json is larger than 99 bytes"):
        storage.get("metrics.json", max_bytes=99)  # only the first 100 bytes were asked for
    storage.put("deep.json", DEEP)
    with pytest.raises(RatioCnnError, match=r"deep.json is not valid JSON \(nested deeper"):
        load_json(storage, "deep.json")


def test_leftovers_of_killed_writes_are_removed_and_only_they(tmp_path):
    storage = LocalStorage(tmp_path)
    storage.put("job/seed-0/checkpoint.pt", b"x")
    (tmp_path / "job/seed-0/.tmp-checkpoint.pt-deadbeef").write_bytes(b"half")
    (tmp_path / "job/.lock-claim.json").write_bytes(b"")
    assert storage.remove_leftovers("job") == ["job/seed-0/.tmp-checkpoint.pt-deadbeef"]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [".lock-claim.json", "checkpoint.pt"]


def test_staged_outputs_that_cannot_be_read_are_made_again(tmp_path, caplog):
    folder = JobFolder(LocalStorage(tmp_path / "out"), "r/ratio-1", tmp_path / "cache")
    stage = folder.stage("none/simple", 0)
    stage.mkdir(parents=True)
    for name in ("history.csv", "predictions.csv", "model.pt"):
        (stage / name).write_bytes(b"x")
    (stage / "metrics.json").write_bytes(b'{"seed": 0, "val": ')  # what a crash mid-write left
    with caplog.at_level(logging.WARNING):
        assert folder.upload_staged("none/simple", 0) is None
    assert "cannot be read" in caplog.text and not stage.exists() and not (tmp_path / "out").exists()


# -----------------------------------------------------------------------------
# whole jobs through the real CLI


@pytest.fixture(scope="module")
def reference(small_dataset, tmp_path_factory):
    """An uninterrupted 2-seed job with its own cache: the metrics every damaged case must give again."""
    work = tmp_path_factory.mktemp("reference")
    result = run_cli("train", "--ratio", "1", "--data", str(small_dataset), "--out", str(work / "out"),
                     "--run-id", "ref", "--epochs", "2", "--seeds", "0,1", "--cache", str(work / "cache"), *FAST)
    assert result.returncode == 0, result.stderr
    return work


def seed_metrics(job: Path, seed: int) -> dict:
    metrics = json.loads((job / "none" / "simple" / f"seed-{seed}" / "metrics.json").read_text())
    return {split: metrics[split] for split in ("val", "test")}


def rerun(reference: Path, small_dataset: Path, tmp_path: Path, cache: Path, *extra: str):
    return run_cli("train", "--ratio", "1", "--data", str(small_dataset), "--out", str(tmp_path / "out"),
                   "--run-id", "again", "--epochs", "2", "--seeds", "0,1", "--cache", str(cache), *FAST, *extra)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["random bytes", "zeros", "truncated", "one flipped byte in one row"])
def test_a_job_on_a_damaged_cache_gives_the_clean_metrics_exactly(how, reference, small_dataset, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(reference / "cache", cache)
    (decoded,) = (cache / "decoded").iterdir()
    damage_file(decoded / "images.u8", how, row=3)
    result = rerun(reference, small_dataset, tmp_path, cache)
    assert result.returncode == 0, result.stderr
    assert "damaged" in result.stderr and str(decoded) in result.stderr  # names what it rebuilt
    assert "(0 downloaded" in result.stderr
    for seed in (0, 1):
        assert seed_metrics(tmp_path / "out/again/ratio-1", seed) == seed_metrics(reference / "out/ref/ratio-1", seed)
    ours = json.loads((tmp_path / "out/again/ratio-1/metrics.json").read_text())["data"]
    theirs = json.loads((reference / "out/ref/ratio-1/metrics.json").read_text())["data"]
    assert ours["data_digest"] == theirs["data_digest"] and ours["manifest_digest"] == theirs["manifest_digest"]


@pytest.mark.slow
def test_damaged_raw_objects_and_manifest_recover_without_blaming_the_dataset(reference, small_dataset, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(reference / "cache", cache)
    shutil.rmtree(cache / "decoded")
    for path in (cache / "objects").rglob("*"):
        if path.is_file():
            damage_file(path, "random bytes")
    result = rerun(reference, small_dataset, tmp_path, cache)
    assert result.returncode == 0, result.stderr
    assert "the cached copy of manifest.csv" in result.stderr
    assert "could not be decoded" not in result.stderr and "unknown label" not in result.stderr
    assert "undecodable" not in result.stderr
    for seed in (0, 1):
        assert seed_metrics(tmp_path / "out/again/ratio-1", seed) == seed_metrics(reference / "out/ref/ratio-1", seed)


def start_cli(*args: str, log: Path) -> subprocess.Popen:
    with log.open("w") as err:
        return subprocess.Popen([sys.executable, "-m", "ratio_cnn.cli", *args], stdout=subprocess.DEVNULL, stderr=err)


def killed_job(data: Path, out: Path, log: Path, cache: Path) -> list[str]:
    """A 2-seed job killed (SIGKILL) while seed 1 trains, after its first checkpoint; its arguments."""
    common = ["train", "--ratio", "1", "--data", str(data), "--out", str(out), "--run-id", "killed", "--epochs", "2",
              "--seeds", "0,1", "--checkpoint-every", "0", "--cache", str(cache), *FAST]
    victim = start_cli(*common, log=log)
    wait_for((out / "killed/ratio-1/none/simple/seed-1/checkpoint.pt").exists, what="a checkpoint of seed 1")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    return common


@pytest.mark.slow
def test_a_dataset_changed_between_kill_and_resume_is_refused_naming_the_change(small_dataset, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(small_dataset, data)
    common = killed_job(data, out, tmp_path / "killed.log", tmp_path / "cache")
    job = out / "killed/ratio-1"
    # Every malignant image is used: one gets another's bytes (still an image); two benign images
    # are added and one is removed from the manifest.
    (data / "malignant/synth-00004.jpg").write_bytes((data / "malignant/synth-00005.jpg").read_bytes())
    manifest = (data / MANIFEST).read_text().replace("benign/synth-00010.jpg,benign\n", "")
    for i in (0, 1):
        shutil.copy(data / f"benign/synth-0000{i}.jpg", data / f"benign/added-{i}.jpg")
        manifest += f"benign/added-{i}.jpg,benign\n"
    (data / MANIFEST).write_text(manifest)
    checkpoint_before = (job / "none/simple/seed-1/checkpoint.pt").read_bytes()

    resumed = run_cli(*common, "--resume")
    line = one_error_line(resumed, "cannot resume: the data changed since the earlier attempt", "1 changed",
                          "manifest.csv edited", str(job / "data.json"), "new --run-id")
    assert "image(s) added" in line and "epoch" not in resumed.stderr  # nothing trained on the new data
    assert (job / "none/simple/seed-1/checkpoint.pt").read_bytes() == checkpoint_before  # nothing lost
    assert json.loads((job / "error.json").read_text())["resume"] is None  # resuming again cannot help
    again = run_cli(*common, "--resume")
    one_error_line(again, "cannot resume: the data changed")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "refused by weights_only"])
def test_an_unloadable_checkpoint_restarts_the_seed_and_leaves_no_temp_files(damage, reference, small_dataset,
                                                                            tmp_path):
    out = tmp_path / "out"
    common = killed_job(small_dataset, out, tmp_path / "killed.log", tmp_path / "cache")
    job = out / "killed/ratio-1"
    saved = job / "none/simple/seed-1/checkpoint.pt"
    if damage == "truncated":
        os.truncate(saved, saved.stat().st_size // 3)
    else:
        saved.write_bytes(_saved({"model": NotAWeight(), "epoch": 1}))
    planted = [job / "none/simple/seed-1/.tmp-checkpoint.pt-0badf00d", job / ".tmp-metrics.json-0badf00d"]
    for path in planted:  # what writes killed before their rename leave
        path.write_bytes(b"half a file")
    # The finished seed's metrics.json damaged too: that seed is trained again, not trusted.
    (job / "none/simple/seed-0/metrics.json").write_bytes(b'{"seed": 0, "val": {"loss": 0.1')

    resumed = run_cli(*common, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "checkpoint.pt cannot be read" in resumed.stderr and "training the seed from its first epoch" in resumed.stderr
    assert "seed-0/metrics.json cannot be read" in resumed.stderr and "training that seed again" in resumed.stderr
    aside = list(job.glob("none/simple/seed-1/checkpoint-unloadable-*.pt"))
    assert len(aside) == 1 and aside[0].name in resumed.stderr  # kept for inspection, named
    assert not saved.exists() and not [p for p in out.rglob(".tmp-*")]
    for seed in (0, 1):  # both seeds from their first epoch: exactly the uninterrupted run
        assert seed_metrics(job, seed) == seed_metrics(reference / "out/ref/ratio-1", seed)


@pytest.mark.slow
def test_a_damaged_claim_or_data_record_stops_a_resume_in_one_line(reference, small_dataset, tmp_path):
    job = tmp_path / "out/ref/ratio-1"
    shutil.copytree(reference / "out/ref/ratio-1", job)
    (job / "metrics.json").unlink()  # as if killed just before it finished, in this folder
    claim = json.loads((job / "claim.json").read_text())
    (job / "claim.json").write_text(json.dumps(claim | {"config": claim["config"] | {"out": str(tmp_path / "out")}}))
    common = ["train", "--ratio", "1", "--data", str(small_dataset), "--out", str(tmp_path / "out"), "--run-id", "ref",
              "--epochs", "2", "--seeds", "0,1", "--cache", str(reference / "cache"), "--resume", *FAST]
    (job / "data.json").write_bytes(b"\x00" * 100)
    one_error_line(run_cli(*common), str(job / "data.json"), "does not say what the earlier attempt read")
    (job / "claim.json").write_bytes(DEEP)
    one_error_line(run_cli(*common), str(job / "claim.json"), "is damaged", "remove it")


@pytest.mark.slow
@pytest.mark.parametrize("out", ["{data}", "{data}/runs", "{data}/..", "{link}/runs"])
def test_an_output_in_or_around_the_data_is_refused_and_nothing_is_written(out, small_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    (tmp_path / "link").symlink_to(data)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = out.format(data=data, link=tmp_path / "link")
    result = run_cli("train", "--ratio", "1", "--data", str(data), "--out", out, *FAST)
    one_error_line(result, f"--out {out}", f"--data {data}", "never writes where it reads")
    ingest = run_cli("data", "ingest", str(data), "--out", out)
    one_error_line(ingest, f"--out {out}", f"SRC {data}")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ratio-1/metrics.json", "ratio-1/error.json", "ratio-1/claim.json", "run.json",
                                  "ratio-1/metrics.json (70 MB)"])
def test_hostile_json_in_a_run_folder_is_one_line(name, tmp_path):
    path = tmp_path / "run" / name.split(" ")[0]
    path.parent.mkdir(parents=True)
    path.write_bytes(b" " * (70 * 2**20) + b"{}" if "MB" in name else DEEP)
    result = run_cli("report", "--run", str(tmp_path / "run"))
    one_error_line(result, str(path), "larger than" if "MB" in name else "nested deeper than the 32 levels")


@pytest.mark.slow
def test_a_damaged_run_record_beside_the_run_leaves_the_index_and_the_report_whole(tmp_path):
    from runs import noisy_logits, write_job

    write_job(tmp_path / "out" / "run", 1, {0: (noisy_logits(1, 1.0), noisy_logits(2, 1.0))})
    (tmp_path / "out" / "older").mkdir()
    (tmp_path / "out" / "older" / "summary.json").write_bytes(DEEP)
    result = run_cli("report", "--run", str(tmp_path / "out" / "run"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "left out of the index" in result.stderr and "older/summary.json" in result.stderr
    assert "`run`" in (tmp_path / "out" / "index.md").read_text()


# -----------------------------------------------------------------------------
# the embedded study loses its Prefect API


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.slow
def test_the_study_builds_its_report_when_its_prefect_api_goes_away(small_dataset, tmp_path):
    """`python -m flows.study` as `make study` runs it: Prefect's temporary server is killed while the jobs train."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",  # two shared cores start it slowly
        "PREFECT_CLIENT_MAX_RETRIES": "1"}  # give up on the lost API sooner than the default 5 tries
    options = [f"--set={f.removeprefix('--').replace('-', '_')}={v}" for f, v in zip(SMALL_SPLITS[::2], SMALL_SPLITS[1::2])]
    args = ["--data", str(small_dataset), "--out", str(out), "--run-id", "lost", "--ratios", "1,2",
            "--set=epochs=3", "--set=seeds=1", "--set=device=cpu", "--set=batch_size=16", "--set=checkpoint_every=0",
            *options]
    with (tmp_path / "study.log").open("w") as log:
        study = subprocess.Popen([sys.executable, "-m", "flows.study", *args], env=env, cwd=REPO, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: list(out.glob("lost/ratio-*/none/simple/seed-0/checkpoint.pt")) or study.poll() is not None,
                 what="a job training")
        servers = [pid for pid in children(study.pid) if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(servers) == 1, (tmp_path / "study.log").read_text()[-3000:]
        os.kill(servers[0], signal.SIGKILL)
        assert study.wait(timeout=540) == 1
    finally:
        if study.poll() is None:
            os.killpg(study.pid, signal.SIGKILL)
    output = (tmp_path / "study.log").read_text()
    assert "Traceback" not in output, output[-5000:]
    ours = [line for line in output.splitlines() if line.startswith("flows.study: error:")]
    assert len(ours) == 1 and "the Prefect API went away mid-study" in ours[0], output[-3000:]
    assert f"the report was built from what the jobs wrote: {out / 'lost' / 'report.md'}" in ours[0]
    assert "## 1:1 ratio" in (out / "lost" / "report.md").read_text()
    # Last, but for Prefect's own line as its temporary server stops.
    assert [line for line in output.strip().splitlines() if "Stopping temporary server" not in line][-1] == ours[0]
